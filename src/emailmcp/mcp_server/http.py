"""`/mcp`: the MCP server over streamable HTTP, stateless, behind the API's own key check.

Stateless means every POST carries a whole exchange and no session lives in a process, so replicas behind a load
balancer need nothing shared. Answers are plain JSON (no SSE stream), which proxies pass without buffering issues.
"""

import ipaddress
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
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """The Host and Origin values /mcp accepts (DNS-rebinding protection).

    `EMAILMCP_MCP_ALLOWED_HOSTS` lists host names or addresses, with or without a port; `*` turns the check off (for
    a proxy that rewrites Host). Unset, it allows loopback names and the host of `EMAILMCP_PUBLIC_URL`. Browser
    origins in `EMAILMCP_CORS_ORIGINS` are allowed too.
    """
    if settings.mcp_allowed_hosts == ["*"]:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    entries = settings.mcp_allowed_hosts or [*_LOOPBACK, *([settings.public_url] if settings.public_url else [])]
    allowed_hosts: list[str] = []
    for entry in entries:
        allowed_hosts += host_values(entry)
    allowed_origins = [f"{scheme}://{host}" for host in allowed_hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(
        allowed_hosts=allowed_hosts, allowed_origins=allowed_origins + list(settings.cors_origins)
    )


def host_values(entry: str) -> list[str]:
    """The Host header values an entry stands for: `mail.example.com`, `10.0.0.5:8080`, `::1`, `[::1]:8080`, or a URL.

    Without a port, or with the scheme's default port, any port matches (browsers leave default ports out)."""
    parts = urlsplit(entry if "//" in entry else f"//{_bracketed(entry)}")
    host = (parts.hostname or "").lower()
    if not host:
        return []
    host = _bracketed(host)
    port = parts.port
    if port is None or (parts.scheme, port) in (("https", 443), ("http", 80)):
        return [host, f"{host}:*"]
    return [f"{host}:{port}"]


def _bracketed(host: str) -> str:
    """IPv6 literals as they appear in a Host header."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


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
            max_request_body_size=runtime.settings.max_body_bytes,
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
