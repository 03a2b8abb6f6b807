"""SQL for webhooks. Tenant-facing functions take the tenant context; dispatcher functions work across tenants."""

from datetime import datetime, timedelta

from sqlalchemy import Row, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import selectinload

from emailmcp.db import longest_due_ids
from emailmcp.tenancy.models import Tenant
from emailmcp.tenancy.schemas import TenantContext
from emailmcp.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from emailmcp.webhooks.schemas import DeliveryStatus


async def lock_tenant(session: AsyncSession, ctx: TenantContext) -> None:
    """Serialises changes to the tenant's set of webhooks (a row lock on PostgreSQL; SQLite has one writer)."""
    await session.execute(select(Tenant.id).where(Tenant.id == ctx.tenant_id).with_for_update(key_share=True))


async def count_endpoints(session: AsyncSession, ctx: TenantContext) -> int:
    return await session.scalar(
        select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.tenant_id == ctx.tenant_id)
    )


async def add_endpoint(session: AsyncSession, endpoint: WebhookEndpoint) -> None:
    session.add(endpoint)
    await session.flush()


async def list_endpoints(session: AsyncSession, ctx: TenantContext) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == ctx.tenant_id)
    return list(await session.scalars(query.order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)))


async def get_endpoint(session: AsyncSession, ctx: TenantContext, endpoint_id: str) -> WebhookEndpoint | None:
    return await session.scalar(
        select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == ctx.tenant_id, WebhookEndpoint.id == endpoint_id)
    )


async def delete_endpoint(session: AsyncSession, ctx: TenantContext, endpoint_id: str) -> None:
    await session.execute(
        delete(WebhookEndpoint).where(WebhookEndpoint.tenant_id == ctx.tenant_id, WebhookEndpoint.id == endpoint_id)
    )


async def make_pending_due(
    session: AsyncSession, ctx: TenantContext, endpoint_id: str, now: datetime, retry_until: datetime
) -> None:
    """An endpoint enabled again: its waiting deliveries are due now, with a fresh retry window."""
    await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.tenant_id == ctx.tenant_id,
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.status == DeliveryStatus.pending,
        )
        .values(next_attempt_at=now, retry_until=retry_until, updated_at=now)
        .execution_options(synchronize_session=False)
    )


def _with_details(query):
    return query.options(selectinload(WebhookDelivery.event), selectinload(WebhookDelivery.attempt_log))


async def list_deliveries(
    session: AsyncSession,
    ctx: TenantContext,
    endpoint_id: str,
    statuses: list[str] | None,
    before_id: str | None,
    limit: int,
) -> list[WebhookDelivery]:
    """Newest first (delivery ids sort by creation time)."""
    query = select(WebhookDelivery).where(
        WebhookDelivery.tenant_id == ctx.tenant_id, WebhookDelivery.endpoint_id == endpoint_id
    )
    if statuses:
        query = query.where(WebhookDelivery.status.in_(statuses))
    if before_id:
        query = query.where(WebhookDelivery.id < before_id)
    return list(await session.scalars(_with_details(query.order_by(WebhookDelivery.id.desc()).limit(limit))))


async def get_delivery(session: AsyncSession, ctx: TenantContext, delivery_id: str) -> WebhookDelivery | None:
    query = select(WebhookDelivery).where(WebhookDelivery.tenant_id == ctx.tenant_id, WebhookDelivery.id == delivery_id)
    return await session.scalar(_with_details(query).execution_options(populate_existing=True))


async def schedule_retry(
    session: AsyncSession, ctx: TenantContext, delivery_id: str, now: datetime, retry_until: datetime
) -> bool:
    """Makes a delivery due now with a fresh retry window, unless a dispatcher holds it; True when it did."""
    result = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.tenant_id == ctx.tenant_id,
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status != DeliveryStatus.sending,
        )
        .values(status=DeliveryStatus.pending, next_attempt_at=now, retry_until=retry_until, updated_at=now)
        .returning(WebhookDelivery.id)
        .execution_options(synchronize_session=False)
    )
    return result.scalar() is not None


# -- dispatcher side: these cross tenants on purpose, each row carries its tenant --

_deliveries = WebhookDelivery.__table__
_endpoints = WebhookEndpoint.__table__
_events = WebhookEvent.__table__
_now = bindparam("now", type_=_deliveries.c.updated_at.type)


def _due_ids():
    """Pending and due, or sending with an expired lease; of enabled endpoints only."""
    c = _deliveries.c
    enabled = c.endpoint_id.in_(select(_endpoints.c.id).where(_endpoints.c.enabled))
    kinds = [
        (c.status == DeliveryStatus.pending, c.next_attempt_at <= _now, enabled),
        (c.status == DeliveryStatus.sending, c.lease_expires_at < _now, enabled),
    ]
    return longest_due_ids(c.id, c.next_attempt_at, kinds)


