"""partial lease index: only deliveries a worker holds are in ix_deliveries_lease_expires_at

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 18:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

NAME = "ix_deliveries_lease_expires_at"
LEASED = sa.text("lease_expires_at IS NOT NULL")


def upgrade():
    # Finished deliveries (nearly all rows) have no lease: they leave the index, which the
    # reconciler reads only for leases that ran out.
    op.drop_index(NAME, table_name="deliveries")
    op.create_index(
        NAME, "deliveries", ["lease_expires_at"], postgresql_where=LEASED, sqlite_where=LEASED
    )


def downgrade():
    op.drop_index(NAME, table_name="deliveries")
    op.create_index(NAME, "deliveries", ["lease_expires_at"])
