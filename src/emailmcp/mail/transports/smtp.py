"""Sends through an SMTP server (a user's own mailbox or the operator's relay).

On its own, SmtpTransport opens a connection per message. With an SmtpPool (the worker's), a connection stays open
after a send and carries the next message to the same server with the same settings and credentials.
"""

import asyncio
import functools
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib

from emailmcp.mail.transports.base import PermanentError, SendResult, TransientError, TransportError

MAX_MESSAGES_PER_CONNECTION = 100
# Well under the 5 minutes a server waits for the next command before it may close (RFC 5321 4.5.3.2.7).
MAX_IDLE_SECONDS = 20.0
QUIT_TIMEOUT = 5.0


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: Literal["none", "starttls", "tls"]  # plain, STARTTLS upgrade, or implicit TLS (SMTPS)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30  # per connect, command and reply
    tls_verify: bool = True
    ca_file: str | None = None  # PEM file of the CAs to trust instead of the system store


@functools.cache
def tls_context(verify: bool = True, ca_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context per setting, built once: loading the system CA store takes a while."""
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


_local_hostname: str | None = None


async def local_hostname() -> str:
    """The name this host gives in EHLO, looked up once (aiosmtplib would call socket.getfqdn() per connection)."""
    global _local_hostname
    if _local_hostname is None:
        _local_hostname = await asyncio.to_thread(socket.getfqdn)
    return _local_hostname


async def connect(config: SmtpConfig) -> aiosmtplib.SMTP:
    """An open connection, secured and authenticated as configured."""
    client = aiosmtplib.SMTP(
        hostname=config.host,
        port=config.port,
        username=config.username,
        password=config.password,
        timeout=config.timeout,
        use_tls=config.security == "tls",
        start_tls=config.security == "starttls",
        tls_context=tls_context(config.tls_verify, config.ca_file),
        local_hostname=await local_hostname(),
    )
    await client.connect()  # closes the client again if it fails
    return client


async def quit_quietly(client: aiosmtplib.SMTP) -> None:
    """Says QUIT and closes; a failing QUIT does not matter, the messages sent over the connection are sent."""
    try:
        await client.quit(timeout=QUIT_TIMEOUT)
    except (aiosmtplib.SMTPException, OSError):
        pass
    finally:
        client.close()


@dataclass(eq=False)
class _Connection:
    client: aiosmtplib.SMTP
    sent: int = 0
    idle_since: float = 0.0


class SmtpPool:
    """Idle SMTP connections by SmtpConfig. A connection carries one message at a time and goes back to the pool
    after a successful send; after any error it is closed. Connections are closed after `max_messages` messages
    and when idle for `max_idle` seconds (noticed by `take` and `close_idle`)."""

    def __init__(
        self,
        max_messages: int = MAX_MESSAGES_PER_CONNECTION,
        max_idle: float = MAX_IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_messages = max_messages
        self.max_idle = max_idle
        self._clock = clock
        self._idle: dict[SmtpConfig, list[_Connection]] = {}
        self._closing: set[asyncio.Task] = set()

    async def sendmail(
        self, config: SmtpConfig, sender: str, recipients: list[str], mime: bytes
    ) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
        """Sends over an idle connection to this server, or a new one.

        A pooled connection the server has dropped since fails like any connection would, and the caller retries
        later as for any transient error: the message is not sent again at once over a new connection.
        """
        connection = self._take(config)
        if connection is None:
            connection = _Connection(await connect(config))
        try:
            result = await connection.client.sendmail(sender, recipients, mime)
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
            self._close(connection)  # the server answered, and aiosmtplib reset the transaction: QUIT politely
            raise
        except BaseException:
            connection.client.close()  # in an unknown state (dropped, timed out, cancelled mid-command)
            raise
        connection.sent += 1
        if connection.sent >= self.max_messages:
            self._close(connection)
        else:
            connection.idle_since = self._clock()
            self._idle.setdefault(config, []).append(connection)
        return result

    def _take(self, config: SmtpConfig) -> _Connection | None:
        idle = self._idle.get(config)
        now = self._clock()
        while idle:
            connection = idle.pop()  # the most recently used: the oldest ones age out when traffic drops
            if connection.client.is_connected and now - connection.idle_since < self.max_idle:
                return connection
            self._close(connection)
        return None

    def close_idle(self) -> None:
        """Closes the connections idle for too long, and forgets those the server closed."""
        now = self._clock()
        for config, idle in list(self._idle.items()):
            for connection in [c for c in idle if not c.client.is_connected or now - c.idle_since >= self.max_idle]:
                idle.remove(connection)
                self._close(connection)
            if not idle:
                del self._idle[config]

    async def close(self) -> None:
        """Closes every idle connection and waits for the QUITs (in use ones are closed by their send)."""
        for idle in self._idle.values():
            for connection in idle:
                self._close(connection)
        self._idle.clear()
        if self._closing:
            await asyncio.wait(self._closing)

    def _close(self, connection: _Connection) -> None:
        if not connection.client.is_connected:
            connection.client.close()
            return
        task = asyncio.create_task(quit_quietly(connection.client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


class SmtpTransport:
    name = "smtp"
    keeps_copy = False
    bcc_in_headers = False

    def __init__(self, config: SmtpConfig, pool: SmtpPool | None = None) -> None:
        self.config = config
        self.pool = pool

    async def send(self, mime: bytes, sender: str, recipients: list[str]) -> SendResult:
        """Connects (or reuses a pooled connection), secures and authenticates as configured, and sends.

        Recipients refused while others were accepted come back in `refused`; the message went to the rest.
        """
        config = self.config
        if config.security not in ("none", "starttls", "tls"):
            raise PermanentError(f"unknown SMTP security setting {config.security!r}")
        try:
            if self.pool is not None:
                errors, response = await self.pool.sendmail(config, sender, recipients, mime)
            else:
                # On leaving, QUIT is sent and its failure ignored: once DATA is accepted the message is sent.
                async with await connect(config) as client:
                    errors, response = await client.sendmail(sender, recipients, mime)
        except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
            raise self._error(exc) from exc
        refused = {recipient: f"{reply.code} {reply.message}" for recipient, reply in errors.items()}
        return SendResult(
            accepted=[r for r in recipients if r not in refused],
            refused=refused,
            response=response,
        )

    def _error(self, exc: Exception) -> TransportError:
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            text = "all recipients were refused: " + "; ".join(
                f"{e.recipient}: {e.code} {e.message}" for e in exc.recipients
            )
            if any(e.code < 500 for e in exc.recipients):
                return TransientError(text)
            return PermanentError(text)
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            text = f"{exc.code} {exc.message}"
            return PermanentError(text) if 500 <= exc.code < 600 else TransientError(text)
        if isinstance(exc, ssl.SSLError):
            return TransientError(f"TLS with {self.config.host}:{self.config.port} failed: {exc}")
        if isinstance(exc, OSError):  # refused, reset, timed out (aiosmtplib's own included), TLS wrapped by connect
            return TransientError(str(exc) or type(exc).__name__)
        if isinstance(exc, UnicodeEncodeError):  # aiosmtplib sends addresses as ASCII unless asked for SMTPUTF8
            return PermanentError(f"non-ASCII addresses are not supported: {exc.object!r}")
        # No server reply to go by: STARTTLS or AUTH not offered, an address that cannot go on an SMTP line.
        return PermanentError(str(exc))
