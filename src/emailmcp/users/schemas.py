from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

USER_ID_PATTERN = r"^[A-Za-z0-9._@+:-]{1,128}$"
USER_ID_RULE = "1 to 128 letters, digits or . _ @ + : -"
UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]
HeaderSafeText = Annotated[str, StringConstraints(pattern=r"^[^\r\n\x00]*$")]


class MailboxType(StrEnum):
    none = "none"
    smtp = "smtp"
    gmail = "gmail"


class MailboxStatus(StrEnum):
    not_connected = "not_connected"
    connected = "connected"
    needs_reauth = "needs_reauth"
    disconnected = "disconnected"


class SmtpSecurity(StrEnum):
    none = "none"
    starttls = "starttls"
    tls = "tls"


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: UserId = Field(
        description="Your own identifier for the user; unique within your tenant.", examples=["user123"]
    )
    email: EmailStr | None = None
    display_name: Annotated[HeaderSafeText, StringConstraints(max_length=200)] | None = None


class SmtpSettingsOut(BaseModel):
    host: str
    port: int
    security: SmtpSecurity
    username: str | None
    password_set: bool


class MailboxOut(BaseModel):
    type: MailboxType
    status: MailboxStatus
    from_address: str | None = None
    connected_at: datetime | None = None
    smtp: SmtpSettingsOut | None = None


class UserOut(BaseModel):
    user_id: str
    email: str | None
    display_name: str | None
    created_at: datetime
    mailbox: MailboxOut


class UserPage(BaseModel):
    users: list[UserOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class Profile(BaseModel):
    """The seed's profile fields, plus the mailbox."""

    user_id: str
    email_address: str | None
    display_name: str | None
    gmail_connected: bool
    connection_date: datetime | None
    last_used: datetime | None
    total_emails_sent: int
    created_at: datetime
    mailbox: MailboxOut


class SmtpMailboxIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["smtp"]
    host: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:_\[\]-]+$")]
    port: int = Field(ge=1, le=65535)
    security: SmtpSecurity = SmtpSecurity.starttls
    username: Annotated[HeaderSafeText, StringConstraints(max_length=320)] | None = None
    password: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, json_schema_extra={"writeOnly": True}
    )
    from_address: EmailStr
