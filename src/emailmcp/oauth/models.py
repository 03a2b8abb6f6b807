from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from emailmcp.db import Base, UTCDateTime, utcnow


class OAuthState(Base):
    """A consent flow in progress: single-use, short-lived, bound to tenant, user and return URL.

    Keyed by the SHA-256 of the state, so the table never holds a state that could be replayed; the PKCE
    verifier is a vault ciphertext bound to this row.
    """

    __tablename__ = "oauth_states"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("end_users.id", ondelete="CASCADE"), index=True)
    return_url: Mapped[str | None] = mapped_column(Text)
    code_verifier: Mapped[str] = mapped_column(Text, info={"secret": True})
    api_key_id: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
