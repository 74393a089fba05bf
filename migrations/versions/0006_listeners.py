"""listeners: the `listen` command's streams

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-05 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('listeners',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('webhook_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['webhook_id'], ['webhooks.id'], name=op.f('fk_listeners_webhook_id_webhooks'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_listeners_workspace_id_workspaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_listeners'))
    )
    with op.batch_alter_table('listeners', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_listeners_last_seen_at'), ['last_seen_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_listeners_webhook_id'), ['webhook_id'], unique=False)


def downgrade():
    with op.batch_alter_table('listeners', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_listeners_webhook_id'))
        batch_op.drop_index(batch_op.f('ix_listeners_last_seen_at'))
    op.drop_table('listeners')
