from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from emailmcp.db import Base, UTCDateTime, utcnow


class Message(Base):
    """An accepted send. The row is also the delivery job: workers claim due rows with a lease."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        # Reports count by status within time ranges, per user and per tenant, from these indexes alone.
        Index("ix_messages_tenant_user_created_status", "tenant_id", "user_pk", "created_at", "status"),
        Index("ix_messages_tenant_status_created", "tenant_id", "status", "created_at"),
        Index("ix_messages_due", "status", "next_attempt_at"),
        # Lists a tenant's messages newest first (ids sort by creation time) without sorting them all.
        Index("ix_messages_tenant_id_id", "tenant_id", "id"),
        # Finds the provider's thread of a message a reply answers; only messages with a thread are in it.
        Index(
            "ix_messages_user_threaded",
            "user_pk",
            "message_id",
            postgresql_where=text("provider_thread_id IS NOT NULL"),
            sqlite_where=text("provider_thread_id IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_pk: Mapped[int] = mapped_column(ForeignKey("end_users.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    transport: Mapped[str] = mapped_column(String(16))
    # True: the user's own mailbox; False: the operator's default transport. Fixed at enqueue, never switched.
    via_mailbox: Mapped[bool] = mapped_column(Boolean)
    message_id: Mapped[str] = mapped_column(String(255))
    from_address: Mapped[str] = mapped_column(String(320))
    from_name: Mapped[str | None] = mapped_column(String(200))
    to: Mapped[list[str]] = mapped_column(JSON)
    cc: Mapped[list[str]] = mapped_column(JSON)
    bcc: Mapped[list[str]] = mapped_column(JSON)
    reply_to: Mapped[list[str]] = mapped_column(JSON)
    subject: Mapped[str] = mapped_column(Text)
    body_type: Mapped[str] = mapped_column(String(8))
    body: Mapped[str | None] = mapped_column(Text)
    text_body: Mapped[str | None] = mapped_column(Text)
    in_reply_to: Mapped[str | None] = mapped_column(String(998))
    references: Mapped[list[str]] = mapped_column(JSON)
    attachments: Mapped[list[dict] | None] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(Integer)
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    refused_recipients: Mapped[dict[str, str] | None] = mapped_column(JSON)
    api_key_id: Mapped[str | None] = mapped_column(String(16))
    entry_point: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    raw_mime: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The mail provider's own ids of the sent message (Gmail's message id and thread id); None for SMTP.
    provider_message_id: Mapped[str | None] = mapped_column(String(64))
    provider_thread_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    content_erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    attempt_log: Mapped[list["DeliveryAttempt"]] = relationship(
        order_by="DeliveryAttempt.number", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"
    __table_args__ = (UniqueConstraint("message_pk", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_pk: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    transport: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(24))
    detail: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
