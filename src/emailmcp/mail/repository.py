"""SQL for messages. Tenant-facing functions take the tenant context; worker functions work across tenants."""

from datetime import datetime

from sqlalchemy import Row, bindparam, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import selectinload

from emailmcp.db import longest_due_ids
from emailmcp.mail.models import DeliveryAttempt, Message
from emailmcp.mail.schemas import PENDING_STATUSES, MessageStatus
from emailmcp.tenancy.schemas import TenantContext
from emailmcp.users.models import EndUser, Mailbox
from emailmcp.wakeup import OUTBOX_CHANNEL

_INSERT_MESSAGES = insert(Message.__table__)
_NOTIFY_WORKERS = text(f"NOTIFY {OUTBOX_CHANNEL}")


async def insert_many(connection: AsyncConnection, rows: list[dict]) -> None:
    """Inserts outbox rows in one statement; on PostgreSQL also NOTIFYs listening workers, delivered at commit."""
    await connection.execute(_INSERT_MESSAGES, rows)
    if connection.dialect.name == "postgresql":
        await connection.execute(_NOTIFY_WORKERS)


async def get(
    session: AsyncSession, ctx: TenantContext, message_id: str, with_attempts: bool = False
) -> Message | None:
    query = select(Message).where(Message.tenant_id == ctx.tenant_id, Message.id == message_id)
    if with_attempts:
        query = query.options(selectinload(Message.attempt_log))
    return await session.scalar(query)


async def find_by_idempotency_keys(connection: AsyncConnection, ctx: TenantContext, keys: list[str]) -> dict[str, Row]:
    """The tenant's messages stored under these keys, as rows of the messages table."""
    rows = await connection.execute(
        select(Message.__table__).where(Message.tenant_id == ctx.tenant_id, Message.idempotency_key.in_(keys))
    )
    return {row.idempotency_key: row for row in rows}


async def user_ids(session: AsyncSession | AsyncConnection, ctx: TenantContext, user_pks: set[int]) -> dict[int, str]:
    rows = await session.execute(
        select(EndUser.id, EndUser.user_id).where(EndUser.tenant_id == ctx.tenant_id, EndUser.id.in_(user_pks))
    )
    return dict(rows.all())


async def list_messages(
    session: AsyncSession,
    ctx: TenantContext,
    user_pk: int | None,
    statuses: list[str] | None,
    before_id: str | None,
    limit: int,
) -> list[Message]:
    """Newest first (message ids sort by creation time)."""
    query = select(Message).where(Message.tenant_id == ctx.tenant_id)
    if user_pk is not None:
        query = query.where(Message.user_pk == user_pk)
    if statuses:
        query = query.where(Message.status.in_(statuses))
    if before_id:
        query = query.where(Message.id < before_id)
    return list(await session.scalars(query.order_by(Message.id.desc()).limit(limit)))


async def cancel(session: AsyncSession, ctx: TenantContext, message_id: str, now: datetime) -> bool:
    """Cancels only while scheduled or queued (never once a worker holds it); True when it did."""
    result = await session.execute(
        update(Message)
        .where(
            Message.tenant_id == ctx.tenant_id,
            Message.id == message_id,
            Message.status.in_([MessageStatus.scheduled, MessageStatus.queued]),
        )
        .values(status=MessageStatus.cancelled, updated_at=now)
        .returning(Message.id)
    )
    return result.scalar() is not None


# -- worker side: these cross tenants on purpose, each row carries its tenant --
# Built once: the worker runs them all the time, and building a statement costs more than running it here.

_messages = Message.__table__
_attempts = DeliveryAttempt.__table__
_mailboxes = Mailbox.__table__
_now = bindparam("now", type_=_messages.c.updated_at.type)


def _due_ids():
    """Queued or scheduled and due, or sending with an expired lease."""
    c = _messages.c
    kinds = [
        (c.status == MessageStatus.queued, c.next_attempt_at <= _now),
        (c.status == MessageStatus.scheduled, c.next_attempt_at <= _now),
        (c.status == MessageStatus.sending, c.lease_expires_at < _now),
    ]
    return longest_due_ids(c.id, c.next_attempt_at, kinds)


# What delivery needs of a message.
_DELIVERY_COLUMNS = [
    _messages.c[name]
    for name in (
        "id", "tenant_id", "user_pk", "transport", "via_mailbox", "message_id", "from_address", "from_name", "to",
        "cc", "bcc", "reply_to", "subject", "body_type", "body", "text_body", "in_reply_to", "references",
        "attachments", "next_attempt_at", "attempts", "created_at",
    )
]  # fmt: skip
_CLAIM = (
    update(_messages)
    .where(_messages.c.id.in_(_due_ids()))
    .values(
        status=MessageStatus.sending,
        lease_owner=bindparam("owner"),
        lease_expires_at=bindparam("lease_until"),
        attempts=_messages.c.attempts + 1,
        updated_at=_now,
    )
    .returning(*_DELIVERY_COLUMNS)
)
_MAILBOXES = select(_mailboxes).where(_mailboxes.c.user_pk.in_(bindparam("user_pks", expanding=True)))
# Any number of outcomes in one statement (executemany), each only if its lease is still ours.
_FINISH = update(_messages).where(
    _messages.c.id == bindparam("lease_id"),
    _messages.c.lease_owner == bindparam("lease_holder"),
    _messages.c.status == MessageStatus.sending,
)
_ADD_ATTEMPTS = insert(_attempts)
_RELEASE = (
    update(_messages)
    .where(_messages.c.lease_owner == bindparam("owner"), _messages.c.status == MessageStatus.sending)
    .values(
        status=MessageStatus.queued,
        lease_owner=None,
        lease_expires_at=None,
        next_attempt_at=_now,
        attempts=_messages.c.attempts - 1,
    )
)
_RELEASE_SOME = _RELEASE.where(_messages.c.id.in_(bindparam("ids", expanding=True)))


