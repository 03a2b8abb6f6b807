"""create_app(): settings, database, routers, middleware and the lifespan that prepares them."""

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.routing import Route

from emailmcp import __version__
from emailmcp.background import run_background
from emailmcp.body_limit import BodySizeLimitMiddleware
from emailmcp.dashboard import endpoints as dashboard
from emailmcp.errors import install_error_handlers
from emailmcp.llm.endpoints import router as llm_router
from emailmcp.mail.endpoints import router as messages_router
from emailmcp.mcp_server.http import McpRoute, StreamableHttpEndpoint
from emailmcp.oauth.endpoints import router as oauth_router
from emailmcp.observability import RequestContextMiddleware
from emailmcp.reports.endpoints import router as reports_router
from emailmcp.runtime import Runtime, write_private_file
from emailmcp.settings import Settings, load_settings
from emailmcp.system.endpoints import router as system_router
from emailmcp.users.endpoints import router as users_router
from emailmcp.webhooks.endpoints import router as webhooks_router

log = structlog.get_logger(__name__)

BOOTSTRAP_KEY_FILE = "bootstrap-key"


def hand_over_bootstrap_key(data_dir: Path, key: str) -> None:
    """Gives the first key to the operator: a 0600 file always, the terminal when there is one, never the log."""
    path = data_dir / BOOTSTRAP_KEY_FILE
    write_private_file(path, key + "\n")
    log.warning("bootstrap_key_created", tenant="default", path=str(path.resolve()))
    if sys.stderr.isatty():
        print(
            f"\nEmailMCP created tenant 'default' with an API key holding every scope"
            f" (shown once, also in {path}):\n\n    {key}\n",
            file=sys.stderr,
            flush=True,
        )


def create_app(settings: Settings | None = None, runtime: Runtime | None = None, run_worker: bool = True) -> FastAPI:
    """The ASGI app. Without a runtime, the lifespan builds one from the settings.

    With `run_worker`, a delivery worker runs inside the server process (the embedded default).
    """
    settings = runtime.settings if runtime else settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal runtime
        runtime = runtime or Runtime.create(settings)
        bootstrap_key = await runtime.prepare()
        if bootstrap_key:
            hand_over_bootstrap_key(settings.data_dir, bootstrap_key)
        app.state.runtime = runtime
        app.state.mcp = StreamableHttpEndpoint(runtime)
        if settings.default_transport == "capture":
            log.warning(
                "capture_transport_active",
                advice="users without a mailbox get their mail captured, not delivered; "
                "set EMAILMCP_DEFAULT_TRANSPORT=smtp (with EMAILMCP_SMTP_HOST) or none",
            )
        if settings.google_client_id and not settings.public_url:
            log.warning(
                "public_url_unset",
                callback=settings.oauth_callback_url,
                advice="set EMAILMCP_PUBLIC_URL to the address browsers reach this server at; Google sends users "
                "back to <EMAILMCP_PUBLIC_URL>/v1/oauth/callback, which must be registered at Google",
            )
        log.info("started", database=runtime.engine.dialect.name, worker=run_worker)
        stop = asyncio.Event()
        worker = asyncio.create_task(run_background(runtime, stop)) if run_worker else None
        try:
            async with app.state.mcp.running():
                yield
        finally:
            stop.set()
            if worker:
                await worker
            await runtime.close()

    app = FastAPI(
        title="EmailMCP",
        version=__version__,
        summary="Send email through your users' own mailboxes, from your app and its AI agents.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(system_router)
    app.include_router(users_router)
    app.include_router(oauth_router)
    app.include_router(messages_router)
    app.include_router(reports_router)
    app.include_router(webhooks_router)
    app.include_router(llm_router)
    app.router.routes.append(Route("/mcp", McpRoute(), include_in_schema=False))
    dashboard.install(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-API-Key",
                "X-MCP-API-Key",
                "Idempotency-Key",
                "X-Request-ID",
                "Mcp-Protocol-Version",
            ],
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ],
        )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)
    return app
