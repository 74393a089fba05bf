"""metric totals: what deleted rows had added to the /metrics counters

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('metric_totals',
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_metric_totals'))
    )


def downgrade():
    op.drop_table('metric_totals')
