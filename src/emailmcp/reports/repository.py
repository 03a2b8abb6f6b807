"""SQL for reports: counts over the tenant's messages within given instants. Every function takes the tenant
context and filters by it; none loads messages, only aggregates (and the few rows of recent_emails).

The statements are built once with bound parameters and run on the session's Core connection: for these
small queries, building and compiling a statement, and the ORM around it, cost more than running it.
"""

from datetime import datetime
from functools import lru_cache

from sqlalchemy import Row, bindparam, column, func, select, text, true, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from emailmcp.db import UTCDateTime
from emailmcp.mail.models import Message
from emailmcp.mail.schemas import PENDING_STATUSES, MessageStatus
from emailmcp.tenancy.schemas import TenantContext
from emailmcp.users.models import EndUser

_TENANT = Message.tenant_id == bindparam("tenant_id")
_USER = Message.user_pk == bindparam("user_pk")
_WINDOW = (Message.created_at >= bindparam("start"), Message.created_at < bindparam("end"))


def _created_range(*scope):
    """First and last creation time as two subqueries, so each is one index seek."""
    first = select(func.min(Message.created_at)).where(*scope).scalar_subquery()
    last = select(func.max(Message.created_at)).where(*scope).scalar_subquery()
    return select(first.label("first"), last.label("last"))


_CREATED_RANGE = {True: _created_range(_TENANT, _USER), False: _created_range(_TENANT)}

_TRANSPORTS = (
    select(Message.transport, func.count())
    .where(_TENANT, _USER, *_WINDOW)
    .group_by(Message.transport)
    .order_by(Message.transport)
)

_RECENT = (
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
    .where(_TENANT, _USER, *_WINDOW)
    .order_by(Message.created_at.desc(), Message.id.desc())
    .limit(bindparam("limit"))
)


def _top_recipients(elements):
    """Addresses over to, cc and bcc, lower-cased, counted; `elements` turns a JSON array into rows of text."""
    parts = []
    for field in (Message.to, Message.cc, Message.bcc):
        each = elements(field).table_valued("value")
        parts.append(
            select(func.lower(each.c.value).label("email"))
            .select_from(Message)
            .join(each, true())
            .where(_TENANT, _USER, *_WINDOW)
        )
    addresses = union_all(*parts).subquery()
    count = func.count().label("count")
    return (
        select(addresses.c.email, count)
        .group_by(addresses.c.email)
        .order_by(count.desc(), addresses.c.email)
        .limit(bindparam("limit"))
    )


_TOP_RECIPIENTS = {
    "sqlite": _top_recipients(func.json_each),
    "postgresql": _top_recipients(func.json_array_elements_text),
}


def _top_senders():
    """Per user of the tenant, their messages in the window and the failed ones, as range counts on
    (tenant_id, user_pk, created_at, status); then the busiest, and a window count of the users who sent."""

    def count(*conditions):
        return (
            select(func.count())
            .where(_TENANT, Message.user_pk == EndUser.id, *_WINDOW, *conditions)
            .correlate(EndUser)
            .scalar_subquery()
        )

    per_user = (
        select(EndUser.user_id, count().label("total"), count(Message.status == MessageStatus.failed).label("failed"))
        .where(EndUser.tenant_id == bindparam("tenant_id"))
        .subquery()
    )
    return (
        select(per_user, func.count().over().label("active"))
        .where(per_user.c.total > 0)
        .order_by(per_user.c.total.desc(), per_user.c.user_id)
        .limit(bindparam("limit"))
    )


_TOP_SENDERS = _top_senders()
_COUNT_USERS = select(func.count()).select_from(EndUser).where(EndUser.tenant_id == bindparam("tenant_id"))


