"""`emailmcp mcp`: the same MCP server over stdin/stdout, for local clients such as Claude Desktop.

The process works on the configured database directly (no HTTP hop), as the tenant of `EMAILMCP_API_KEY`. The key is
checked again on every request, so revoking it takes effect at once. By default the process also runs a delivery
worker, so that mail queued through it goes out without a `serve` or `worker` process beside it.
"""

import asyncio
import signal

import structlog
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

from emailmcp.background import run_background
from emailmcp.errors import APIError
from emailmcp.mcp_server.server import build_server
from emailmcp.runtime import Runtime
from emailmcp.tenancy.schemas import Scope, TenantContext

log = structlog.get_logger(__name__)


async def key_tenant(runtime: Runtime, api_key: str) -> TenantContext:
    """The tenant of a key with the mail scope, or an APIError saying what is wrong with the key."""
    tenant = await runtime.keys.verify(api_key.strip())
    if tenant is None:
        raise APIError(401, "invalid_api_key", "EMAILMCP_API_KEY is unknown or revoked.")
    if Scope.mail not in tenant.scopes:
        raise APIError(403, "insufficient_scope", "EMAILMCP_API_KEY lacks the 'mail' scope.")
    return tenant


async def serve_stdio(runtime: Runtime, api_key: str, run_worker: bool) -> None:
    """Serves until the client closes stdin. Raises APIError before serving when the key cannot be used."""
    await runtime.migrate()
    await key_tenant(runtime, api_key)

    async def caller(_: ServerRequestContext) -> TenantContext:
        return await key_tenant(runtime, api_key)

    server = build_server(runtime, caller)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_background(runtime, stop)) if run_worker else None
    # A client that ends the server with SIGTERM (as desktop clients do) still gets in-flight sends recorded.
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    try:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    except asyncio.CancelledError:
        log.info("stdio_stopped", signal="SIGTERM")
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        stop.set()
        if worker:
            await worker
