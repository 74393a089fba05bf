"""title search: the logs find deliveries by words of their event's title

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 09:30:00.000000

"""
from alembic import op

from webhooks.models import SQLITE_TITLE_SEARCH, TITLE_SEARCH


# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE INDEX ix_events_title_search ON events USING gin ({TITLE_SEARCH})")
        return
    for statement in SQLITE_TITLE_SEARCH:
        op.execute(statement)
    # The events already stored: their titles, as the insert trigger would have written them.
    op.execute(
        "INSERT INTO events_title(rowid, title) SELECT rowid, json_extract(data, '$.title') "
        "FROM events WHERE json_type(data, '$.title') = 'text'"
    )


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_events_title_search")
        return
    op.execute("DROP TRIGGER events_title_delete")
    op.execute("DROP TRIGGER events_title_insert")
    op.execute("DROP TABLE events_title")
