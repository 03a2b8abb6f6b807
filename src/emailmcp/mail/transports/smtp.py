"""Sends through an SMTP server (a user's own mailbox or the operator's relay), one connection per message."""

import functools
import ssl
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib

from emailmcp.mail.transports.base import PermanentError, SendResult, TransientError, TransportError


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


class SmtpTransport:
    name = "smtp"
    keeps_copy = False

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    async def send(self, mime: bytes, sender: str, recipients: list[str]) -> SendResult:
        """Connects, secures and authenticates as configured, sends, and quits.

        Recipients refused while others were accepted come back in `refused`; the message went to the rest.
        """
        config = self.config
        if config.security not in ("none", "starttls", "tls"):
            raise PermanentError(f"unknown SMTP security setting {config.security!r}")
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            username=config.username,
            password=config.password,
            timeout=config.timeout,
            use_tls=config.security == "tls",
            start_tls=config.security == "starttls",
            tls_context=tls_context(config.tls_verify, config.ca_file),
        )
        try:
            # On leaving, QUIT is sent and its failure ignored: once DATA is accepted the message is sent.
            async with client:
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
