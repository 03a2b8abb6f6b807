"""A small local fake of the Gmail API's users.messages.send, speaking Gmail's wire format, for the Gmail tests.

    with OidcProvider([callback]) as oidc, SmtpSink() as sink, FakeGmail(oidc, sink.host, sink.port) as gmail:
        # the service posts to f"{gmail.api_base}/gmail/v1/users/me/messages/send"
        ...
        [received] = sink.wait_for(1)
        assert gmail.sent[0].message["Subject"] == "Hi"

POST /gmail/v1/users/{me|<account email>}/messages/send with a JSON body {"raw": <base64url RFC 822>, "threadId"?}:
  1. A fault queued by `fail_next` is answered first, before anything else is looked at.
  2. The bearer token is checked by introspection at the OIDC provider (with the provider's client credentials):
     none, or not active -> 401 UNAUTHENTICATED (reason authError) with `WWW-Authenticate: Bearer
     realm="https://accounts.google.com/", error="invalid_token"`; active but without a scope that allows sending
     (gmail.send, gmail.compose, gmail.modify or https://mail.google.com/) -> 403 PERMISSION_DENIED (reason
     insufficientPermissions).
  3. `raw` is decoded as base64url (padding optional; standard base64's +/ are refused, as by Gmail): missing or
     undecodable -> 400 INVALID_ARGUMENT (reason invalidArgument). No recipient in To, Cc and Bcc -> 400
     "Recipient address required"; a recipient that is not an address -> 400 "Invalid To header".
  4. The From address must be the account's address (the token's introspected `email`, else its sub when it
     contains '@', else the userinfo email). A simplification: real Gmail replaces a From address that is not one
     of the account's send-as aliases with the account's own; this fake refuses it with 400 FAILED_PRECONDITION
     (reason failedPrecondition), so that a wrong From shows up in tests. A message without From gets the
     account's address, as Gmail does.
  5. The Bcc header is removed (as Gmail does) and the message is relayed over plain SMTP to smtp_host:smtp_port,
     envelope sender the account's address, recipients those of To, Cc and Bcc. If the relay fails, the answer is
     500 backendError (real Gmail would accept and bounce later).
  6. 200 {"id": <16 hex digits>, "threadId": ..., "labelIds": ["SENT"]}; the threadId is the one given when this
     fake has seen that thread for the same account, else a new thread whose id is the message's id.
"""

import base64
import binascii
import contextlib
import email
import email.utils
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from peers.asgi import ThreadedServer
from peers.oidc import OidcProvider

SEND_SCOPES = frozenset(
    {
        "https://www.googleapis.com/auth/gmail.send",
        "https://www.googleapis.com/auth/gmail.compose",
        "https://www.googleapis.com/auth/gmail.modify",
        "https://mail.google.com/",
    }
)
INVALID_TOKEN_CHALLENGE = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_BASE64URL = re.compile(rb"^[A-Za-z0-9_-]*={0,2}$")


@dataclass
class GmailRequest:
    """One call of messages.send, as the fake saw and answered it."""

    time: float
    token: str | None
    thread_id: str | None  # the threadId asked for
    status: int  # the HTTP status answered
    message: EmailMessage | None  # the decoded `raw`, as sent (Bcc still in it); None when undecodable
    raw: bytes | None = None
    body: dict[str, Any] = field(default_factory=dict)  # the JSON answered
    account: str | None = None  # the account's address, once the token was checked
    recipients: list[str] = field(default_factory=list)  # the SMTP envelope recipients, when relayed
    relayed: bytes | None = None  # the bytes relayed over SMTP (without Bcc)
    user_id: str = "me"  # the {userId} of the path


def gmail_error(
    code: int, message: str, reason: str, *, domain: str = "global", status: str | None = None, **extra: str
) -> dict[str, Any]:
    """Google's JSON error body: {"error": {"code", "message", "errors": [{message, domain, reason}], "status"}}."""
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason, **extra}],
            "status": status or STATUS_NAMES.get(code, "UNKNOWN"),
        }
    }


def unauthenticated() -> tuple[dict[str, Any], dict[str, str]]:
    body = gmail_error(
        401,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid "
        "authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        "authError",
        location="Authorization",
        locationType="header",
    )
    body["error"]["errors"][0]["message"] = "Invalid Credentials"
    return body, {"WWW-Authenticate": INVALID_TOKEN_CHALLENGE}


