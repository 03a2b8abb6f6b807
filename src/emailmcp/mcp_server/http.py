"""`/mcp`: the MCP server over streamable HTTP, stateless, behind the API's own key check.

Stateless means every POST carries a whole exchange and no session lives in a process, so replicas behind a load
balancer need nothing shared. Answers are plain JSON (no SSE stream), which proxies pass without buffering issues.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from emailmcp.errors import APIError, api_error_response, error_response
from emailmcp.mcp_server.server import build_server
from emailmcp.runtime import Runtime
from emailmcp.settings import Settings
from emailmcp.tenancy.dependencies import BEARER_CHALLENGE, resolve_key
from emailmcp.tenancy.schemas import Scope as KeyScope
from emailmcp.tenancy.schemas import TenantContext

_TENANT = "emailmcp.tenant"
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """The Host and Origin values /mcp accepts (DNS-rebinding protection).

    `EMAILMCP_MCP_ALLOWED_HOSTS` lists host names, with or without a port; `*` turns the check off (for a proxy
    that rewrites Host). Unset, it allows loopback names and the host of `EMAILMCP_PUBLIC_URL`.
    """
    hosts = settings.mcp_allowed_hosts
    if hosts == ["*"]:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    if not hosts:
        hosts = [*_LOOPBACK]
        if settings.public_url:
            hosts.append(urlsplit(settings.public_url).netloc)
    allowed_hosts: list[str] = []
    for host in hosts:
        has_port = host.rsplit("]", 1)[-1].count(":") == 1
        allowed_hosts += [host] if has_port else [host, f"{host}:*"]
    allowed_origins = [f"{scheme}://{host}" for host in allowed_hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(allowed_hosts=allowed_hosts, allowed_origins=allowed_origins)


async def _tenant_of_request(ctx: ServerRequestContext) -> TenantContext:
    return ctx.request.scope[_TENANT]


class StreamableHttpEndpoint:
    """The ASGI app behind `/mcp`: a Bearer key with the mail scope (rate-limited like any request), then the SDK."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.sessions = StreamableHTTPSessionManager(
            app=build_server(runtime, _tenant_of_request),
            stateless=True,
            json_response=True,
            security_settings=transport_security(runtime.settings),
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.sessions.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            # The SDK would hold a GET open as an idle event stream; a stateless server has nothing to push.
            refusal = error_response(
                405,
                "method_not_allowed",
                "This MCP endpoint is stateless: POST each JSON-RPC message; there is no stream or session.",
                headers={"Allow": "POST"},
            )
            await refusal(scope, receive, send)
            return
        authorization = Headers(scope=scope).get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        rate_headers = Response()
        try:
            scope[_TENANT] = await resolve_key(
                credentials if scheme.lower() == "bearer" else None,
                KeyScope.mail,
                self.runtime,
                rate_headers,
                BEARER_CHALLENGE,
            )
        except APIError as error:
            await api_error_response(error)(scope, receive, send)
            return

        async def send_with_rate_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in rate_headers.headers.items():
                    if name.lower().startswith("ratelimit"):
                        headers[name] = value
            await send(message)

        await self.sessions.handle_request(scope, receive, send_with_rate_headers)


class McpRoute:
    """Routed at exactly `/mcp` (a Mount would redirect `/mcp` to `/mcp/`). The endpoint itself is built by the
    app's lifespan, once the runtime exists."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint: StreamableHttpEndpoint = scope["app"].state.mcp
        await endpoint(scope, receive, send)
