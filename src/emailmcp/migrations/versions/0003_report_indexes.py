"""report indexes: per-status and per-user range counts read only the index

Revision ID: 0003
Revises: 0002

Replaces (tenant_id, created_at) with (tenant_id, status, created_at), so a tenant's messages of one status
in a time range are one contiguous index range, and extends (tenant_id, user_pk, created_at) with status, so
counts by status over a user's range never visit the table. Measured in docs/benchmarks.md ("Reports").
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_tenant_created")
        batch_op.drop_index("ix_messages_tenant_user_created")
        batch_op.create_index("ix_messages_tenant_status_created", ["tenant_id", "status", "created_at"], unique=False)
        batch_op.create_index(
            "ix_messages_tenant_user_created_status", ["tenant_id", "user_pk", "created_at", "status"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_tenant_user_created_status")
        batch_op.drop_index("ix_messages_tenant_status_created")
        batch_op.create_index("ix_messages_tenant_user_created", ["tenant_id", "user_pk", "created_at"], unique=False)
        batch_op.create_index("ix_messages_tenant_created", ["tenant_id", "created_at"], unique=False)
