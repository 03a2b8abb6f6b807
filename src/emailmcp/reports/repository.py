"""SQL for reports: counts over the tenant's messages within given instants. Every function takes the tenant
context and filters by it; none loads messages, only aggregates (and the few rows of recent_emails)."""

from datetime import datetime

from sqlalchemy import Row, column, func, select, true, union_all, values
from sqlalchemy.ext.asyncio import AsyncSession

from emailmcp.db import UTCDateTime
from emailmcp.mail.models import Message
from emailmcp.mail.schemas import PENDING_STATUSES, MessageStatus
from emailmcp.tenancy.schemas import TenantContext
from emailmcp.users.models import EndUser

# The SQL function that turns a JSON array column into rows of text, per dialect.
_JSON_ELEMENTS = {"sqlite": func.json_each, "postgresql": func.json_array_elements_text}


def _scope(ctx: TenantContext, user_pk: int | None, start: datetime | None = None, end: datetime | None = None):
    conditions = [Message.tenant_id == ctx.tenant_id]
    if user_pk is not None:
        conditions.append(Message.user_pk == user_pk)
    if start is not None:
        conditions += [Message.created_at >= start, Message.created_at < end]
    return conditions


async def created_range(
    session: AsyncSession, ctx: TenantContext, user_pk: int | None
) -> tuple[datetime | None, datetime | None]:
    """The first and last creation time of the scope's messages. Two subqueries, so each is one index seek."""
    first = select(func.min(Message.created_at)).where(*_scope(ctx, user_pk)).scalar_subquery()
    last = select(func.max(Message.created_at)).where(*_scope(ctx, user_pk)).scalar_subquery()
    row = (await session.execute(select(first, last))).one()
    return row[0], row[1]


async def daily_counts(
    session: AsyncSession, ctx: TenantContext, user_pk: int | None, buckets: list[tuple[datetime, datetime]]
) -> dict[datetime, Row]:
    """Counts by status for each [lo, hi) bucket, keyed by lo; buckets without messages are absent.

    The buckets are a VALUES list joined on the created_at range: one index range scan per bucket, each
    message counted once, and no time-zone arithmetic in SQL.
    """
    bounds = (
        values(column("lo", UTCDateTime()), column("hi", UTCDateTime()), name="buckets").data(buckets).cte("buckets")
    )
    status = Message.status
    query = (
        select(
            bounds.c.lo,
            func.count().label("total"),
            func.count().filter(status == MessageStatus.sent).label("successful"),
            func.count().filter(status == MessageStatus.failed).label("failed"),
            func.count().filter(status.in_(PENDING_STATUSES)).label("pending"),
            func.count().filter(status == MessageStatus.cancelled).label("cancelled"),
        )
        .select_from(bounds)
        .join(Message, true())
        .where(*_scope(ctx, user_pk), Message.created_at >= bounds.c.lo, Message.created_at < bounds.c.hi)
        .group_by(bounds.c.lo)
    )
    return {row.lo: row for row in await session.execute(query)}


async def transport_counts(
    session: AsyncSession, ctx: TenantContext, user_pk: int, start: datetime, end: datetime
) -> dict[str, int]:
    rows = await session.execute(
        select(Message.transport, func.count())
        .where(*_scope(ctx, user_pk, start, end))
        .group_by(Message.transport)
        .order_by(Message.transport)
    )
    return dict(rows.all())


async def top_recipients(
    session: AsyncSession, ctx: TenantContext, user_pk: int, start: datetime, end: datetime, limit: int
) -> list[Row]:
    """The most frequent addresses over to, cc and bcc, lower-cased: (email, count), ties by address."""
    elements = _JSON_ELEMENTS[session.bind.dialect.name]
    parts = []
    for field in (Message.to, Message.cc, Message.bcc):
        each = elements(field).table_valued("value")
        parts.append(
            select(func.lower(each.c.value).label("email"))
            .select_from(Message)
            .join(each, true())
            .where(*_scope(ctx, user_pk, start, end))
        )
    addresses = union_all(*parts).subquery()
    count = func.count().label("count")
    return list(
        await session.execute(
            select(addresses.c.email, count)
            .group_by(addresses.c.email)
            .order_by(count.desc(), addresses.c.email)
            .limit(limit)
        )
    )


async def recent(
    session: AsyncSession, ctx: TenantContext, user_pk: int, start: datetime, end: datetime, limit: int
) -> list[Row]:
    return list(
        await session.execute(
            select(
                Message.id,
                Message.to,
                Message.subject,
                Message.status,
                Message.transport,
                Message.created_at,
                Message.sent_at,
                Message.error,
            )
            .where(*_scope(ctx, user_pk, start, end))
            .order_by(Message.created_at.desc(), Message.id.desc())
            .limit(limit)
        )
    )


async def top_senders(
    session: AsyncSession, ctx: TenantContext, start: datetime, end: datetime, limit: int
) -> tuple[list[Row], int]:
    """The users with the most messages in the window (user_id, total, failed), ties by user_id, and how many
    users sent at all: a window count over the same grouping, so one pass over the window's messages."""
    per_user = (
        select(
            Message.user_pk,
            func.count().label("total"),
            func.count().filter(Message.status == MessageStatus.failed).label("failed"),
            func.count().over().label("active"),
        )
        .where(*_scope(ctx, None, start, end))
        .group_by(Message.user_pk)
        .subquery()
    )
    rows = list(
        await session.execute(
            select(EndUser.user_id, per_user.c.total, per_user.c.failed, per_user.c.active)
            .join(EndUser, EndUser.id == per_user.c.user_pk)
            .order_by(per_user.c.total.desc(), EndUser.user_id)
            .limit(limit)
        )
    )
    return rows, rows[0].active if rows else 0


async def count_users(session: AsyncSession, ctx: TenantContext) -> int:
    return await session.scalar(select(func.count()).select_from(EndUser).where(EndUser.tenant_id == ctx.tenant_id))
