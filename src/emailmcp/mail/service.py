"""Accepting sends (validation beyond the schema, outbound policy, idempotency, the outbox row) and reading them.

Every entry point (REST, LLM actions, MCP, dashboard) enqueues through `Outbox.enqueue`, so they share
one set of rules. Nothing is written when a rule refuses.
"""

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from types import SimpleNamespace

import structlog
from sqlalchemy import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from emailmcp.batching import Batcher, Pending
from emailmcp.db import time_ordered_id, utcnow
from emailmcp.errors import APIError, InvalidField, NotFound
from emailmcp.mail import repository
from emailmcp.mail.mime import POLICY, build_mime, new_message_id, outgoing_email
from emailmcp.mail.models import Message
from emailmcp.mail.schemas import (
    PENDING_STATUSES,
    DeliveryAttemptOut,
    EntryPoint,
    MessageContent,
    MessageDetail,
    MessageOut,
    MessagePage,
    MessageStatus,
    SendPreview,
    StatusFilter,
)
from emailmcp.settings import Settings
from emailmcp.tenancy.schemas import TenantContext
from emailmcp.users import service as users
from emailmcp.users.schemas import MailboxStatus
from emailmcp.wakeup import Wakeup
from emailmcp.webhooks.events import emit, message_event
from emailmcp.webhooks.schemas import EventType

log = structlog.get_logger(__name__)

MAX_SCHEDULE_AHEAD = timedelta(days=30)
_OUT_FIELDS = [field for field in MessageOut.model_fields if field != "user_id"]
MAX_PAGE = 200
# Headers a dry run leaves out: fixed only when the message is accepted, or the MIME structure's own.
_PREVIEW_SKIPPED_HEADERS = {"Message-ID", "Date", "MIME-Version", "Content-Type", "Content-Transfer-Encoding"}


@dataclass(frozen=True)
class Enqueued:
    message: MessageOut
    replayed: bool


def new_id() -> str:
    return time_ordered_id("msg")