@lru_cache(maxsize=64)
def _daily_counts(buckets: int, per_user: bool):
    """For each of `buckets` [lo_n, hi_n) pairs (a VALUES list), the messages created within it by status group,
    each a range count on an index that ends in (status, created_at) or (created_at, status): no grouping or
    sorting of messages, no time-zone arithmetic in SQL. Built once per shape."""
    # VALUES names its columns column1, column2 on both SQLite and PostgreSQL. The placeholders are generated
    # here, never from input. (SQLAlchemy's values() construct cannot be cached, hence the text.)
    rows = ", ".join(f"(:lo_{n}, :hi_{n})" for n in range(buckets))
    bounds = (
        text(f"VALUES {rows}")
        .bindparams(*(bindparam(f"{edge}_{n}", type_=UTCDateTime()) for n in range(buckets) for edge in ("lo", "hi")))
        .columns(column("column1", UTCDateTime()), column("column2", UTCDateTime()))
        .cte("buckets")
    )
    lo, hi = bounds.c.column1, bounds.c.column2
    scope = (_TENANT, _USER) if per_user else (_TENANT,)

    def count(*statuses: MessageStatus):
        return (
            select(func.count())
            .where(*scope, Message.status.in_(statuses), Message.created_at >= lo, Message.created_at < hi)
            .scalar_subquery()
        )

    return select(
        lo.label("lo"),
        count(MessageStatus.sent).label("successful"),
        count(MessageStatus.failed).label("failed"),
        count(*PENDING_STATUSES).label("pending"),
        count(MessageStatus.cancelled).label("cancelled"),
    ).order_by(lo)


async def _execute(session: AsyncSession, statement, params: dict):
    return await (await session.connection()).execute(statement, params)


async def created_range(
    session: AsyncSession, ctx: TenantContext, user_pk: int | None
) -> tuple[datetime | None, datetime | None]:
    """The first and last creation time of the tenant's (or the user's) messages."""
    params = {"tenant_id": ctx.tenant_id, "user_pk": user_pk}
    row = (await _execute(session, _CREATED_RANGE[user_pk is not None], params)).one()
    return row.first, row.last


async def daily_counts(
    session: AsyncSession, ctx: TenantContext, user_pk: int | None, buckets: list[tuple[datetime, datetime]]
) -> list[Row]:
    """Counts for each [lo, hi) bucket, in order: successful, failed, pending, cancelled (every status is in
    one of these, so they add up to the total)."""
    params = {"tenant_id": ctx.tenant_id, "user_pk": user_pk}
    for n, (lo, hi) in enumerate(buckets):
        params[f"lo_{n}"], params[f"hi_{n}"] = lo, hi
    return list(await _execute(session, _daily_counts(len(buckets), user_pk is not None), params))


async def transport_counts(
    session: AsyncSession, ctx: TenantContext, user_pk: int, start: datetime, end: datetime
) -> dict[str, int]:
    params = {"tenant_id": ctx.tenant_id, "user_pk": user_pk, "start": start, "end": end}
    return dict((await _execute(session, _TRANSPORTS, params)).all())


async def top_recipients(
    session: AsyncSession, ctx: TenantContext, user_pk: int, start: datetime, end: datetime, limit: int
) -> list[Row]:
    """The most frequent addresses over to, cc and bcc, lower-cased: (email, count), ties by address."""
    statement = _TOP_RECIPIENTS[session.bind.dialect.name]
    params = {"tenant_id": ctx.tenant_id, "user_pk": user_pk, "start": start, "end": end, "limit": limit}
    return list(await _execute(session, statement, params))


async def recent(
    session: AsyncSession, ctx: TenantContext, user_pk: int, start: datetime, end: datetime, limit: int
) -> list[Row]:
    """The user's newest messages in the window, newest first."""
    params = {"tenant_id": ctx.tenant_id, "user_pk": user_pk, "start": start, "end": end, "limit": limit}
    return list(await _execute(session, _RECENT, params))


async def top_senders(
    session: AsyncSession, ctx: TenantContext, start: datetime, end: datetime, limit: int
) -> tuple[list[Row], int]:
    """The users with the most messages in the window (user_id, total, failed), ties by user_id, and how many
    users sent at all."""
    params = {"tenant_id": ctx.tenant_id, "start": start, "end": end, "limit": limit}
    rows = list(await _execute(session, _TOP_SENDERS, params))
    return rows, rows[0].active if rows else 0


async def count_users(session: AsyncSession, ctx: TenantContext) -> int:
    return (await _execute(session, _COUNT_USERS, {"tenant_id": ctx.tenant_id})).scalar_one()
