from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator


class EventType(StrEnum):
    message_sent = "message.sent"
    message_failed = "message.failed"
    message_cancelled = "message.cancelled"
    mailbox_connected = "mailbox.connected"
    mailbox_needs_reauth = "mailbox.needs_reauth"
    mailbox_disconnected = "mailbox.disconnected"


class DeliveryStatus(StrEnum):
    pending = "pending"  # due now or later (waiting for a retry, or for its endpoint to be enabled again)
    sending = "sending"  # leased to a dispatcher
    succeeded = "succeeded"
    failed = "failed"  # given up: a refusal that retrying cannot fix, or failures for the whole retry window


def _no_control_characters(value: str) -> str:
    """URL parsers drop some control characters silently, and NUL cannot be stored: none are accepted."""
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in value):
        raise ValueError("must not contain control characters")
    return value


Url = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=2048),
    AfterValidator(_no_control_characters),
]
Description = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=200), AfterValidator(_no_control_characters)
]
EventList = Annotated[list[EventType], Field(min_length=1, description="The event types to send to this URL.")]


def _distinct(events: list[EventType] | None) -> list[EventType] | None:
    return None if events is None else sorted(set(events))


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url = Field(description="Where events are POSTed: https (http only where the operator allows it).")
    events: EventList
    description: Description | None = None

    _events = field_validator("events")(_distinct)


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url | None = None
    events: EventList | None = None
    description: Description | None = None
    enabled: bool | None = Field(
        default=None, description="false pauses deliveries; true resumes them (and clears the disabled reason)."
    )

    _events = field_validator("events")(_distinct)


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[EventType]
    description: str | None
    enabled: bool
    disabled_reason: str | None = Field(description="Why the server disabled this webhook, until it is enabled.")
    failing_since: datetime | None = Field(description="The first failed attempt since the last success.")
    previous_secret_expires_at: datetime | None = Field(
        description="After a rotation: until then, deliveries carry a signature with the previous secret too."
    )
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(WebhookOut):
    secret: str = Field(
        description="The signing secret (whsec_<base64>), for Standard Webhooks libraries. Shown only on creation "
        "and rotation."
    )


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    status_code: int | None = Field(description="The receiver's HTTP status; null when no answer came.")
    latency_ms: int
    error: str | None
    started_at: datetime


class DeliveryOut(BaseModel):
    id: str
    webhook_id: str
    event_id: str = Field(description="Also the webhook-id header: the same on every retry, for deduplication.")
    event_type: EventType
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None = Field(description="When the next attempt is due, while pending.")
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[AttemptOut]


class DeliveryPage(BaseModel):
    deliveries: list[DeliveryOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")
