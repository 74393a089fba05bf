"""flow control: per-webhook rate limits and ordering keys (API.md section 8)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 22:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_PARTIAL = {
    "ix_deliveries_webhook_id_order_key": (["webhook_id", "order_key"], "order_key IS NOT NULL"),
    "ix_deliveries_waiting_for": (["waiting_for"], "waiting_for IS NOT NULL"),
    "ix_deliveries_waiting_webhook_id": (["waiting", "webhook_id"], "waiting IS NOT NULL"),
}


def upgrade():
    with op.batch_alter_table('webhooks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rate_limit', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('ordering_key', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('rate_tat', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('rate_horizon', sa.DateTime(), nullable=True))
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('order_key', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('waiting', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('waiting_for', sa.String(length=40), nullable=True))
    for name, (columns, where) in _PARTIAL.items():
        op.create_index(
            name,
            'deliveries',
            columns,
            unique=False,
            postgresql_where=sa.text(where),
            sqlite_where=sa.text(where),
        )


def downgrade():
    for name in _PARTIAL:
        op.drop_index(name, table_name='deliveries')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('waiting_for')
        batch_op.drop_column('waiting')
        batch_op.drop_column('order_key')
    with op.batch_alter_table('webhooks', schema=None) as batch_op:
        batch_op.drop_column('rate_horizon')
        batch_op.drop_column('rate_tat')
        batch_op.drop_column('ordering_key')
        batch_op.drop_column('rate_limit')
