"""Webhooks of a tenant: managing them, their signing secrets, and their deliveries."""

from datetime import datetime, timedelta
from urllib.parse import urlsplit

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from emailmcp.db import time_ordered_id, utcnow
from emailmcp.errors import APIError, InvalidField, NotFound
from emailmcp.network import resolve_public_host
from emailmcp.settings import Settings
from emailmcp.tenancy.schemas import TenantContext
from emailmcp.vault import SecretContext, Vault
from emailmcp.webhooks import repository, signing
from emailmcp.webhooks.events import notify_dispatchers
from emailmcp.webhooks.models import WebhookDelivery, WebhookEndpoint
from emailmcp.webhooks.schemas import (
    AttemptOut,
    DeliveryOut,
    DeliveryPage,
    DeliveryStatus,
    WebhookIn,
    WebhookList,
    WebhookOut,
    WebhookUpdate,
    WebhookWithSecret,
)

log = structlog.get_logger(__name__)

MAX_WEBHOOKS = 50
MAX_PAGE = 100
# After a rotation, how long deliveries are also signed with the previous secret.
ROTATION_OVERLAP = timedelta(hours=24)


async def check_url(url: str, settings: Settings) -> str | None:
    """Checks a target URL a tenant may use: https unless the operator allows http, and a public host unless the
    operator allows private ones. Checked when saved and again before every delivery (DNS can change).

    Returns the public address the host resolved to, which the delivery connects to (so that a second lookup cannot
    lead it elsewhere), or None when private hosts are allowed and the name is used as it is."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidField("url", "not a valid URL") from None
    allowed = ("https", "http") if settings.webhook_allow_http else ("https",)
    if parts.scheme not in allowed:
        raise InvalidField(
            "url",
            "must be an https:// URL" + ("" if settings.webhook_allow_http else " (this server refuses http://)"),
            code="url_not_allowed",
        )
    if not parts.hostname:
        raise InvalidField("url", "has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidField("url", "must not carry credentials: receivers verify the webhook-signature header instead")
    if parts.fragment:
        raise InvalidField("url", "must not have a #fragment")
    if settings.webhook_allow_private_hosts:
        return None
    try:
        return await resolve_public_host(parts.hostname, port)
    except ValueError as exc:
        message = f"{exc}; this server sends webhooks to public hosts only"
        raise InvalidField("url", message, "host_not_allowed") from None


def _context(endpoint_id: str, tenant_id: int, column: str) -> SecretContext:
    return SecretContext(WebhookEndpoint.__tablename__, column, tenant_id, endpoint_id)


def secrets_in_use(vault: Vault, endpoint, now: datetime) -> list[str]:
    """The secrets a delivery is signed with: the current one, and the previous one during a rotation's overlap."""
    in_use = [vault.decrypt(endpoint.secret, _context(endpoint.id, endpoint.tenant_id, "secret"))]
    if endpoint.previous_secret and endpoint.previous_secret_expires_at and endpoint.previous_secret_expires_at > now:
        context = _context(endpoint.id, endpoint.tenant_id, "previous_secret")
        in_use.append(vault.decrypt(endpoint.previous_secret, context))
    return in_use


