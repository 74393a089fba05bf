"""webhook log index: a webhook's deliveries with their status and event type in the index

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 10:30:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

OLD = ["workspace_id", "webhook_id", "created_at", "id"]


def upgrade():
    # Filtered by status or event type, the logs read one webhook's entries, not its rows.
    op.create_index(
        "ix_deliveries_webhook_log", "deliveries", [*OLD, "status", "event_type"]
    )
    op.drop_index("ix_deliveries_workspace_id_webhook_id_created_at_id", table_name="deliveries")


def downgrade():
    op.create_index("ix_deliveries_workspace_id_webhook_id_created_at_id", "deliveries", OLD)
    op.drop_index("ix_deliveries_webhook_log", table_name="deliveries")
