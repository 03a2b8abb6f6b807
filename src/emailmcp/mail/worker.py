"""The delivery worker: claims due outbox rows under a lease, sends them, records the outcome.

A message's Message-ID is fixed at enqueue, so if a worker dies after the server accepted a
message but before the outcome was recorded, the resend after the lease expires carries the
same Message-ID and receivers can recognise the duplicate.
"""

import asyncio
import base64
import os
import random
import socket
from datetime import datetime, timedelta

import structlog

from emailmcp.db import utcnow
from emailmcp.mail import repository
from emailmcp.mail.mime import Attachment, OutgoingEmail, build_mime, html_to_text
from emailmcp.mail.models import DeliveryAttempt, Message
from emailmcp.mail.schemas import MessageStatus
from emailmcp.mail.signal import CHANNEL
from emailmcp.mail.transports.base import PermanentError, SendResult, TransientError, Transport
from emailmcp.mail.transports.capture import CaptureTransport
from emailmcp.mail.transports.smtp import SmtpConfig, SmtpTransport
from emailmcp.network import resolve_public_host
from emailmcp.observability import DELIVERY_OUTCOMES
from emailmcp.runtime import Runtime
from emailmcp.users.models import Mailbox
from emailmcp.users.schemas import MailboxStatus, MailboxType
from emailmcp.vault import SecretContext

log = structlog.get_logger(__name__)

MAX_BACKOFF = timedelta(hours=6)
HOUSEKEEPING_SECONDS = 300


class Undeliverable(Exception):
    """The message cannot go out the way its user chose (mailbox removed, needs re-authorisation, ...)."""


def backoff(settings, attempt: int, retry_after: float | None) -> timedelta:
    """Exponential backoff with full jitter around the base, never sooner than the server asked."""
    delay = settings.retry_base_seconds * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
    return min(timedelta(seconds=max(delay, retry_after or 0)), MAX_BACKOFF)


def outgoing_email(message: Message) -> OutgoingEmail:
    html = message.body if message.body_type == "html" else None
    text_body = (message.text_body or html_to_text(message.body or "")) if html is not None else message.body
    return OutgoingEmail(
        message_id=message.message_id,
        from_address=message.from_address,
        from_name=message.from_name,
        to=message.to,
        cc=message.cc,
        bcc=message.bcc,
        reply_to=message.reply_to,
        subject=message.subject,
        text_body=text_body,
        html_body=html,
        in_reply_to=message.in_reply_to,
        references=message.references,
        attachments=[
            Attachment(a["filename"], a["content_type"], base64.b64decode(a["content_base64"]))
            for a in message.attachments or []
        ],
        date=message.created_at,
    )


