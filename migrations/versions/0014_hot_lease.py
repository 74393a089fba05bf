"""hot lease: a claim's lease changes no indexed column, so PostgreSQL writes it in place

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 14:40:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

LEASES = "ix_deliveries_lease_expires_at"
LEASED = sa.text("lease_expires_at IS NOT NULL")
IN_FLIGHT = "ix_attempts_in_flight"
OPEN = sa.text("outcome = 'in_flight'")


def upgrade():
    # A leased delivery always has its in-flight attempt (both are written by the claim, both
    # ended by the recorder or the reconciler): the reconciler finds expired leases through
    # the attempts in flight, and the lease's UPDATE no longer touches an indexed column.
    op.create_index(
        IN_FLIGHT, "attempts", ["delivery_id"], postgresql_where=OPEN, sqlite_where=OPEN
    )
    op.drop_index(LEASES, table_name="deliveries")
    if op.get_bind().dialect.name == "postgresql":
        # Room on each page for its rows' next versions: PostgreSQL then writes the lease there
        # (a heap-only tuple) instead of a new entry in each of the eight indexes it was in. A
        # claim leases rows in the order they were published, so all of a page's rows at
        # once: at 70 % only 57 % of leases fitted, at 50 % 94 %, and the lease's share of
        # PostgreSQL's time per delivery fell from 71 to 16 µs. The price is disk: the table
        # takes up to twice the pages (its indexes, most of its size, do not change).
        op.execute("ALTER TABLE deliveries SET (fillfactor = 50)")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE deliveries RESET (fillfactor)")
    op.create_index(
        LEASES, "deliveries", ["lease_expires_at"], postgresql_where=LEASED, sqlite_where=LEASED
    )
    op.drop_index(IN_FLIGHT, table_name="attempts")
