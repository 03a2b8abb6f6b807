"""SQL for messages. Tenant-facing functions take the tenant context; worker functions work across tenants."""

from datetime import datetime

from sqlalchemy import Row, and_, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import selectinload

from emailmcp.mail.models import DeliveryAttempt, Message
from emailmcp.mail.schemas import PENDING_STATUSES, MessageStatus
from emailmcp.mail.signal import CHANNEL
from emailmcp.tenancy.schemas import TenantContext
from emailmcp.users.models import EndUser, Mailbox

_INSERT_MESSAGES = insert(Message.__table__)
_NOTIFY_WORKERS = text(f"NOTIFY {CHANNEL}")


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


def _due(now: datetime):
    return or_(
        and_(Message.status.in_([MessageStatus.queued, MessageStatus.scheduled]), Message.next_attempt_at <= now),
        and_(Message.status == MessageStatus.sending, Message.lease_expires_at < now),
    )


async def claim_due(session: AsyncSession, owner: str, now: datetime, lease_until: datetime, limit: int) -> list[str]:
    """Leases up to `limit` due messages to `owner` and returns their ids.

    PostgreSQL: FOR UPDATE SKIP LOCKED, so concurrent workers never pick the same row.
    SQLite: the UPDATE runs under the database's single writer lock, which serialises claims.
    """
    candidates = select(Message.id).where(_due(now)).order_by(Message.next_attempt_at).limit(limit)
    if session.bind.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    result = await session.execute(
        update(Message)
        .where(Message.id.in_(candidates), _due(now))
        .values(
            status=MessageStatus.sending,
            lease_owner=owner,
            lease_expires_at=lease_until,
            attempts=Message.attempts + 1,
            updated_at=now,
        )
        .returning(Message.id)
        .execution_options(synchronize_session=False)
    )
    return list(result.scalars())


async def load_for_delivery(
    session: AsyncSession, message_id: str, owner: str
) -> tuple[Message, Mailbox | None] | None:
    """The leased message and the sender's current mailbox, if the lease is still ours."""
    row = (
        await session.execute(
            select(Message, Mailbox)
            .outerjoin(Mailbox, Mailbox.user_pk == Message.user_pk)
            .where(Message.id == message_id, Message.lease_owner == owner, Message.status == MessageStatus.sending)
        )
    ).first()
    return (row[0], row[1]) if row else None


async def finish(session: AsyncSession, message_id: str, owner: str, values: dict, attempt: DeliveryAttempt) -> bool:
    """Records an attempt's outcome if the lease is still ours; False when another worker took over."""
    result = await session.execute(
        update(Message)
        .where(Message.id == message_id, Message.lease_owner == owner, Message.status == MessageStatus.sending)
        .values(lease_owner=None, lease_expires_at=None, **values)
        .returning(Message.id)
        .execution_options(synchronize_session=False)
    )
    if result.scalar() is None:
        return False
    session.add(attempt)
    return True


async def release(session: AsyncSession, owner: str, now: datetime) -> None:
    """Gives back every lease of a stopping worker, so others can claim them at once."""
    await session.execute(
        update(Message)
        .where(Message.lease_owner == owner, Message.status == MessageStatus.sending)
        .values(
            status=MessageStatus.queued,
            lease_owner=None,
            lease_expires_at=None,
            next_attempt_at=now,
            attempts=Message.attempts - 1,
        )
        .execution_options(synchronize_session=False)
    )


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
