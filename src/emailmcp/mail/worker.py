"""The delivery worker: claims due outbox rows under a lease, sends them, records the outcome.

A message's Message-ID is fixed at enqueue, so if a worker dies after the server accepted a
message but before the outcome was recorded, the resend after the lease expires carries the
same Message-ID and receivers can recognise the duplicate.

Sending is what takes the time, so the database work is batched: `concurrency` tasks send, and one task does all
database work over a connection of its own, one transaction at a time. Each transaction writes the outcomes
finished since the last one (one statement for all, falling back to one by one only when a lease was lost) and
claims the next batch of due messages, with the rows and their users' mailboxes. SMTP connections are kept open
for the next message to the same server (SmtpPool).
"""

import asyncio
import contextlib
import functools
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx2
import structlog
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from emailmcp.db import utcnow
from emailmcp.mail import repository
from emailmcp.mail.mime import build_mime, outgoing_email
from emailmcp.mail.schemas import MessageStatus
from emailmcp.mail.transports.base import PermanentError, SendResult, TransientError, Transport
from emailmcp.mail.transports.capture import CaptureTransport
from emailmcp.mail.transports.gmail import GmailTransport
from emailmcp.mail.transports.smtp import SmtpConfig, SmtpPool, SmtpTransport
from emailmcp.network import resolve_public_host
from emailmcp.oauth.credentials import CredentialsUnavailable, NeedsReauth, NotConnected
from emailmcp.observability import DELIVERY_OUTCOMES
from emailmcp.retries import backoff
from emailmcp.runtime import Runtime
from emailmcp.users.models import Mailbox
from emailmcp.users.schemas import MailboxStatus, MailboxType
from emailmcp.vault import SecretContext
from emailmcp.wakeup import OUTBOX_CHANNEL, listen
from emailmcp.webhooks.events import emit, message_event
from emailmcp.webhooks.schemas import EventType

log = structlog.get_logger(__name__)

MAX_BACKOFF = timedelta(hours=6)
HOUSEKEEPING_SECONDS = 300


class Undeliverable(Exception):
    """The message cannot go out the way its user chose (mailbox removed, needs re-authorisation, ...)."""


def _replied_to(message: Row) -> list[tuple[int, str]]:
    """(user, Message-ID) of the messages a Gmail message answers, the one it replies to first: their thread is
    the thread it goes into."""
    if message.transport != MailboxType.gmail:
        return []
    replied = [message.in_reply_to, *reversed(message.references or [])]
    return [(message.user_pk, message_id) for message_id in replied if message_id]


@dataclass(slots=True)
class _Job:
    message: Row  # the messages row as claimed
    mailbox: Row | None  # the sender's mailbox at claim time
    claimed_at: float  # event loop time
    thread_id: str | None  # the provider's thread this message replies into, when known


@dataclass(slots=True)
class _Outcome:
    message: Row
    outcome: str
    detail: str | None
    started: datetime
    finished: datetime
    values: dict  # the message's new column values


# An outcome waits at most this long for others to be written with it; the database loop writes at once when a
# claim is due anyway, or when a batch of outcomes is waiting.
RECORD_DELAY = 0.05


