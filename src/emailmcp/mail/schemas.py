from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from emailmcp.users.schemas import UserId

# No CR, LF or NUL: anything that ends up in a header (subject, names, ids, filenames, content types).
HeaderText = Annotated[str, StringConstraints(pattern=r"^[^\r\n\x00]*$")]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# Bodies may hold anything but NUL, which PostgreSQL cannot store.
BodyText = Annotated[str, AfterValidator(_no_nul)]
MessageIdHeader = Annotated[str, StringConstraints(pattern=r"^<[^<>\s\x00]+@[^<>\s\x00]+>$", max_length=998)]


def _ascii_address(value: str) -> str:
    """A deliverable address in ASCII form (IDN domains as punycode); SMTP without SMTPUTF8 needs it."""
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    if checked.ascii_email is None:
        raise ValueError("addresses with a non-ASCII local part are not supported")
    return checked.ascii_email


Address = Annotated[str, StringConstraints(max_length=320), AfterValidator(_ascii_address)]


class MessageStatus(StrEnum):
    scheduled = "scheduled"
    queued = "queued"
    sending = "sending"
    sent = "sent"
    failed = "failed"
    cancelled = "cancelled"


PENDING_STATUSES = (MessageStatus.scheduled, MessageStatus.queued, MessageStatus.sending)
StatusFilter = Literal["scheduled", "queued", "sending", "sent", "failed", "cancelled", "pending"]


class EntryPoint(StrEnum):
    rest = "rest"
    llm = "llm"
    mcp = "mcp"
    dashboard = "dashboard"


class AttachmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: Annotated[HeaderText, StringConstraints(min_length=1, max_length=255)]
    content_type: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$")] = (
        "application/octet-stream"
    )
    content_base64: str


class MessageContent(BaseModel):
    """What a send carries; shared by both send endpoints and, later, the agent actions."""

    model_config = ConfigDict(extra="forbid")

    to: Annotated[list[Address], Field(min_length=1)]
    cc: list[Address] = []
    bcc: list[Address] = []
    subject: Annotated[HeaderText, StringConstraints(max_length=998)] = ""
    body: BodyText = ""
    body_type: Literal["text", "html"] = "text"
    text_body: BodyText | None = Field(default=None, description="Plain-text part for html mail; derived when omitted.")
    reply_to: list[Address] = []
    in_reply_to: MessageIdHeader | None = None
    references: list[MessageIdHeader] = []
    attachments: list[AttachmentIn] = []
    send_at: datetime | None = Field(default=None, description="A future time (at most 30 days ahead) to send at.")

    @field_validator("reply_to", mode="before")
    @classmethod
    def _single_reply_to(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("send_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must include a time zone, e.g. 2026-01-31T09:00:00Z")
        return value


class SendRequest(MessageContent):
    user_id: UserId


class SendPreview(BaseModel):
    """What a send would do, from a dry run: nothing is stored or sent."""

    transport: str = Field(description="gmail, smtp or the operator's default transport.")
    from_address: str
    recipients: list[str] = Field(description="Everyone it would be delivered to: to, cc and bcc.")
    headers: dict[str, str] = Field(description="The message's headers as they would be sent (Bcc never is).")
    size_bytes: int = Field(description="The size of the MIME message.")


class DeliveryAttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    transport: str
    outcome: str
    detail: str | None
    started_at: datetime
    finished_at: datetime


class MessageOut(BaseModel):
    id: str
    user_id: str
    status: MessageStatus
    message_id: str
    transport: str
    from_address: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str
    send_at: datetime | None
    attempts: int
    error: str | None
    refused_recipients: dict[str, str] | None
    entry_point: EntryPoint
    api_key_id: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    provider_message_id: str | None = Field(default=None, description="Gmail's id of the sent message.")
    provider_thread_id: str | None = Field(
        default=None, description="Gmail's thread; replies (in_reply_to) to this message are sent into it."
    )


class MessageDetail(MessageOut):
    attempt_history: list[DeliveryAttemptOut]


class MessagePage(BaseModel):
    messages: list[MessageOut]
    next_cursor: str | None