_CLAIM = (
    update(_deliveries)
    .where(_deliveries.c.id.in_(_due_ids()))
    .values(
        status=DeliveryStatus.sending,
        lease_owner=bindparam("owner"),
        lease_expires_at=bindparam("lease_until"),
        attempts=_deliveries.c.attempts + 1,
        updated_at=_now,
    )
    .returning(
        _deliveries.c.id,
        _deliveries.c.endpoint_id,
        _deliveries.c.event_id,
        _deliveries.c.attempts,
        _deliveries.c.retry_until,
        _deliveries.c.created_at,
        _deliveries.c.next_attempt_at,
    )
)
_EVENTS = select(_events).where(_events.c.id.in_(bindparam("ids", expanding=True)))
_ENDPOINTS = select(
    _endpoints.c.id,
    _endpoints.c.tenant_id,
    _endpoints.c.url,
    _endpoints.c.secret,
    _endpoints.c.previous_secret,
    _endpoints.c.previous_secret_expires_at,
).where(_endpoints.c.id.in_(bindparam("ids", expanding=True)))
_FINISH = update(_deliveries).where(
    _deliveries.c.id == bindparam("delivery_id"),
    _deliveries.c.lease_owner == bindparam("owner"),
    _deliveries.c.status == DeliveryStatus.sending,
)
_RELEASE = (
    update(_deliveries)
    .where(_deliveries.c.lease_owner == bindparam("owner"), _deliveries.c.status == DeliveryStatus.sending)
    .values(status=DeliveryStatus.pending, lease_owner=None, lease_expires_at=None, next_attempt_at=_now)
)


async def claim_due(conn: AsyncConnection, owner: str, now: datetime, lease_until: datetime, limit: int) -> list[Row]:
    result = await conn.execute(_CLAIM, {"now": now, "owner": owner, "lease_until": lease_until, "limit": limit})
    return sorted(result.all(), key=lambda row: (row.next_attempt_at, row.id))


async def events(conn: AsyncConnection, ids: set[str]) -> dict[str, Row]:
    return {row.id: row for row in await conn.execute(_EVENTS, {"ids": list(ids)})} if ids else {}


async def endpoints(conn: AsyncConnection, ids: set[str]) -> dict[str, Row]:
    return {row.id: row for row in await conn.execute(_ENDPOINTS, {"ids": list(ids)})} if ids else {}


async def finish(conn: AsyncConnection, owner: str, outcomes: list[tuple[str, dict]], attempts: list[dict]) -> bool:
    """Records outcomes, (delivery id, new column values, the same columns for all), and their attempts.

    True when every lease was still ours. False when any was not: the caller then rolls back and records the
    outcomes one by one, to find out which."""
    params = [
        values | {"delivery_id": delivery_id, "owner": owner, "lease_owner": None, "lease_expires_at": None}
        for delivery_id, values in outcomes
    ]
    if (await conn.execute(_FINISH, params)).rowcount != len(params):
        return False
    await conn.execute(insert(WebhookAttempt.__table__), attempts)
    return True


async def endpoint_succeeded(conn: AsyncConnection, endpoint_id: str) -> None:
    await conn.execute(
        update(_endpoints)
        .where(_endpoints.c.id == endpoint_id, _endpoints.c.failing_since.is_not(None))
        .values(failing_since=None, last_failure_at=None)
    )


async def endpoint_failed(conn: AsyncConnection, endpoint_id: str, now: datetime, streak_gap: timedelta) -> datetime:
    """Notes a failure; returns since when the endpoint has been failing without a success. A failure more than
    `streak_gap` after the one before starts a new streak: the endpoint was not seen failing in between."""
    c = _endpoints.c
    fresh = or_(c.failing_since.is_(None), c.last_failure_at.is_(None), c.last_failure_at < now - streak_gap)
    result = await conn.execute(
        update(_endpoints)
        .where(c.id == endpoint_id)
        .values(failing_since=case((fresh, now), else_=c.failing_since), last_failure_at=now)
        .returning(c.failing_since)
    )
    return result.scalar_one()


async def disable_endpoint(conn: AsyncConnection, endpoint_id: str, reason: str, now: datetime) -> bool:
    result = await conn.execute(
        update(_endpoints)
        .where(_endpoints.c.id == endpoint_id, _endpoints.c.enabled)
        .values(enabled=False, disabled_reason=reason, updated_at=now)
        .returning(_endpoints.c.tenant_id)
    )
    return result.scalar() is not None


async def release(conn: AsyncConnection, owner: str, now: datetime) -> None:
    """Gives back every lease a stopping dispatcher still holds (attempts that did not finish in time), so others
    can attempt them again at once."""
    await conn.execute(_RELEASE, {"owner": owner, "now": now})


async def forget_events(conn: AsyncConnection, before: datetime) -> None:
    """Deletes events (their deliveries and attempts with them) older than the retention period."""
    await conn.execute(delete(_events).where(_events.c.created_at < before))


async def backlog(session: AsyncSession) -> tuple[dict[str, int], int]:
    """Unfinished deliveries by status, and how many webhooks are disabled."""
    rows = await session.execute(
        select(WebhookDelivery.status, func.count())
        .where(WebhookDelivery.status.in_([DeliveryStatus.pending, DeliveryStatus.sending]))
        .group_by(WebhookDelivery.status)
    )
    disabled = await session.scalar(select(func.count()).where(WebhookEndpoint.enabled.is_(False)))
    return dict(rows.tuples().all()), disabled or 0