def request_fingerprint(user_id: str, content: MessageContent) -> str:
    canonical = json.dumps({"user_id": user_id, **content.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _decode_attachments(content: MessageContent, settings: Settings) -> tuple[list[dict], int]:
    stored, total = [], len(content.body.encode()) + len((content.text_body or "").encode())
    for index, attachment in enumerate(content.attachments):
        try:
            raw = base64.b64decode(attachment.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidField(f"attachments.{index}.content_base64", "not valid base64") from None
        total += len(raw)
        stored.append(attachment.model_dump())
    if total > settings.max_message_bytes:
        raise APIError(
            413,
            "message_too_large",
            f"The message is {total} bytes; the limit is {settings.max_message_bytes}.",
            [{"field": "attachments", "message": "too large"}],
        )
    return stored, total


def _check_recipients(content: MessageContent, allow: list[str] | None, deny: list[str] | None, limit: int) -> None:
    fields = {"to": content.to, "cc": content.cc, "bcc": content.bcc}
    if sum(len(addresses) for addresses in fields.values()) > limit:
        raise InvalidField("to", f"more than {limit} recipients in to, cc and bcc together", code="too_many_recipients")

    def matches(domain: str, rules: list[str]) -> bool:
        return any(domain == rule or domain.endswith("." + rule) for rule in rules)

    for field, addresses in fields.items():
        for index, address in enumerate(addresses):
            domain = address.rsplit("@", 1)[1].lower()
            refused = (deny and matches(domain, deny)) or (allow is not None and not matches(domain, allow))
            if refused:
                raise InvalidField(
                    f"{field}.{index}",
                    f"{address} is not allowed by this tenant's recipient policy",
                    code="recipient_refused",
                )


def _daily_cap_refusal(user_id: str, cap: int, oldest: datetime | None, now: datetime) -> APIError:
    reset = (oldest or now) + timedelta(days=1)
    return APIError(
        429,
        "daily_send_cap",
        f"User {user_id!r} reached the cap of {cap} messages in 24 hours; more can be sent from {reset.isoformat()}.",
        [{"field": "user_id", "message": f"resets at {reset.isoformat()}"}],
        headers={"Retry-After": str(max(1, int((reset - now).total_seconds())))},
    )


def _new_sender(user_id: str) -> SimpleNamespace:
    """What `users.get_senders` gives for a user that does not exist yet (a send would create them)."""
    return SimpleNamespace(
        id=None,
        user_id=user_id,
        email=None,
        display_name=None,
        mailbox_type=None,
        mailbox_status=None,
        mailbox_from_address=None,
        recent_count=0,
        recent_oldest=None,
    )


def _route(sender: Row, settings: Settings) -> tuple[str, bool, str]:
    """The transport, whether it is the user's own mailbox, and the From address; refuses rather than falling back."""
    if sender.mailbox_type is not None:
        if sender.mailbox_status == MailboxStatus.needs_reauth:
            raise APIError(409, "mailbox_needs_reauth", f"User {sender.user_id!r} must reconnect their mailbox.")
        if sender.mailbox_status != MailboxStatus.connected:
            raise APIError(409, "mailbox_not_connected", f"User {sender.user_id!r} has no connected mailbox.")
        return sender.mailbox_type, True, sender.mailbox_from_address
    if settings.default_transport == "none":
        raise APIError(409, "mailbox_not_connected", f"User {sender.user_id!r} has no connected mailbox.")
    from_address = settings.smtp_from if settings.default_transport == "smtp" else sender.email or settings.smtp_from
    return settings.default_transport, False, from_address


@dataclass(frozen=True)
class _Send:
    """A send that passed every check needing no database, waiting for its batch."""

    ctx: TenantContext
    user_id: str
    content: MessageContent
    entry_point: EntryPoint
    idempotency_key: str | None
    fingerprint: str | None
    attachments: list[dict]
    size: int


class Outbox:
    """Accepts sends into the outbox. The one way in for every entry point, so they share one set of rules.

    Checks that need no database run in the caller's request. The rest (idempotency, the user and their
    mailbox, the daily cap) and the insert run for all sends that arrived together in one transaction, so a
    burst of sends costs a few statements and one commit instead of several each. Each caller still gets its
    own answer only after its row is committed, and a refusal writes nothing for that send.
    """

    def __init__(self, engine: AsyncEngine, settings: Settings, signal: Wakeup):
        self._engine = engine
        self._settings = settings
        self._signal = signal
        self._batches: Batcher[_Send] = Batcher(self._write)

    async def enqueue(
        self,
        ctx: TenantContext,
        user_id: str,
        content: MessageContent,
        entry_point: EntryPoint,
        idempotency_key: str | None = None,
    ) -> Enqueued:
        """Validates, applies policy and commits one outbox row; replays the original for a repeated key."""
        attachments, size = self._check(ctx, content)
        fingerprint = request_fingerprint(user_id, content) if idempotency_key else None
        send = _Send(ctx, user_id, content, entry_point, idempotency_key, fingerprint, attachments, size)
        return await self._batches.submit(send)

    async def preview(self, ctx: TenantContext, user_id: str, content: MessageContent) -> SendPreview:
        """What `enqueue` would accept and send, after the same checks and policy, without writing anything."""
        settings, now = self._settings, utcnow()
        attachments, size = self._check(ctx, content)
        async with self._engine.connect() as connection:
            senders = await users.find_senders(connection, ctx, [user_id], now - timedelta(days=1))
        sender = senders.get(user_id) or _new_sender(user_id)
        if sender.recent_count >= settings.daily_send_cap:
            raise _daily_cap_refusal(user_id, settings.daily_send_cap, sender.recent_oldest, now)
        send = _Send(ctx, user_id, content, EntryPoint.rest, None, None, attachments, size)
        row = _outbox_row(send, sender, settings, now)
        mime = build_mime(outgoing_email(SimpleNamespace(**row)))
        headers = BytesHeaderParser(policy=POLICY).parsebytes(mime)
        return SendPreview(
            transport=row["transport"],
            from_address=row["from_address"],
            recipients=outgoing_email(SimpleNamespace(**row)).envelope_recipients(),
            headers={name: str(value) for name, value in headers.items() if name not in _PREVIEW_SKIPPED_HEADERS},
            size_bytes=len(mime),
        )

    def _check(self, ctx: TenantContext, content: MessageContent) -> tuple[list[dict], int]:
        """The checks that need no database: schedule, attachments and size, recipients and the tenant's policy."""
        settings = self._settings
        now = utcnow()
        if content.send_at is not None:
            if content.send_at <= now:
                raise InvalidField("send_at", "must be in the future")
            if content.send_at > now + MAX_SCHEDULE_AHEAD:
                raise InvalidField("send_at", "must be at most 30 days ahead")
        attachments, size = _decode_attachments(content, settings)
        policy = ctx.settings
        _check_recipients(
            content, policy.recipient_domain_allowlist, policy.recipient_domain_denylist, settings.max_recipients
        )
        return attachments, size

    async def close(self) -> None:
        await self._batches.close()

    async def _write(self, batch: list[Pending[_Send]]) -> None:
        try:
            await self._write_together(batch)
        except IntegrityError:
            # A send in another process took one of these idempotency keys first. Each send on its own
            # then finds the winner's row and replays it.
            log.info("outbox_batch_split", sends=len(batch), reason="idempotency key taken concurrently")
            for pending in batch:
                try:
                    await self._write_together([pending])
                except Exception as exc:
                    pending.fail(exc)

    async def _write_together(self, batch: list[Pending[_Send]]) -> None:
        settings, now = self._settings, utcnow()
        answers: list[tuple[Pending[_Send], Enqueued | APIError]] = []
        rows: list[dict] = []
        by_tenant: dict[int, list[Pending[_Send]]] = {}
        for pending in batch:
            by_tenant.setdefault(pending.item.ctx.tenant_id, []).append(pending)
        async with self._engine.connect() as connection:
            for group in by_tenant.values():
                ctx = group[0].item.ctx
                originals = await _originals(connection, ctx, [p.item.idempotency_key for p in group])
                fresh_users = {p.item.user_id for p in group if p.item.idempotency_key not in originals}
                senders = await users.ensure_senders(connection, ctx, list(fresh_users), now - timedelta(days=1))
                counts = {sender.id: (sender.recent_count, sender.recent_oldest) for sender in senders.values()}
                for pending in group:
                    send = pending.item
                    original = originals.get(send.idempotency_key)
                    if original is not None:
                        answers.append((pending, _replay(send, *original)))
                        continue
                    sender = senders[send.user_id]
                    count, oldest = counts[sender.id]
                    try:
                        if count >= settings.daily_send_cap:
                            raise _daily_cap_refusal(send.user_id, settings.daily_send_cap, oldest, now)
                        row = _outbox_row(send, sender, settings, now)
                    except APIError as refusal:
                        answers.append((pending, refusal))
                        continue
                    counts[sender.id] = (count + 1, oldest or now)
                    rows.append(row)
                    accepted = MessageOut(**{field: row.get(field) for field in _OUT_FIELDS}, user_id=send.user_id)
                    if send.idempotency_key:
                        originals[send.idempotency_key] = (send.fingerprint, accepted)
                    answers.append((pending, Enqueued(accepted, replayed=False)))
            if rows:
                await repository.insert_many(connection, rows)
            await connection.commit()
        if rows:
            self._signal.notify()
        for pending, answer in answers:
            if isinstance(answer, APIError):
                pending.fail(answer)
            else:
                pending.resolve(answer)


async def _originals(
    connection: AsyncConnection, ctx: TenantContext, keys: list[str | None]
) -> dict[str, tuple[str | None, MessageOut]]:
    """The messages already stored under these idempotency keys, with the fingerprint of their request."""
    wanted = [key for key in keys if key]
    if not wanted:
        return {}
    found = await repository.find_by_idempotency_keys(connection, ctx, wanted)
    names = await repository.user_ids(connection, ctx, {row.user_pk for row in found.values()}) if found else {}
    return {key: (message.request_hash, message_out(message, names[message.user_pk])) for key, message in found.items()}


def _replay(send: _Send, fingerprint: str | None, original: MessageOut) -> Enqueued | APIError:
    if fingerprint != send.fingerprint:
        return APIError(
            409,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request.",
            [{"field": "Idempotency-Key", "message": "reused with a different body"}],
        )
    return Enqueued(original, replayed=True)


def _outbox_row(send: _Send, sender: Row, settings: Settings, now: datetime) -> dict:
    """The outbox row for an accepted send; refuses (409) when the user's mailbox cannot send."""
    transport, via_mailbox, from_address = _route(sender, settings)
    content = send.content
    return {
        "id": new_id(),
        "tenant_id": send.ctx.tenant_id,
        "user_pk": sender.id,
        "status": MessageStatus.scheduled if content.send_at else MessageStatus.queued,
        "transport": transport,
        "via_mailbox": via_mailbox,
        "message_id": new_message_id(from_address.rsplit("@", 1)[-1]),
        "from_address": from_address,
        "from_name": sender.display_name,
        "to": [str(a) for a in content.to],
        "cc": [str(a) for a in content.cc],
        "bcc": [str(a) for a in content.bcc],
        "reply_to": [str(a) for a in content.reply_to],
        "subject": content.subject,
        "body_type": content.body_type,
        "body": content.body,
        "text_body": content.text_body,
        "in_reply_to": content.in_reply_to,
        "references": list(content.references),
        "attachments": send.attachments or None,
        "size_bytes": send.size,
        "send_at": content.send_at,
        "next_attempt_at": content.send_at or now,
        "attempts": 0,
        "api_key_id": send.ctx.key_id,
        "entry_point": send.entry_point,
        "idempotency_key": send.idempotency_key,
        "request_hash": send.fingerprint,
        "created_at": now,
        "updated_at": now,
    }


def message_out(message: Message | Row, user_id: str) -> MessageOut:
    return MessageOut(
        id=message.id,
        user_id=user_id,
        status=message.status,
        message_id=message.message_id,
        transport=message.transport,
        from_address=message.from_address,
        to=message.to,
        cc=message.cc,
        bcc=message.bcc,
        subject=message.subject,
        send_at=message.send_at,
        attempts=message.attempts,
        error=message.error,
        refused_recipients=message.refused_recipients,
        entry_point=message.entry_point,
        api_key_id=message.api_key_id,
        created_at=message.created_at,
        updated_at=message.updated_at,
        sent_at=message.sent_at,
        provider_message_id=message.provider_message_id,
        provider_thread_id=message.provider_thread_id,
    )


async def _get(session: AsyncSession, ctx: TenantContext, message_id: str, with_attempts: bool = False) -> Message:
    message = await repository.get(session, ctx, message_id, with_attempts)
    if message is None:
        raise NotFound(f"message {message_id!r}", code="message_not_found")
    return message


async def get_message(session: AsyncSession, ctx: TenantContext, message_id: str) -> MessageDetail:
    message = await _get(session, ctx, message_id, with_attempts=True)
    names = await repository.user_ids(session, ctx, {message.user_pk})
    return MessageDetail(
        **message_out(message, names[message.user_pk]).model_dump(),
        attempt_history=[DeliveryAttemptOut.model_validate(attempt) for attempt in message.attempt_log],
    )


async def list_messages(
    session: AsyncSession,
    ctx: TenantContext,
    user_id: str | None,
    status: StatusFilter | None,
    cursor: str | None,
    limit: int,
) -> MessagePage:
    user_pk = None
    if user_id is not None:
        user_pk = (await users.get_user(session, ctx, user_id)).id
    statuses = [s.value for s in PENDING_STATUSES] if status == "pending" else [status] if status else None
    if cursor is not None and not (cursor.startswith("msg_") and len(cursor) <= 32):
        raise InvalidField("cursor", "not a cursor returned by this endpoint")
    rows = await repository.list_messages(session, ctx, user_pk, statuses, cursor, limit + 1)
    names = await repository.user_ids(session, ctx, {row.user_pk for row in rows})
    page = rows[:limit]
    return MessagePage(
        messages=[message_out(row, names[row.user_pk]) for row in page],
        next_cursor=page[-1].id if len(rows) > limit else None,
    )


async def cancel(session: AsyncSession, ctx: TenantContext, message_id: str) -> MessageOut:
    message = await _get(session, ctx, message_id)
    if not await repository.cancel(session, ctx, message_id, utcnow()):
        raise APIError(
            409, "not_cancellable", f"The message is {message.status}; only scheduled or queued ones can be cancelled."
        )
    event = message_event(
        EventType.message_cancelled,
        ctx.tenant_id,
        message.user_pk,
        id=message.id,
        message_id=message.message_id,
        status=MessageStatus.cancelled,
        transport=message.transport,
        attempts=message.attempts,
        error=None,
    )
    await emit(session, [event])
    await session.commit()
    await session.refresh(message)
    names = await repository.user_ids(session, ctx, {message.user_pk})
    return message_out(message, names[message.user_pk])


async def raw_mime(session: AsyncSession, ctx: TenantContext, message_id: str) -> bytes:
    message = await _get(session, ctx, message_id)
    if message.raw_mime is None:
        reason = "its content was erased" if message.content_erased_at else "only the capture transport keeps it"
        raise NotFound(f"the MIME source of message {message_id!r} ({reason})", code="raw_not_available")
    return message.raw_mime