async def claim_due(conn: AsyncConnection, owner: str, now: datetime, lease_until: datetime, limit: int) -> list[Row]:
    """Leases up to `limit` due messages to `owner` and returns what delivery needs of them, the longest due first.

    PostgreSQL: FOR UPDATE SKIP LOCKED, so concurrent workers never pick the same row.
    SQLite: the UPDATE runs under the database's single writer lock, which serialises claims.
    """
    result = await conn.execute(_CLAIM, {"now": now, "owner": owner, "lease_until": lease_until, "limit": limit})
    return sorted(result.all(), key=lambda row: (row.next_attempt_at, row.id))


async def mailboxes(conn: AsyncConnection, user_pks: set[int]) -> dict[int, Row]:
    """The current mailboxes of these users, by user; users without one are missing."""
    if not user_pks:
        return {}
    return {row.user_pk: row for row in await conn.execute(_MAILBOXES, {"user_pks": list(user_pks)})}


_THREADS = select(_messages.c.user_pk, _messages.c.message_id, _messages.c.provider_thread_id).where(
    _messages.c.provider_thread_id.is_not(None),
    _messages.c.user_pk.in_(bindparam("user_pks", expanding=True)),
    _messages.c.message_id.in_(bindparam("message_ids", expanding=True)),
)


async def provider_threads(conn: AsyncConnection, wanted: set[tuple[int, str]]) -> dict[tuple[int, str], str]:
    """The provider's thread of each (user, Message-ID) that the user sent and the provider put in a thread."""
    if not wanted:
        return {}
    rows = await conn.execute(
        _THREADS, {"user_pks": list({pk for pk, _ in wanted}), "message_ids": list({mid for _, mid in wanted})}
    )
    return {(row.user_pk, row.message_id): row.provider_thread_id for row in rows}


async def finish(conn: AsyncConnection, owner: str, outcomes: list[tuple[str, dict]], attempts: list[dict]) -> bool:
    """Records outcomes, (message id, new column values), and their delivery_attempts rows.

    True when every lease was still ours. False when any was not (another worker took that message over): then
    the caller rolls back and records the outcomes one by one, to find out which.
    """
    by_columns: dict[tuple[str, ...], list[dict]] = {}  # executemany needs the same columns in every row
    for message_id, values in outcomes:
        params = values | {"lease_id": message_id, "lease_holder": owner, "lease_owner": None, "lease_expires_at": None}
        by_columns.setdefault(tuple(values), []).append(params)
    updated = 0
    for params in by_columns.values():
        updated += (await conn.execute(_FINISH, params)).rowcount
    if updated != len(outcomes):
        return False
    await conn.execute(_ADD_ATTEMPTS, attempts)
    return True


async def release(conn: AsyncConnection, owner: str, now: datetime, ids: list[str] | None = None) -> None:
    """Gives back leases (all of a stopping worker's, or these), so others can claim them at once."""
    if ids is None:
        await conn.execute(_RELEASE, {"owner": owner, "now": now})
    else:
        await conn.execute(_RELEASE_SOME, {"owner": owner, "now": now, "ids": ids})


async def count_by_status(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(select(Message.status, func.count()).group_by(Message.status))
    return dict(rows.all())


async def oldest_due(session: AsyncSession, now: datetime) -> datetime | None:
    return await session.scalar(
        select(func.min(Message.next_attempt_at)).where(
            Message.status.in_([s.value for s in PENDING_STATUSES if s != MessageStatus.sending]),
            Message.next_attempt_at <= now,
        )
    )


async def forget_idempotency_keys(session: AsyncSession, before: datetime) -> None:
    await session.execute(
        update(Message)
        .where(Message.idempotency_key.is_not(None), Message.created_at < before)
        .values(idempotency_key=None, request_hash=None)
        .execution_options(synchronize_session=False)
    )


async def erase_old_content(session: AsyncSession, before: datetime, now: datetime) -> None:
    """Drops bodies, attachments and captured MIME of finished messages; metadata stays for analytics."""
    await session.execute(
        update(Message)
        .where(
            Message.status.in_([MessageStatus.sent, MessageStatus.failed, MessageStatus.cancelled]),
            Message.updated_at < before,
            Message.content_erased_at.is_(None),
        )
        .values(body=None, text_body=None, attachments=None, raw_mime=None, content_erased_at=now)
        .execution_options(synchronize_session=False)
    )
