"""outbox: messages, delivery attempts, recipient policy

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

import emailmcp.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("user_pk", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("transport", sa.String(length=16), nullable=False),
        sa.Column("via_mailbox", sa.Boolean(), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("from_address", sa.String(length=320), nullable=False),
        sa.Column("from_name", sa.String(length=200), nullable=True),
        sa.Column("to", sa.JSON(), nullable=False),
        sa.Column("cc", sa.JSON(), nullable=False),
        sa.Column("bcc", sa.JSON(), nullable=False),
        sa.Column("reply_to", sa.JSON(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body_type", sa.String(length=8), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("text_body", sa.Text(), nullable=True),
        sa.Column("in_reply_to", sa.String(length=998), nullable=True),
        sa.Column("references", sa.JSON(), nullable=False),
        sa.Column("attachments", sa.JSON(), nullable=True),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("send_at", emailmcp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", emailmcp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", emailmcp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("refused_recipients", sa.JSON(), nullable=True),
        sa.Column("api_key_id", sa.String(length=16), nullable=True),
        sa.Column("entry_point", sa.String(length=16), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("raw_mime", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", emailmcp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", emailmcp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", emailmcp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("content_erased_at", emailmcp.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_messages_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_pk"], ["end_users.id"], name=op.f("fk_messages_user_pk_end_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name=op.f("uq_messages_tenant_id_idempotency_key")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_due", ["status", "next_attempt_at"], unique=False)
        batch_op.create_index("ix_messages_tenant_created", ["tenant_id", "created_at"], unique=False)
        batch_op.create_index("ix_messages_tenant_user_created", ["tenant_id", "user_pk", "created_at"], unique=False)

    op.create_table(
        "delivery_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_pk", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("transport", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=24), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("started_at", emailmcp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", emailmcp.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_pk"], ["messages.id"], name=op.f("fk_delivery_attempts_message_pk_messages"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempts")),
        sa.UniqueConstraint("message_pk", "number", name=op.f("uq_delivery_attempts_message_pk_number")),
    )
    with op.batch_alter_table("tenant_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recipient_domain_allowlist", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("recipient_domain_denylist", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenant_settings", schema=None) as batch_op:
        batch_op.drop_column("recipient_domain_denylist")
        batch_op.drop_column("recipient_domain_allowlist")

    op.drop_table("delivery_attempts")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_tenant_user_created")
        batch_op.drop_index("ix_messages_tenant_created")
        batch_op.drop_index("ix_messages_due")

    op.drop_table("messages")