def canned_error(status: int, retry_after: int | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The error `fail_next` injects for `status`, with Gmail's body (and headers)."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if status == 401:
        body, challenge = unauthenticated()
        return body, {**challenge, **headers}
    if status == 429:
        message = "User-rate limit exceeded."
        if retry_after is not None:
            until = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + retry_after))
            message = f"User-rate limit exceeded.  Retry after {until}.000Z"
        return gmail_error(429, message, "rateLimitExceeded", domain="usageLimits"), headers
    if status == 400:
        return gmail_error(400, "Invalid argument (injected by FakeGmail.fail_next)", "invalidArgument"), headers
    if status == 403:
        return gmail_error(403, "Insufficient Permission", "insufficientPermissions"), headers
    if status == 503:
        return gmail_error(503, "The service is currently unavailable.", "backendError"), headers
    if status >= 500:
        return gmail_error(status, "Backend Error", "backendError"), headers
    return gmail_error(status, f"Error {status} (injected by FakeGmail.fail_next)", "failedPrecondition"), headers


def decode_raw(value: object) -> bytes | None:
    """base64url with optional padding, as Gmail takes it; None when it is not that."""
    if not isinstance(value, str) or not value:
        return None
    data = value.strip().encode("ascii", "replace")
    if not _BASE64URL.match(data):
        return None
    data = data.rstrip(b"=")
    try:
        return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        return None


def remove_header(raw: bytes, name: str) -> bytes:
    """`raw` without every `name` header field (with its folded continuation lines); the rest stays byte-exact."""
    match = re.search(rb"\r?\n\r?\n", raw)
    head, rest = (raw[: match.start()], raw[match.start() :]) if match else (raw, b"")
    lines = re.split(rb"(?<=\n)", head)
    kept: list[bytes] = []
    skipping = False
    prefix = name.lower().encode() + b":"
    for line in lines:
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.lower().startswith(prefix)
        if not skipping:
            kept.append(line)
    return b"".join(kept) + rest


