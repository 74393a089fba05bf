"""bulk jobs across webhooks: a redeliver job's filter may name no webhook

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 01:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('bulk_jobs', schema=None) as batch_op:
        batch_op.alter_column('webhook_id', existing_type=sa.String(length=40), nullable=True)


def downgrade():
    # The jobs of no one webhook cannot be kept under the older rule.
    op.execute("DELETE FROM bulk_jobs WHERE webhook_id IS NULL")
    with op.batch_alter_table('bulk_jobs', schema=None) as batch_op:
        batch_op.alter_column('webhook_id', existing_type=sa.String(length=40), nullable=False)