class DeliveryWorker:
    def __init__(self, runtime: Runtime, concurrency: int = 8) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.concurrency = concurrency
        # Claims of up to two messages per sender, and at most three per sender leased at a time: enough to keep the
        # senders busy while the next batch is claimed, few enough to be sent well within the lease.
        self._batch = 2 * concurrency
        self._max_held = 3 * concurrency
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._capture = CaptureTransport()
        self._smtp = SmtpPool()
        self._gmail_http = httpx2.AsyncClient(
            timeout=httpx2.Timeout(60.0, connect=10.0),
            limits=httpx2.Limits(max_connections=None, max_keepalive_connections=concurrency),
        )
        self._ca_file = str(self.settings.smtp_ca_file) if self.settings.smtp_ca_file else None
        self._relay = (
            SmtpConfig(
                host=self.settings.smtp_host,
                port=self.settings.smtp_port,
                security=self.settings.smtp_security,
                username=self.settings.smtp_username,
                password=self.settings.smtp_password.get_secret_value() if self.settings.smtp_password else None,
                ca_file=self._ca_file,
            )
            if self.settings.smtp_host
            else None
        )
        self._mailbox_config = functools.lru_cache(maxsize=1024)(self._smtp_config)
        self._lease = timedelta(seconds=self.settings.worker_lease_seconds)
        self._jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._held = 0  # claimed messages not yet through a send attempt
        self._outcomes: list[_Outcome] = []
        self._outcomes_since = 0.0  # event loop time of the oldest outcome not yet written
        self._given_back: list[str] = []  # claimed, but waited too long to be sent under the lease
        self._claim_after = 0.0  # event loop time; pushed out while nothing is due
        self._wake = asyncio.Event()  # the database loop has work: room to claim, outcomes to write, or stopping
        self._conn: AsyncConnection | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Delivers until `stop` is set, then lets in-flight sends finish, records them and releases what is left."""
        log.info("worker_started", owner=self.owner, concurrency=self.concurrency)
        helpers = [asyncio.create_task(self._wake_on_stop(stop)), asyncio.create_task(self._wake_on_new_mail())]
        if not self.settings.is_sqlite:
            helpers.append(asyncio.create_task(listen(self.runtime.engine, OUTBOX_CHANNEL, self.runtime.outbox_signal)))
        senders = [asyncio.create_task(self._send_loop(stop)) for _ in range(self.concurrency)]
        try:
            await self._database_loop(stop)
        finally:
            for task in helpers:
                task.cancel()
            for _ in senders:
                self._jobs.put_nowait(None)
            _, late = await asyncio.wait(senders, timeout=self.settings.worker_lease_seconds)
            for task in late:
                task.cancel()
            try:
                # Outcomes first: releasing gives back only what is still leased, the messages never sent.
                await self._write(0, release=True)
            finally:
                await self._disconnect()
                await self._smtp.close()
                await self._gmail_http.aclose()
            log.info("worker_stopped", owner=self.owner)

    async def _wake_on_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _wake_on_new_mail(self) -> None:
        """Allows the next claim when mail is queued (a notification) or every poll interval."""
        while True:
            await self.runtime.outbox_signal.wait(self.settings.worker_poll_seconds)
            self._claim_after = 0.0
            self._wake.set()

    async def _database_loop(self, stop: asyncio.Event) -> None:
        """All database work of the worker, one transaction at a time: claims, outcomes, housekeeping."""
        loop = asyncio.get_running_loop()
        next_housekeeping = 0.0
        while not stop.is_set():
            self._wake.clear()
            now = loop.time()
            try:
                if now >= next_housekeeping:
                    await self._housekeeping()
                    next_housekeeping = now + HOUSEKEEPING_SECONDS
                self._smtp.close_idle()
                room = min(self._max_held - self._held, self._batch)
                claim = room if room == self._batch and now >= self._claim_after else 0
                waited = now - self._outcomes_since
                if (
                    claim
                    or self._given_back
                    or (self._outcomes and (len(self._outcomes) >= self._batch or waited >= RECORD_DELAY))
                ):
                    if await self._write(claim) < claim:
                        self._claim_after = float("inf")  # nothing more is due: wait for new mail or the poll
                    continue
            except Exception:
                # The database went away or is busy: keep the worker alive and try again after a pause.
                log.exception("worker_loop_failed", retry_seconds=self.settings.worker_poll_seconds)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.worker_poll_seconds)
                continue
            timer = loop.call_later(RECORD_DELAY - waited, self._wake.set) if self._outcomes else None
            await self._wake.wait()
            if timer:
                timer.cancel()

    async def _write(self, claim: int, release: bool = False) -> int:
        """One transaction: writes the outcomes finished so far, gives back stale leases, claims up to `claim` more
        due messages (with their users' mailboxes) and, when `release`, gives back every lease still held.

        Returns how many were claimed. When it fails, the outcomes stay to be written next time.
        """
        outcomes, self._outcomes = self._outcomes, []
        given_back, self._given_back = self._given_back, []
        messages: list[Row] = []
        threads: dict[tuple[int, str], str] = {}
        try:
            conn = await self._connect()
            lost, webhooks = await self._record(conn, outcomes, given_back)
            if claim:
                now = utcnow()
                messages = await repository.claim_due(conn, self.owner, now, now + self._lease, claim)
                mailboxes = await repository.mailboxes(conn, {m.user_pk for m in messages if m.via_mailbox})
                threads = await repository.provider_threads(conn, {key for m in messages for key in _replied_to(m)})
            if release:
                await repository.release(conn, self.owner, utcnow())
            await conn.commit()
            if webhooks:
                self.runtime.webhook_signal.notify()
        except BaseException:
            self._outcomes[:0], self._given_back[:0] = outcomes, given_back
            if outcomes:
                self._outcomes_since = asyncio.get_running_loop().time()
            await self._disconnect()
            raise
        for outcome in outcomes:
            if outcome.message.id in lost:
                log.warning("lease_lost", message=outcome.message.id)
            else:
                DELIVERY_OUTCOMES.labels(outcome.message.transport, outcome.outcome).inc()
        claimed_at = asyncio.get_running_loop().time()
        self._held += len(messages)
        for message in messages:
            thread = next((threads[key] for key in _replied_to(message) if key in threads), None)
            self._jobs.put_nowait(_Job(message, mailboxes.get(message.user_pk), claimed_at, thread))
        return len(messages)

    async def _record(
        self, conn: AsyncConnection, outcomes: list[_Outcome], given_back: list[str]
    ) -> tuple[set[str], int]:
        """Writes outcomes, their delivery_attempts rows and their webhook events, and gives back `given_back`.

        Returns the ids of the messages whose lease was lost (another worker took them over), for which nothing
        is written, and how many webhook deliveries were queued."""
        if given_back:
            await repository.release(conn, self.owner, utcnow(), given_back)
        if not outcomes:
            return set(), 0
        rows = [(o.message.id, o.values) for o in outcomes]
        attempts = [
            {
                "message_pk": o.message.id,
                "number": o.message.attempts,
                "transport": o.message.transport,
                "outcome": o.outcome,
                "detail": o.detail,
                "started_at": o.started,
                "finished_at": o.finished,
            }
            for o in outcomes
        ]
        if await repository.finish(conn, self.owner, rows, attempts):
            return set(), await self._emit(conn, outcomes)
        # Some lease was lost: find out which, one by one.
        await conn.rollback()
        if given_back:
            await repository.release(conn, self.owner, utcnow(), given_back)
        lost = set()
        for row, attempt in zip(rows, attempts, strict=True):
            if not await repository.finish(conn, self.owner, [row], [attempt]):
                lost.add(row[0])
        return lost, await self._emit(conn, [o for o in outcomes if o.message.id not in lost])

    async def _emit(self, conn: AsyncConnection, outcomes: list[_Outcome]) -> int:
        """message.sent and message.failed events for the outcomes that finished their message."""
        events = []
        for o in outcomes:
            status = o.values["status"]
            if status not in (MessageStatus.sent, MessageStatus.failed):
                continue
            events.append(
                message_event(
                    EventType.message_sent if status == MessageStatus.sent else EventType.message_failed,
                    o.message.tenant_id,
                    o.message.user_pk,
                    id=o.message.id,
                    message_id=o.message.message_id,
                    status=status,
                    transport=o.message.transport,
                    attempts=o.message.attempts,
                    error=o.values.get("error"),
                    refused_recipients=o.values.get("refused_recipients"),
                    sent_at=o.values.get("sent_at"),
                    provider_message_id=o.values.get("provider_message_id"),
                )
            )
        return await emit(conn, events)

    async def _connect(self) -> AsyncConnection:
        """The worker's own database connection, held between transactions rather than taken from the pool."""
        if self._conn is None:
            self._conn = await self.runtime.engine.connect()
        return self._conn

    async def _disconnect(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close()

    async def _send_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._jobs.get()
            if job is None or stop.is_set():
                return  # what is still queued is released when the worker stops
            try:
                if loop.time() - job.claimed_at > self.settings.worker_lease_seconds / 2:
                    # Sends ahead of it were slow: give it back rather than start a send the lease may not cover.
                    self._given_back.append(job.message.id)
                else:
                    await self._deliver(job)
            finally:
                self._held -= 1
                if self._held <= self._max_held - self._batch or len(self._outcomes) >= self._batch or self._given_back:
                    self._wake.set()

    async def _deliver(self, job: _Job) -> None:
        message = job.message
        started = utcnow()
        try:
            try:
                transport, sender = self._transport_for(message, job.mailbox, job.thread_id)
                email = outgoing_email(message)
                try:
                    mime = build_mime(email, bcc_header=transport.bcc_in_headers)
                except ValueError as exc:
                    raise Undeliverable(f"the message cannot be built: {exc}") from None
                if message.via_mailbox and isinstance(transport, SmtpTransport):
                    await self._check_host(transport.config)
                result = await transport.send(mime, sender, email.envelope_recipients())
            except NeedsReauth:
                self._record_failure(message, started, "mailbox_needs_reauth", "undeliverable")
            except NotConnected:
                self._record_failure(message, started, "mailbox_not_connected", "undeliverable")
            except CredentialsUnavailable as exc:
                self._record_transient(message, started, TransientError(str(exc)))
            except Undeliverable as exc:
                self._record_failure(message, started, str(exc), "undeliverable")
            except PermanentError as exc:
                self._record_failure(message, started, exc.message, "permanent_failure")
            except TransientError as exc:
                self._record_transient(message, started, exc)
            else:
                self._record_sent(message, started, result, mime if transport.keeps_copy else None)
        except Exception:
            # The lease expires and another attempt follows; nothing is lost.
            log.exception("delivery_crashed", message=message.id)

    def _transport_for(self, message: Row, mailbox: Row | None, thread_id: str | None) -> tuple[Transport, str]:
        """The transport the user chose at enqueue time; never another one."""
        if not message.via_mailbox:
            if message.transport == "capture":
                return self._capture, message.from_address
            if self._relay is None:
                raise Undeliverable("the operator's SMTP relay is no longer configured (EMAILMCP_SMTP_HOST)")
            return SmtpTransport(self._relay, self._smtp), message.from_address
        if mailbox is None or mailbox.type != message.transport:
            raise Undeliverable("mailbox_not_connected")
        if mailbox.status == MailboxStatus.needs_reauth:
            raise Undeliverable("mailbox_needs_reauth")
        if mailbox.status != MailboxStatus.connected:
            raise Undeliverable("mailbox_not_connected")
        if mailbox.type == MailboxType.smtp:
            return SmtpTransport(self._mailbox_config(mailbox), self._smtp), mailbox.from_address
        if mailbox.type == MailboxType.gmail:
            credentials = self.runtime.gmail_credentials
            if credentials is None:
                raise Undeliverable("gmail is not configured on this server (EMAILMCP_GOOGLE_CLIENT_ID)")
            token = functools.partial(credentials.access_token, mailbox)
            return GmailTransport(
                self._gmail_http, self.settings.gmail_api_base, token, thread_id
            ), mailbox.from_address
        raise Undeliverable(f"no {mailbox.type} transport is available in this version")

    def _smtp_config(self, mailbox: Row) -> SmtpConfig:
        """A mailbox's SMTP settings; kept per mailbox row (_mailbox_config), so a changed mailbox gets new ones."""
        password = None
        if mailbox.smtp_password:
            context = SecretContext(Mailbox.__tablename__, "smtp_password", mailbox.tenant_id, mailbox.user_pk)
            password = self.runtime.vault.decrypt(mailbox.smtp_password, context)
        return SmtpConfig(
            host=mailbox.smtp_host,
            port=mailbox.smtp_port,
            security=mailbox.smtp_security,
            username=mailbox.smtp_username,
            password=password,
            ca_file=self._ca_file,
        )

    async def _check_host(self, config: SmtpConfig) -> None:
        """Checks a user-supplied host again at send time: DNS may have changed since it was saved."""
        if self.settings.smtp_allow_private_hosts:
            return
        try:
            await resolve_public_host(config.host, config.port)
        except ValueError as exc:
            raise Undeliverable(f"host_not_allowed: {exc}") from None

    def _finish(self, message: Row, started: datetime, outcome: str, detail: str | None, **values) -> None:
        """Hands the outcome, with the message's new column values, to the database loop."""
        now = utcnow()
        if not self._outcomes:
            self._outcomes_since = asyncio.get_running_loop().time()
            self._wake.set()
        self._outcomes.append(_Outcome(message, outcome, detail, started, now, values | {"updated_at": now}))

    def _record_sent(self, message: Row, started: datetime, result: SendResult, mime: bytes | None) -> None:
        refused = result.refused or None
        detail = (
            result.response
            if not refused
            else f"{result.response}; refused: "
            + "; ".join(f"{address}: {reason}" for address, reason in refused.items())
        )
        self._finish(
            message,
            started,
            "sent",
            detail,
            status=MessageStatus.sent,
            sent_at=utcnow(),
            raw_mime=mime,
            refused_recipients=refused,
            provider_message_id=result.provider_message_id,
            provider_thread_id=result.provider_thread_id,
            error=f"some recipients were refused: {', '.join(refused)}" if refused else None,
        )

    def _record_failure(self, message: Row, started: datetime, reason: str, outcome: str) -> None:
        self._finish(message, started, outcome, reason, status=MessageStatus.failed, error=reason)

    def _record_transient(self, message: Row, started: datetime, exc: TransientError) -> None:
        if message.attempts >= self.settings.max_attempts:
            reason = f"attempts exhausted after {message.attempts} tries; last error: {exc.message}"
            self._finish(message, started, "transient_failure", exc.message, status=MessageStatus.failed, error=reason)
            return
        retry_at = utcnow() + backoff(self.settings.retry_base_seconds, message.attempts, exc.retry_after, MAX_BACKOFF)
        self._finish(
            message,
            started,
            "transient_failure",
            exc.message,
            status=MessageStatus.queued,
            next_attempt_at=retry_at,
            error=f"retrying at {retry_at.isoformat(timespec='seconds')} after: {exc.message}",
        )

    async def _housekeeping(self) -> None:
        now = utcnow()
        async with self.runtime.sessionmaker() as session:
            await repository.forget_idempotency_keys(session, now - timedelta(hours=24))
            await repository.erase_old_content(session, now - timedelta(days=self.settings.retention_days), now)
            await session.commit()