class FakeGmail:
    """The fake Gmail API on a loopback port of its own, served by uvicorn in a background thread."""

    def __init__(self, oidc: OidcProvider, smtp_host: str, smtp_port: int) -> None:
        self.oidc = oidc
        self.smtp_host = smtp_host
        self.smtp_port = smtp_port
        self.requests: list[GmailRequest] = []
        self._faults: list[tuple[int, int | None]] = []
        self._threads: dict[str, set[str]] = {}  # account -> thread ids seen
        self._changed = threading.Condition()
        self.app = Starlette(
            routes=[Route("/gmail/v1/users/{user_id}/messages/send", self._send, methods=["POST"])],
        )
        self._http = ThreadedServer(self.app, "fake-gmail")

    @property
    def api_base(self) -> str:
        """What EMAILMCP_GMAIL_API_BASE is set to."""
        return self._http.url

    # Lifecycle.

    def start(self) -> "FakeGmail":
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    def __enter__(self) -> "FakeGmail":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Knobs and results.

    def fail_next(self, status: int, times: int = 1, retry_after: int | None = None) -> None:
        """Answers the next `times` send calls with `status` and Gmail's error body for it (429: rateLimitExceeded,
        RESOURCE_EXHAUSTED, with `Retry-After` when given; 500: backendError; 401: authError; 400:
        invalidArgument), before looking at the token or the message."""
        with self._changed:
            self._faults.extend([(status, retry_after)] * times)

    @property
    def sent(self) -> list[GmailRequest]:
        """The calls answered 200 (and relayed over SMTP)."""
        with self._changed:
            return [request for request in self.requests if request.status == 200]

    def wait_for(self, count: int, timeout: float = 10) -> list[GmailRequest]:
        """Blocks until at least `count` calls (of any outcome) were answered, and returns them all."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"expected {count} Gmail API calls within {timeout}s, got {len(self.requests)}")
            return list(self.requests)

    # The endpoint.

    async def _send(self, request: Request) -> Response:
        record = GmailRequest(
            time=time.time(), token=None, thread_id=None, status=0, message=None, user_id=request.path_params["user_id"]
        )
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            record.token = token.strip()
        payload: Any = None
        with contextlib.suppress(ValueError):
            payload = json.loads(await request.body() or b"null")
        if isinstance(payload, dict):
            thread_id = payload.get("threadId")
            record.thread_id = thread_id if isinstance(thread_id, str) else None
            record.raw = decode_raw(payload.get("raw"))
            if record.raw is not None:
                record.message = email.message_from_bytes(record.raw, policy=policy.default)  # type: ignore[assignment]

        with self._changed:
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            body, headers = canned_error(*fault)
            return self._answer(record, fault[0], body, headers)

        # The token.
        if record.token is None:
            body, headers = unauthenticated()
            return self._answer(record, 401, body, headers)
        info = await self._introspect(record.token)
        if not info.get("active"):
            body, headers = unauthenticated()
            return self._answer(record, 401, body, headers)
        scopes = set(str(info.get("scope", "")).split())
        if not scopes & SEND_SCOPES:
            body = gmail_error(403, "Request had insufficient authentication scopes.", "insufficientPermissions")
            body["error"]["errors"][0]["message"] = "Insufficient Permission"
            challenge = (
                'Bearer realm="https://accounts.google.com/", error="insufficient_scope", '
                'scope="https://www.googleapis.com/auth/gmail.send"'
            )
            return self._answer(record, 403, body, {"WWW-Authenticate": challenge})
        account = await self._account_email(record.token, info)
        record.account = account
        if record.user_id != "me" and record.user_id.lower() != (account or "").lower():
            body = gmail_error(403, "Delegation denied for " + str(account), "forbidden")
            return self._answer(record, 403, body)

        # The message.
        if not isinstance(payload, dict) or "raw" not in payload:
            message = "'raw' RFC822 payload message string or uploading message via /upload/* URL required"
            return self._answer(record, 400, gmail_error(400, message, "invalidArgument"))
        if record.raw is None or record.message is None:
            message = "Invalid value at 'message.raw' (TYPE_BYTES), Base64 decoding failed"
            return self._answer(record, 400, gmail_error(400, message, "invalidArgument"))
        message_obj = record.message
        fields = [str(value) for name in ("To", "Cc", "Bcc") for value in message_obj.get_all(name, [])]
        addresses = [address for _, address in email.utils.getaddresses(fields) if address]
        if not addresses:
            return self._answer(record, 400, gmail_error(400, "Recipient address required", "invalidArgument"))
        if any(not re.fullmatch(r"[^@\s]+@[^@\s]+", address) for address in addresses):
            return self._answer(record, 400, gmail_error(400, "Invalid To header", "invalidArgument"))
        relayed = remove_header(record.raw, "Bcc")
        from_values = message_obj.get_all("From", [])
        if from_values:
            senders = [address for _, address in email.utils.getaddresses([str(v) for v in from_values]) if address]
            if not account or len(senders) != 1 or senders[0].lower() != account.lower():
                message = f"Invalid From header: {', '.join(senders) or str(from_values[0])} is not {account}"
                body = gmail_error(400, message, "failedPrecondition", status="FAILED_PRECONDITION")
                return self._answer(record, 400, body)
        else:
            relayed = f"From: {account}\r\n".encode() + relayed

        # Relay, and answer.
        try:
            await aiosmtplib.send(
                relayed,
                sender=account,
                recipients=addresses,
                hostname=self.smtp_host,
                port=self.smtp_port,
                use_tls=False,
                start_tls=False,
                timeout=10,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            body = gmail_error(500, f"Backend Error (relay failed: {exc})", "backendError")
            return self._answer(record, 500, body)
        record.recipients = addresses
        record.relayed = relayed
        message_id = secrets.token_hex(8)
        with self._changed:
            threads = self._threads.setdefault(account or "", set())
            thread_id = record.thread_id if record.thread_id in threads else message_id
            threads.add(thread_id)
        return self._answer(record, 200, {"id": message_id, "threadId": thread_id, "labelIds": ["SENT"]})

    def _answer(
        self, record: GmailRequest, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Response:
        record.status = status
        record.body = body
        with self._changed:
            self.requests.append(record)
            self._changed.notify_all()
        return JSONResponse(body, status_code=status, headers=headers)

    async def _introspect(self, token: str) -> dict[str, Any]:
        async with httpx2.AsyncClient(timeout=10) as client:
            response = await client.post(
                self.oidc.introspection_url,
                data={"token": token, "client_id": self.oidc.client_id, "client_secret": self.oidc.client_secret},
            )
        response.raise_for_status()
        return response.json()

    async def _account_email(self, token: str, info: dict[str, Any]) -> str | None:
        if info.get("email"):
            return str(info["email"])
        sub = str(info.get("sub", ""))
        if "@" in sub:
            return sub
        async with httpx2.AsyncClient(timeout=10) as client:
            response = await client.get(self.oidc.userinfo_url, headers={"Authorization": f"Bearer {token}"})
        if response.status_code == 200 and response.json().get("email"):
            return str(response.json()["email"])
        return None