def webhook_out(endpoint: WebhookEndpoint, now: datetime | None = None) -> WebhookOut:
    expires = endpoint.previous_secret_expires_at
    return WebhookOut(
        id=endpoint.id,
        url=endpoint.url,
        events=endpoint.events,
        description=endpoint.description,
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        failing_since=endpoint.failing_since,
        previous_secret_expires_at=expires if expires and expires > (now or utcnow()) else None,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


def delivery_out(delivery: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.id,
        webhook_id=delivery.endpoint_id,
        event_id=delivery.event_id,
        event_type=delivery.event.type,
        status=delivery.status,
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at if delivery.status == DeliveryStatus.pending else None,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
        attempt_log=[AttemptOut.model_validate(attempt) for attempt in delivery.attempt_log],
    )


async def _get(session: AsyncSession, ctx: TenantContext, webhook_id: str) -> WebhookEndpoint:
    endpoint = await repository.get_endpoint(session, ctx, webhook_id)
    if endpoint is None:
        raise NotFound(f"webhook {webhook_id!r}", code="webhook_not_found")
    return endpoint


async def create_webhook(
    session: AsyncSession, ctx: TenantContext, vault: Vault, settings: Settings, data: WebhookIn
) -> WebhookWithSecret:
    await check_url(data.url, settings)
    now, webhook_id, secret = utcnow(), time_ordered_id("wh"), signing.new_secret()
    endpoint = WebhookEndpoint(
        id=webhook_id,
        tenant_id=ctx.tenant_id,
        url=data.url,
        description=data.description,
        events=[event.value for event in data.events],
        enabled=True,
        secret=vault.encrypt(secret, _context(webhook_id, ctx.tenant_id, "secret")),
        created_at=now,
        updated_at=now,
    )
    # Counted after the insert, under the tenant's lock (PostgreSQL) or the write lock (SQLite), so concurrent
    # creates cannot go past the limit together.
    await repository.lock_tenant(session, ctx)
    await repository.add_endpoint(session, endpoint)
    if await repository.count_endpoints(session, ctx) > MAX_WEBHOOKS:
        await session.rollback()
        raise APIError(409, "too_many_webhooks", f"A tenant can have at most {MAX_WEBHOOKS} webhooks.")
    await session.commit()
    log.info("webhook_created", tenant_id=ctx.tenant_id, webhook_id=webhook_id, events=endpoint.events)
    return WebhookWithSecret(**webhook_out(endpoint, now).model_dump(), secret=secret)


async def list_webhooks(session: AsyncSession, ctx: TenantContext) -> WebhookList:
    now = utcnow()
    return WebhookList(webhooks=[webhook_out(e, now) for e in await repository.list_endpoints(session, ctx)])


async def get_webhook(session: AsyncSession, ctx: TenantContext, webhook_id: str) -> WebhookOut:
    return webhook_out(await _get(session, ctx, webhook_id))


async def update_webhook(
    session: AsyncSession, ctx: TenantContext, settings: Settings, webhook_id: str, data: WebhookUpdate
) -> WebhookOut:
    """Changes the given fields. Enabling clears the disabled reason and makes waiting deliveries due now."""
    endpoint = await _get(session, ctx, webhook_id)
    now = utcnow()
    if data.url is not None:
        await check_url(data.url, settings)
        endpoint.url = data.url
    if data.events is not None:
        endpoint.events = [event.value for event in data.events]
    if "description" in data.model_fields_set:
        endpoint.description = data.description
    if data.enabled is True and not endpoint.enabled:
        endpoint.enabled, endpoint.disabled_reason, endpoint.failing_since = True, None, None
        retry_until = now + timedelta(seconds=settings.webhook_retry_window_seconds)
        await repository.make_pending_due(session, ctx, webhook_id, now, retry_until)
        await notify_dispatchers(session)
    elif data.enabled is False:
        endpoint.enabled = False
    endpoint.updated_at = now
    await session.commit()
    return webhook_out(endpoint, now)


async def delete_webhook(session: AsyncSession, ctx: TenantContext, webhook_id: str) -> None:
    """Deletes the webhook with its deliveries; deliveries in flight finish but are not recorded."""
    await _get(session, ctx, webhook_id)
    await repository.delete_endpoint(session, ctx, webhook_id)
    await session.commit()


async def rotate_secret(session: AsyncSession, ctx: TenantContext, vault: Vault, webhook_id: str) -> WebhookWithSecret:
    """A new signing secret; the previous one also signs deliveries for ROTATION_OVERLAP, so receivers can switch
    without dropping any."""
    endpoint = await _get(session, ctx, webhook_id)
    now, secret = utcnow(), signing.new_secret()
    current = vault.decrypt(endpoint.secret, _context(webhook_id, ctx.tenant_id, "secret"))
    endpoint.previous_secret = vault.encrypt(current, _context(webhook_id, ctx.tenant_id, "previous_secret"))
    endpoint.previous_secret_expires_at = now + ROTATION_OVERLAP
    endpoint.secret = vault.encrypt(secret, _context(webhook_id, ctx.tenant_id, "secret"))
    endpoint.updated_at = now
    await session.commit()
    log.info("webhook_secret_rotated", tenant_id=ctx.tenant_id, webhook_id=webhook_id)
    return WebhookWithSecret(**webhook_out(endpoint, now).model_dump(), secret=secret)


async def list_deliveries(
    session: AsyncSession,
    ctx: TenantContext,
    webhook_id: str,
    statuses: list[DeliveryStatus] | None,
    cursor: str | None,
    limit: int,
) -> DeliveryPage:
    """A webhook's deliveries newest first, each with its attempts."""
    await _get(session, ctx, webhook_id)
    if cursor is not None and not (cursor.startswith("whd_") and len(cursor) <= 32):
        raise InvalidField("cursor", "not a cursor returned by this endpoint")
    rows = await repository.list_deliveries(
        session, ctx, webhook_id, [s.value for s in statuses or []], cursor, limit + 1
    )
    page = rows[:limit]
    return DeliveryPage(
        deliveries=[delivery_out(row) for row in page], next_cursor=page[-1].id if len(rows) > limit else None
    )


async def retry_delivery(
    session: AsyncSession, ctx: TenantContext, settings: Settings, delivery_id: str
) -> DeliveryOut:
    """Sends a delivery again now, with a fresh retry window, whatever its state (except while in flight)."""
    delivery = await repository.get_delivery(session, ctx, delivery_id)
    if delivery is None:
        raise NotFound(f"delivery {delivery_id!r}", code="delivery_not_found")
    endpoint = await _get(session, ctx, delivery.endpoint_id)
    if not endpoint.enabled:
        raise APIError(
            409, "webhook_disabled", f"Webhook {endpoint.id} is disabled: enable it (PATCH enabled=true) first."
        )
    now = utcnow()
    retry_until = now + timedelta(seconds=settings.webhook_retry_window_seconds)
    if not await repository.schedule_retry(session, ctx, delivery_id, now, retry_until):
        raise APIError(409, "delivery_in_flight", "This delivery is being attempted right now; look again shortly.")
    await notify_dispatchers(session)
    await session.commit()
    return delivery_out(await repository.get_delivery(session, ctx, delivery_id))
