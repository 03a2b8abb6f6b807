"""gmail: OAuth tokens on mailboxes, consent states, the provider's ids on messages, tenant return URLs

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

import emailmcp.db

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oauth_states",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("user_pk", sa.Integer(), nullable=False),
        sa.Column("return_url", sa.Text(), nullable=True),
        sa.Column("code_verifier", sa.Text(), nullable=False),
        sa.Column("api_key_id", sa.String(length=16), nullable=True),
        sa.Column("created_at", emailmcp.db.UTCDateTime(), nullable=False),
        sa.Column("expires_at", emailmcp.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_oauth_states_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_pk"], ["end_users.id"], name=op.f("fk_oauth_states_user_pk_end_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_states")),
    )
    with op.batch_alter_table("oauth_states", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_oauth_states_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_oauth_states_user_pk"), ["user_pk"], unique=False)

    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("oauth_access_token", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("oauth_refresh_token", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("oauth_expires_at", emailmcp.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("oauth_refreshing_until", emailmcp.db.UTCDateTime(), nullable=True))

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_message_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("provider_thread_id", sa.String(length=64), nullable=True))
        batch_op.create_index(
            "ix_messages_user_threaded",
            ["user_pk", "message_id"],
            unique=False,
            postgresql_where=sa.text("provider_thread_id IS NOT NULL"),
            sqlite_where=sa.text("provider_thread_id IS NOT NULL"),
        )

    with op.batch_alter_table("tenant_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("oauth_return_urls", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenant_settings", schema=None) as batch_op:
        batch_op.drop_column("oauth_return_urls")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_user_threaded")
        batch_op.drop_column("provider_thread_id")
        batch_op.drop_column("provider_message_id")
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.drop_column("oauth_refreshing_until")
        batch_op.drop_column("oauth_expires_at")
        batch_op.drop_column("oauth_refresh_token")
        batch_op.drop_column("oauth_access_token")
    with op.batch_alter_table("oauth_states", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_oauth_states_user_pk"))
        batch_op.drop_index(batch_op.f("ix_oauth_states_tenant_id"))
    op.drop_table("oauth_states")
