"""The webhook outbox: events stored in the transaction of the change that causes them.

Callers (the delivery worker, cancelling, connecting and disconnecting mailboxes) hand `emit` what happened; it
stores each event that some enabled webhook of the tenant subscribes to, with one delivery row per such webhook,
on the caller's connection and so in the caller's transaction: the event exists if and only if the change does.
Events nobody subscribes to are not stored. Payloads never carry message bodies or secrets.
"""

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from emailmcp.db import time_ordered_id, utcnow
from emailmcp.users.models import EndUser
from emailmcp.wakeup import WEBHOOKS_CHANNEL
from emailmcp.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from emailmcp.webhooks.schemas import DeliveryStatus, EventType

_NOTIFY_DISPATCHERS = text(f"NOTIFY {WEBHOOKS_CHANNEL}")
_endpoints = WebhookEndpoint.__table__


@dataclass(frozen=True, slots=True)
class Event:
    tenant_id: int
    type: EventType
    user_pk: int  # emit adds the tenant's own user_id to the data
    data: dict = field(default_factory=dict)


def timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, as the REST API writes times."""
    return moment.isoformat().replace("+00:00", "Z")


def message_event(type: EventType, tenant_id: int, user_pk: int, **message) -> Event:
    """A message.* event; `message` holds the message's fields under the names of the REST message resource."""
    fields = {name: timestamp(value) if isinstance(value, datetime) else value for name, value in message.items()}
    return Event(tenant_id, type, user_pk, {"message": fields})


def mailbox_event(type: EventType, mailbox, status: str, **extra) -> Event:
    """A mailbox.* event about a mailbox (row or model), under the names of the REST mailbox resource."""
    described = {"type": mailbox.type, "status": status, "from_address": mailbox.from_address}
    return Event(mailbox.tenant_id, type, mailbox.user_pk, {"mailbox": described, **extra})


def mailbox_disconnected(mailbox, reason: str) -> list[Event]:
    """The mailbox.disconnected event of a mailbox being disconnected or removed, unless it already was."""
    if mailbox is None or mailbox.status == "disconnected":
        return []
    return [mailbox_event(EventType.mailbox_disconnected, mailbox, "disconnected", reason=reason)]


async def emit(db: AsyncConnection | AsyncSession, events: list[Event]) -> int:
    """Stores the events some enabled webhook subscribes to, and their deliveries; returns how many deliveries."""
    if not events:
        return 0
    subscribed: dict[tuple[int, str], list[str]] = {}
    endpoints = await db.execute(
        select(_endpoints.c.id, _endpoints.c.tenant_id, _endpoints.c.events).where(
            _endpoints.c.enabled, _endpoints.c.tenant_id.in_({event.tenant_id for event in events})
        )
    )
    for endpoint_id, tenant_id, types in endpoints:
        for event_type in types:
            subscribed.setdefault((tenant_id, event_type), []).append(endpoint_id)
    wanted = [event for event in events if (event.tenant_id, event.type.value) in subscribed]
    if not wanted:
        return 0
    user_ids = dict(
        (await db.execute(select(EndUser.id, EndUser.user_id).where(EndUser.id.in_({e.user_pk for e in wanted}))))
        .tuples()
        .all()
    )
    now = utcnow()
    event_rows, delivery_rows = [], []
    for event in wanted:
        event_id = time_ordered_id("evt")
        data = {"user_id": user_ids.get(event.user_pk), **event.data}
        event_rows.append(
            {"id": event_id, "tenant_id": event.tenant_id, "type": event.type.value, "data": data, "created_at": now}
        )
        for endpoint_id in subscribed[(event.tenant_id, event.type.value)]:
            delivery_rows.append(
                {
                    "id": time_ordered_id("whd"),
                    "tenant_id": event.tenant_id,
                    "endpoint_id": endpoint_id,
                    "event_id": event_id,
                    "status": DeliveryStatus.pending.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
            )
    await db.execute(insert(WebhookEvent.__table__), event_rows)
    await db.execute(insert(WebhookDelivery.__table__), delivery_rows)
    await notify_dispatchers(db)
    return len(delivery_rows)


async def notify_dispatchers(db: AsyncConnection | AsyncSession) -> None:
    """PostgreSQL: wakes the dispatchers of every process when the caller's transaction commits. (In one process,
    callers notify `runtime.webhook_signal`; on SQLite, dispatchers also poll.)"""
    bind = db.bind if isinstance(db, AsyncSession) else db
    if bind.dialect.name == "postgresql":
        await db.execute(_NOTIFY_DISPATCHERS)


def payload(event_id: str, event_type: str, created_at: datetime, data: dict) -> dict:
    """The JSON body of a delivery."""
    return {"id": event_id, "type": event_type, "created_at": timestamp(created_at), "data": data}
