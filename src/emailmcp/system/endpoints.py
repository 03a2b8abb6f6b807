"""Service info, liveness, readiness and metrics: no API key needed."""

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from emailmcp import __version__, db
from emailmcp.db import utcnow
from emailmcp.mail import repository as mail_repository
from emailmcp.mail.schemas import MessageStatus
from emailmcp.observability import (
    MAILBOXES,
    OLDEST_DUE_AGE,
    QUEUE_DEPTH,
    REGISTRY,
    WEBHOOK_BACKLOG,
    WEBHOOKS_DISABLED,
)
from emailmcp.tenancy.dependencies import CurrentRuntime
from emailmcp.users import repository as users_repository
from emailmcp.users.schemas import MailboxStatus, MailboxType
from emailmcp.webhooks import repository as webhooks_repository
from emailmcp.webhooks.schemas import DeliveryStatus

router = APIRouter(tags=["system"])
SERVICE = "emailmcp"


class ServiceInfo(BaseModel):
    service: str
    version: str
    docs: str
    health: str
    mcp: str


class Health(BaseModel):
    status: Literal["healthy"]
    service: str
    timestamp: str


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    database: Literal["ok", "unreachable"]
    migrations: Literal["current", "pending", "unknown"]


@router.get("/", response_model=ServiceInfo)
async def service_info() -> ServiceInfo:
    return ServiceInfo(service=SERVICE, version=__version__, docs="/docs", health="/health", mcp="/mcp")


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the process answers. Does not touch the database."""
    return Health(status="healthy", service=SERVICE, timestamp=utcnow().isoformat())


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness, "description": "Not ready"}})
async def ready(runtime: CurrentRuntime) -> JSONResponse:
    """Readiness: the database answers and its schema is at the current migration."""
    try:
        current = await db.schema_is_current(runtime.engine)
    except (SQLAlchemyError, OSError):
        body = Readiness(status="not_ready", database="unreachable", migrations="unknown")
    else:
        body = Readiness(
            status="ready" if current else "not_ready", database="ok", migrations="current" if current else "pending"
        )
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(runtime: CurrentRuntime) -> Response:
    """Prometheus text exposition; queue figures are read from the database at scrape time."""
    now = utcnow()
    try:
        async with runtime.sessionmaker() as session:
            by_status = await mail_repository.count_by_status(session)
            oldest = await mail_repository.oldest_due(session, now)
            mailboxes = await users_repository.count_mailboxes(session)
            webhook_backlog, webhooks_disabled = await webhooks_repository.backlog(session)
    except (SQLAlchemyError, OSError):
        pass
    else:
        for status in MessageStatus:
            QUEUE_DEPTH.labels(status.value).set(by_status.get(status.value, 0))
        OLDEST_DUE_AGE.set((now - oldest).total_seconds() if oldest else 0)
        for type_ in (MailboxType.smtp, MailboxType.gmail):
            for status in MailboxStatus:
                if status != MailboxStatus.not_connected:
                    MAILBOXES.labels(type_.value, status.value).set(mailboxes.get((type_.value, status.value), 0))
        for status in (DeliveryStatus.pending, DeliveryStatus.sending):
            WEBHOOK_BACKLOG.labels(status.value).set(webhook_backlog.get(status.value, 0))
        WEBHOOKS_DISABLED.set(webhooks_disabled)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
