"""Structured logs that never carry secrets, request ids, and Prometheus metrics."""

import logging
import re
import sys
import time
import uuid

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emailmcp.errors import error_response

REGISTRY = CollectorRegistry()
HTTP_REQUESTS = Counter(
    "emailmcp_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=REGISTRY
)
HTTP_LATENCY = Histogram(
    "emailmcp_http_request_duration_seconds", "Time to answer an HTTP request", ["method", "route"], registry=REGISTRY
)

WEBHOOK_ATTEMPTS = Counter(
    "emailmcp_webhook_attempts",
    "Webhook delivery attempts by result (success: a 2xx answer)",
    ["result"],
    registry=REGISTRY,
)
DELIVERY_OUTCOMES = Counter(
    "emailmcp_delivery_outcomes",
    "Delivery attempts by transport and outcome",
    ["transport", "outcome"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("emailmcp_messages", "Messages by status (read at scrape time)", ["status"], registry=REGISTRY)
OLDEST_DUE_AGE = Gauge(
    "emailmcp_oldest_due_message_age_seconds", "How long the oldest due message has waited", registry=REGISTRY
)
MAILBOXES = Gauge(
    "emailmcp_mailboxes", "Mailboxes by type and status (read at scrape time)", ["type", "status"], registry=REGISTRY
)
WEBHOOK_BACKLOG = Gauge(
    "emailmcp_webhook_deliveries",
    "Webhook deliveries not finished yet, by status: pending or sending (read at scrape time)",
    ["status"],
    registry=REGISTRY,
)
WEBHOOKS_DISABLED = Gauge(
    "emailmcp_webhooks_disabled",
    "Webhooks disabled, by their tenant or for failing (read at scrape time)",
    registry=REGISTRY,
)
TOKEN_REFRESHES = Counter(
    "emailmcp_gmail_token_refreshes",
    "Gmail access token refreshes by outcome: refreshed, unavailable, or the provider's error (invalid_grant, ...)",
    ["outcome"],
    registry=REGISTRY,
)

_API_KEY = re.compile(r"(emk_[a-z0-9]{12}_)[A-Za-z0-9_-]+")
_SECRET_NAMES = re.compile(r"password|secret|token|authorization|api_key|apikey|credential", re.IGNORECASE)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _scrub(value: object) -> object:
    if isinstance(value, str):
        return _API_KEY.sub(r"\1***", value)
    if isinstance(value, dict):
        return {k: "***" if _SECRET_NAMES.search(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_secrets(_logger, _method, event_dict: dict) -> dict:
    """Last line of defence: masks API keys in any text and values of secret-sounding fields."""
    return {
        key: "***" if _SECRET_NAMES.search(key) and key != "event" else _scrub(value)
        for key, value in event_dict.items()
    }


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Routes structlog and the standard library (uvicorn, alembic) through one renderer on stderr."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer = structlog.dev.ConsoleRenderer(colors=False) if use_console else structlog.processors.JSONRenderer()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    structlog.configure(
        # Level first: below the level, an event costs one check instead of the whole chain.
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared, processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "alembic"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # httpx2 logs every request's URL at info; webhook URLs may carry the receiver's own tokens.
    logging.getLogger("httpx2").setLevel(logging.WARNING)


class RequestContextMiddleware:
    """Gives every request an id (echoed in X-Request-ID and bound to its log lines), logs and counts it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = structlog.get_logger("emailmcp.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        status_sent = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_sent
            if message["type"] == "http.response.start":
                status, status_sent = message["status"], True
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Answered here rather than by Starlette's outermost handler so the 500 keeps its request id.
            self.log.exception("unhandled_error")
            if status_sent is False:
                response = error_response(
                    500, "internal_error", "Something went wrong on our side; quote the X-Request-ID when reporting it."
                )
                await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            HTTP_LATENCY.labels(scope["method"], route).observe(elapsed)
            self.log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round(elapsed * 1000, 1),
            )
            structlog.contextvars.clear_contextvars()
