"""What every transport offers the worker. Transports never touch the database."""

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SendResult:
    accepted: list[str]
    refused: dict[str, str]  # recipient -> the server's reply, for recipients refused while others were accepted
    response: str  # the server's final reply text, or "captured"
    provider_message_id: str | None = None  # the provider's own ids of the sent message (Gmail's id and threadId)
    provider_thread_id: str | None = None


class TransportError(Exception):
    """A failed send; `message` is readable by a person and is the server's reply when there is one."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TransientError(TransportError):
    """Worth retrying: connection refused or reset, timeouts, TLS handshake failures, SMTP 4xx, HTTP 429/5xx."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(TransportError):
    """Retrying will not help: SMTP 5xx (including every recipient refused), failed authentication, bad address."""


class Transport(Protocol):
    name: str
    keeps_copy: bool  # True only for capture: the worker then stores the MIME for GET /v1/messages/{id}/raw
    bcc_in_headers: bool  # the provider takes recipients from the headers (and strips Bcc) rather than an envelope

    async def send(self, mime: bytes, sender: str, recipients: list[str]) -> SendResult: ...