class DeliveryWorker:
    def __init__(self, runtime: Runtime, concurrency: int = 8) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.concurrency = concurrency
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._inflight: set[asyncio.Task] = set()
        self._capture = CaptureTransport()
        self._ca_file = str(self.settings.smtp_ca_file) if self.settings.smtp_ca_file else None

    async def run(self, stop: asyncio.Event) -> None:
        """Delivers until `stop` is set, then lets in-flight sends finish and releases what is left."""
        log.info("worker_started", owner=self.owner, concurrency=self.concurrency)
        listener = asyncio.create_task(self._listen()) if not self.settings.is_sqlite else None
        next_housekeeping = 0.0
        try:
            while not stop.is_set():
                try:
                    loop_time = asyncio.get_running_loop().time()
                    if loop_time >= next_housekeeping:
                        await self._housekeeping()
                        next_housekeeping = loop_time + HOUSEKEEPING_SECONDS
                    if await self._claim():
                        continue
                except Exception:
                    # The database went away or is busy: keep the worker alive and try again after a pause.
                    log.exception("worker_loop_failed", retry_seconds=self.settings.worker_poll_seconds)
                waiter = asyncio.create_task(self.runtime.outbox_signal.wait(self.settings.worker_poll_seconds))
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
        finally:
            if listener:
                listener.cancel()
            if self._inflight:
                await asyncio.wait(self._inflight, timeout=self.settings.worker_lease_seconds)
            async with self.runtime.sessionmaker() as session:
                await repository.release(session, self.owner, utcnow())
                await session.commit()
            log.info("worker_stopped", owner=self.owner)

    async def _claim(self) -> int:
        free = self.concurrency - len(self._inflight)
        if free <= 0:
            await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
            return 1
        now = utcnow()
        async with self.runtime.sessionmaker() as session:
            ids = await repository.claim_due(
                session, self.owner, now, now + timedelta(seconds=self.settings.worker_lease_seconds), free
            )
            await session.commit()
        for message_id in ids:
            task = asyncio.create_task(self._deliver(message_id))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(ids)

    async def _deliver(self, message_id: str) -> None:
        started = utcnow()
        try:
            async with self.runtime.sessionmaker() as session:
                loaded = await repository.load_for_delivery(session, message_id, self.owner)
            if loaded is None:
                return
            message, mailbox = loaded
            try:
                transport, sender = self._transport_for(message, mailbox)
                email = outgoing_email(message)
                try:
                    mime = build_mime(email)
                except ValueError as exc:
                    raise Undeliverable(f"the message cannot be built: {exc}") from None
                if message.via_mailbox and isinstance(transport, SmtpTransport):
                    await self._check_host(transport.config)
                result = await transport.send(mime, sender, email.envelope_recipients())
            except Undeliverable as exc:
                await self._record_failure(message, started, str(exc), "undeliverable")
            except PermanentError as exc:
                await self._record_failure(message, started, exc.message, "permanent_failure")
            except TransientError as exc:
                await self._record_transient(message, started, exc)
            else:
                await self._record_sent(message, started, result, mime if transport.keeps_copy else None)
        except Exception:
            # The lease expires and another attempt follows; nothing is lost.
            log.exception("delivery_crashed", message=message_id)

    def _transport_for(self, message: Message, mailbox: Mailbox | None) -> tuple[Transport, str]:
        """The transport the user chose at enqueue time; never another one."""
        if not message.via_mailbox:
            if message.transport == "capture":
                return self._capture, message.from_address
            if not self.settings.smtp_host:
                raise Undeliverable("the operator's SMTP relay is no longer configured (EMAILMCP_SMTP_HOST)")
            config = SmtpConfig(
                host=self.settings.smtp_host,
                port=self.settings.smtp_port,
                security=self.settings.smtp_security,
                username=self.settings.smtp_username,
                password=self.settings.smtp_password.get_secret_value() if self.settings.smtp_password else None,
                ca_file=self._ca_file,
            )
            return SmtpTransport(config), message.from_address
        if mailbox is None or mailbox.type != message.transport:
            raise Undeliverable("mailbox_not_connected")
        if mailbox.status == MailboxStatus.needs_reauth:
            raise Undeliverable("mailbox_needs_reauth")
        if mailbox.status != MailboxStatus.connected:
            raise Undeliverable("mailbox_not_connected")
        if mailbox.type == MailboxType.smtp:
            password = None
            if mailbox.smtp_password:
                context = SecretContext(Mailbox.__tablename__, "smtp_password", mailbox.tenant_id, mailbox.user_pk)
                password = self.runtime.vault.decrypt(mailbox.smtp_password, context)
            config = SmtpConfig(
                host=mailbox.smtp_host,
                port=mailbox.smtp_port,
                security=mailbox.smtp_security,
                username=mailbox.smtp_username,
                password=password,
                ca_file=self._ca_file,
            )
            return SmtpTransport(config), mailbox.from_address
        raise Undeliverable(f"no {mailbox.type} transport is available in this version")

    async def _check_host(self, config: SmtpConfig) -> None:
        """Checks a user-supplied host again at send time: DNS may have changed since it was saved."""
        if self.settings.smtp_allow_private_hosts:
            return
        try:
            await resolve_public_host(config.host, config.port)
        except ValueError as exc:
            raise Undeliverable(f"host_not_allowed: {exc}") from None

    async def _finish(
        self, message: Message, started: datetime, outcome: str, detail: str | None, values: dict
    ) -> None:
        now = utcnow()
        attempt = DeliveryAttempt(
            message_pk=message.id,
            number=message.attempts,
            transport=message.transport,
            outcome=outcome,
            detail=detail,
            started_at=started,
            finished_at=now,
        )
        async with self.runtime.sessionmaker() as session:
            recorded = await repository.finish(session, message.id, self.owner, values | {"updated_at": now}, attempt)
            await session.commit()
        if recorded:
            DELIVERY_OUTCOMES.labels(message.transport, outcome).inc()
        else:
            log.warning("lease_lost", message=message.id)

    async def _record_sent(self, message: Message, started: datetime, result: SendResult, mime: bytes | None) -> None:
        refused = result.refused or None
        detail = (
            result.response
            if not refused
            else f"{result.response}; refused: "
            + "; ".join(f"{address}: {reason}" for address, reason in refused.items())
        )
        await self._finish(
            message,
            started,
            "sent",
            detail,
            {
                "status": MessageStatus.sent,
                "sent_at": utcnow(),
                "raw_mime": mime,
                "refused_recipients": refused,
                "error": f"some recipients were refused: {', '.join(refused)}" if refused else None,
            },
        )

    async def _record_failure(self, message: Message, started: datetime, reason: str, outcome: str) -> None:
        await self._finish(message, started, outcome, reason, {"status": MessageStatus.failed, "error": reason})

    async def _record_transient(self, message: Message, started: datetime, exc: TransientError) -> None:
        if message.attempts >= self.settings.max_attempts:
            reason = f"attempts exhausted after {message.attempts} tries; last error: {exc.message}"
            await self._finish(
                message, started, "transient_failure", exc.message, {"status": MessageStatus.failed, "error": reason}
            )
            return
        retry_at = utcnow() + backoff(self.settings, message.attempts, exc.retry_after)
        await self._finish(
            message,
            started,
            "transient_failure",
            exc.message,
            {
                "status": MessageStatus.queued,
                "next_attempt_at": retry_at,
                "error": f"retrying at {retry_at.isoformat(timespec='seconds')} after: {exc.message}",
            },
        )

    async def _housekeeping(self) -> None:
        now = utcnow()
        async with self.runtime.sessionmaker() as session:
            await repository.forget_idempotency_keys(session, now - timedelta(hours=24))
            await repository.erase_old_content(session, now - timedelta(days=self.settings.retention_days), now)
            await session.commit()

    async def _listen(self) -> None:
        """PostgreSQL: turns NOTIFY from any process into a wake-up of this worker."""
        import psycopg

        url = self.runtime.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    async for _ in conn.notifies():
                        self.runtime.outbox_signal.notify()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("listen_failed", retry_seconds=5)
                await asyncio.sleep(5)
