"""Accepting sends: validation beyond the schema, outbound policy, idempotency, the outbox row.

Every entry point (REST, LLM actions, MCP, dashboard) enqueues through `enqueue`, so they share
one set of rules. Nothing is written when a rule refuses.
"""

import base64
import binascii
import hashlib
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from emailmcp.db import utcnow
from emailmcp.errors import APIError, InvalidField, NotFound
from emailmcp.mail import repository
from emailmcp.mail.mime import new_message_id
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
    StatusFilter,
)
from emailmcp.settings import Settings
from emailmcp.tenancy import repository as tenancy_repository
from emailmcp.tenancy.schemas import TenantContext
from emailmcp.users import service as users
from emailmcp.users.models import EndUser, Mailbox
from emailmcp.users.schemas import MailboxStatus

MAX_SCHEDULE_AHEAD = timedelta(days=30)
MAX_PAGE = 200


@dataclass(frozen=True)
class Enqueued:
    message: MessageOut
    replayed: bool


def new_id() -> str:
    """Time-ordered id, so sorting by id is sorting by creation."""
    return f"msg_{time.time_ns() // 1_000_000:012x}{os.urandom(6).hex()}"


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


async def _check_daily_cap(session: AsyncSession, ctx: TenantContext, user: EndUser, cap: int, now: datetime) -> None:
    count, oldest = await repository.count_since(session, ctx, user.id, now - timedelta(days=1))
    if count >= cap:
        reset = (oldest or now) + timedelta(days=1)
        retry_after = max(1, int((reset - now).total_seconds()))
        raise APIError(
            429,
            "daily_send_cap",
            f"User {user.user_id!r} reached the cap of {cap} messages in 24 hours;"
            f" more can be sent from {reset.isoformat()}.",
            [{"field": "user_id", "message": f"resets at {reset.isoformat()}"}],
            headers={"Retry-After": str(retry_after)},
        )


def _route(mailbox: Mailbox | None, user: EndUser, settings: Settings) -> tuple[str, bool, str]:
    """The transport, whether it is the user's own mailbox, and the From address; refuses rather than falling back."""
    if mailbox is not None:
        if mailbox.status == MailboxStatus.needs_reauth:
            raise APIError(409, "mailbox_needs_reauth", f"User {user.user_id!r} must reconnect their mailbox.")
        if mailbox.status != MailboxStatus.connected:
            raise APIError(409, "mailbox_not_connected", f"User {user.user_id!r} has no connected mailbox.")
        return mailbox.type, True, mailbox.from_address
    if settings.default_transport == "none":
        raise APIError(409, "mailbox_not_connected", f"User {user.user_id!r} has no connected mailbox.")
    from_address = settings.smtp_from if settings.default_transport == "smtp" else user.email or settings.smtp_from
    return settings.default_transport, False, from_address


async def enqueue(
    session: AsyncSession,
    ctx: TenantContext,
    settings: Settings,
    user_id: str,
    content: MessageContent,
    entry_point: EntryPoint,
    idempotency_key: str | None = None,
) -> Enqueued:
    """Validates, applies policy and commits one outbox row; replays the original for a repeated key."""
    fingerprint = request_fingerprint(user_id, content) if idempotency_key else None
    if idempotency_key:
        existing = await repository.get_by_idempotency_key(session, ctx, idempotency_key)
        if existing is not None:
            return await _replay(session, ctx, existing, fingerprint)
    now = utcnow()
    if content.send_at is not None:
        if content.send_at <= now:
            raise InvalidField("send_at", "must be in the future")
        if content.send_at > now + MAX_SCHEDULE_AHEAD:
            raise InvalidField("send_at", "must be at most 30 days ahead")
    attachments, size = _decode_attachments(content, settings)
    tenant_settings = await tenancy_repository.get_settings(session, ctx.tenant_id)
    _check_recipients(
        content,
        tenant_settings.recipient_domain_allowlist,
        tenant_settings.recipient_domain_denylist,
        settings.max_recipients,
    )
    user = await users.ensure_user(session, ctx, user_id)
    await _check_daily_cap(session, ctx, user, settings.daily_send_cap, now)
    transport, via_mailbox, from_address = _route(user.mailbox, user, settings)
    message = Message(
        id=new_id(),
        tenant_id=ctx.tenant_id,
        user_pk=user.id,
        status=MessageStatus.scheduled if content.send_at else MessageStatus.queued,
        transport=transport,
        via_mailbox=via_mailbox,
        message_id=new_message_id(from_address.rsplit("@", 1)[-1]),
        from_address=from_address,
        from_name=user.display_name,
        to=[str(a) for a in content.to],
        cc=[str(a) for a in content.cc],
        bcc=[str(a) for a in content.bcc],
        reply_to=[str(a) for a in content.reply_to],
        subject=content.subject,
        body_type=content.body_type,
        body=content.body,
        text_body=content.text_body,
        in_reply_to=content.in_reply_to,
        references=list(content.references),
        attachments=attachments or None,
        size_bytes=size,
        send_at=content.send_at,
        next_attempt_at=content.send_at or now,
        attempts=0,
        api_key_id=ctx.key_id,
        entry_point=entry_point,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        created_at=now,
        updated_at=now,
    )
    try:
        await repository.add(session, message)
        await session.commit()
    except IntegrityError:
        # A concurrent request with the same idempotency key won the race.
        await session.rollback()
        existing = await repository.get_by_idempotency_key(session, ctx, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return await _replay(session, ctx, existing, fingerprint)
    return Enqueued(message_out(message, user.user_id), replayed=False)


async def _replay(session: AsyncSession, ctx: TenantContext, existing: Message, fingerprint: str | None) -> Enqueued:
    if existing.request_hash != fingerprint:
        raise APIError(
            409,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request.",
            [{"field": "Idempotency-Key", "message": "reused with a different body"}],
        )
    names = await repository.user_ids(session, ctx, {existing.user_pk})
    return Enqueued(message_out(existing, names[existing.user_pk]), replayed=True)


def message_out(message: Message, user_id: str) -> MessageOut:
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
