from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from emailmcp.db import TOKEN_PATTERN
from emailmcp.openapi import ERROR_RESPONSES
from emailmcp.tenancy.dependencies import AdminContext, CurrentRuntime, Session
from emailmcp.webhooks import service
from emailmcp.webhooks.schemas import (
    DeliveryOut,
    DeliveryPage,
    DeliveryStatus,
    WebhookIn,
    WebhookList,
    WebhookOut,
    WebhookUpdate,
    WebhookWithSecret,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERROR_RESPONSES)

WebhookIdPath = Annotated[str, Path(pattern=TOKEN_PATTERN, description="The webhook's id (wh_...).")]
DeliveryIdPath = Annotated[str, Path(pattern=TOKEN_PATTERN, description="The delivery's id (whd_...).")]


@router.post("", response_model=WebhookWithSecret, status_code=status.HTTP_201_CREATED)
async def create_webhook(
    body: WebhookIn, ctx: AdminContext, session: Session, runtime: CurrentRuntime
) -> WebhookWithSecret:
    """Subscribes a URL to events. The answer holds the signing secret, which is not shown again."""
    return await service.create_webhook(session, ctx, runtime.vault, runtime.settings, body)


@router.get("", response_model=WebhookList)
async def list_webhooks(ctx: AdminContext, session: Session) -> WebhookList:
    return await service.list_webhooks(session, ctx)


@router.get("/{webhook_id}", response_model=WebhookOut)
async def get_webhook(webhook_id: WebhookIdPath, ctx: AdminContext, session: Session) -> WebhookOut:
    return await service.get_webhook(session, ctx, webhook_id)


@router.patch("/{webhook_id}", response_model=WebhookOut)
async def update_webhook(
    webhook_id: WebhookIdPath, body: WebhookUpdate, ctx: AdminContext, session: Session, runtime: CurrentRuntime
) -> WebhookOut:
    """Changes the URL, events, description or enabled state; enabling resumes waiting deliveries at once."""
    return await service.update_webhook(session, ctx, runtime.settings, webhook_id, body)


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook(webhook_id: WebhookIdPath, ctx: AdminContext, session: Session) -> None:
    await service.delete_webhook(session, ctx, webhook_id)


@router.post("/{webhook_id}/rotate-secret", response_model=WebhookWithSecret)
async def rotate_secret(
    webhook_id: WebhookIdPath, ctx: AdminContext, session: Session, runtime: CurrentRuntime
) -> WebhookWithSecret:
    """A new signing secret. For 24 hours deliveries carry signatures with both, so receivers can switch over."""
    return await service.rotate_secret(session, ctx, runtime.vault, webhook_id)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage)
async def list_deliveries(
    webhook_id: WebhookIdPath,
    ctx: AdminContext,
    session: Session,
    delivery_status: Annotated[list[DeliveryStatus] | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(pattern=TOKEN_PATTERN)] = None,
) -> DeliveryPage:
    """The webhook's deliveries, newest first, each with its attempts (status code, latency, error)."""
    return await service.list_deliveries(session, ctx, webhook_id, delivery_status, cursor, limit)


@router.post("/deliveries/{delivery_id}/retry", response_model=DeliveryOut)
async def retry_delivery(
    delivery_id: DeliveryIdPath, ctx: AdminContext, session: Session, runtime: CurrentRuntime
) -> DeliveryOut:
    """Attempts the delivery again now, with a fresh retry window."""
    delivery = await service.retry_delivery(session, ctx, runtime.settings, delivery_id)
    runtime.webhook_signal.notify()
    return delivery
