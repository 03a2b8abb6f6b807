"""Gmail API transport: `users.messages.send` with the message's raw MIME, as the connected account."""

import base64
import email.utils
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import httpx2

from emailmcp.mail.transports.base import PermanentError, SendResult, TransientError

# Gets an access token; given the token Gmail just refused, returns another one (refreshing it if need be).
TokenSource = Callable[[str | None], Awaitable[str]]

SEND_PATH = "/gmail/v1/users/me/messages/send"
# 403s that Gmail uses for rate limits rather than for missing permissions.
_RATE_LIMIT_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "dailyLimitExceeded", "quotaExceeded"}


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds, from either of its forms (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _google_error(response: httpx2.Response) -> tuple[str, str]:
    """Google's reason and message from its error body ({"error": {"message", "errors": [{"reason"}]}})."""
    try:
        error = response.json().get("error", {})
    except ValueError:
        return "", response.text[:200] or response.reason_phrase
    if not isinstance(error, dict):
        return str(error), str(response.json().get("error_description", ""))
    errors = error.get("errors") or [{}]
    return str(errors[0].get("reason", error.get("status", ""))), str(error.get("message", ""))


class GmailTransport:
    name = "gmail"
    keeps_copy = False
    # Gmail takes the recipients from the headers and removes Bcc before anyone sees the message.
    bcc_in_headers = True

    def __init__(self, http: httpx2.AsyncClient, api_base: str, token: TokenSource, thread_id: str | None) -> None:
        self._http = http
        self._url = api_base.rstrip("/") + SEND_PATH
        self._token = token
        self._thread_id = thread_id

    async def send(self, mime: bytes, sender: str, recipients: list[str]) -> SendResult:
        body = {"raw": base64.urlsafe_b64encode(mime).decode()}
        if self._thread_id:
            body["threadId"] = self._thread_id
        token = await self._token(None)
        response = await self._post(body, token)
        if response.status_code == 401:
            # The token was revoked or expired early: one refresh, one more try.
            response = await self._post(body, await self._token(token))
        if response.status_code == 200:
            sent = response.json()
            return SendResult(
                accepted=recipients,
                refused={},
                response=f"gmail accepted: id {sent.get('id')}",
                provider_message_id=sent.get("id"),
                provider_thread_id=sent.get("threadId"),
            )
        reason, message = _google_error(response)
        detail = f"gmail {response.status_code} {reason}: {message}".strip()
        status = response.status_code
        if status == 429 or status >= 500 or (status == 403 and reason in _RATE_LIMIT_REASONS):
            raise TransientError(detail, retry_after_seconds(response.headers.get("Retry-After")))
        if status == 401:
            raise TransientError(f"{detail} (after a token refresh)")
        raise PermanentError(detail)

    async def _post(self, body: dict, token: str) -> httpx2.Response:
        try:
            return await self._http.post(self._url, json=body, headers={"Authorization": f"Bearer {token}"})
        except httpx2.HTTPError as exc:
            raise TransientError(f"gmail unreachable: {type(exc).__name__}") from None
