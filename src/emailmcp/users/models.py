from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from emailmcp.db import Base, UTCDateTime, utcnow


class EndUser(Base):
    """A tenant's end user. `user_id` is the tenant's own identifier, unique within the tenant only."""

    __tablename__ = "end_users"
    __table_args__ = (UniqueConstraint("tenant_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(128))
    email: Mapped[str | None] = mapped_column(String(320))
    display_name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    mailbox: Mapped["Mailbox | None"] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )


class Mailbox(Base):
    """The mailbox a user sends from. Secret columns are vault ciphertexts bound to this row."""

    __tablename__ = "mailboxes"

    user_pk: Mapped[int] = mapped_column(ForeignKey("end_users.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    connected_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    from_address: Mapped[str | None] = mapped_column(String(320))
    smtp_host: Mapped[str | None] = mapped_column(String(253))
    smtp_port: Mapped[int | None] = mapped_column(Integer)
    smtp_security: Mapped[str | None] = mapped_column(String(16))
    smtp_username: Mapped[str | None] = mapped_column(String(320))
    smtp_password: Mapped[str | None] = mapped_column(Text, info={"secret": True})
    # Gmail: the OAuth tokens, written and refreshed by the oauth package only.
    oauth_access_token: Mapped[str | None] = mapped_column(Text, info={"secret": True})
    oauth_refresh_token: Mapped[str | None] = mapped_column(Text, info={"secret": True})
    oauth_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # While set and in the future, one process is refreshing the access token; the others wait for its result.
    oauth_refreshing_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    user: Mapped[EndUser] = relationship(back_populates="mailbox", lazy="raise")
