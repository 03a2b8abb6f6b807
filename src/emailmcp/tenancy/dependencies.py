"""The one place where a request becomes a tenant context: key lookup, scope check, rate limit.

Endpoints declare what they need with the annotated types at the bottom
(`MailContext`, `AdminContext`) and pass the context to the services, which scope every
query by its tenant.
"""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Response, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from emailmcp.errors import APIError
from emailmcp.runtime import Runtime
from emailmcp.tenancy.schemas import Scope, TenantContext

_bearer = HTTPBearer(auto_error=False, description="An EmailMCP API key: `Authorization: Bearer emk_...`")
BEARER_CHALLENGE = 'Bearer realm="emailmcp"'
_llm_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An EmailMCP API key with the llm scope.")
_mcp_key = APIKeyHeader(
    name="X-MCP-API-Key", auto_error=False, description="An EmailMCP API key with the mail scope (or use Bearer)."
)
_LLM_CHALLENGE = 'APIKey realm="emailmcp", header="X-API-Key"'


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


CurrentRuntime = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: CurrentRuntime) -> AsyncIterator[AsyncSession]:
    async with runtime.sessionmaker() as session:
        yield session


Session = Annotated[AsyncSession, Depends(get_session)]


async def resolve_key(
    plaintext: str | None, scope: Scope, runtime: Runtime, response: Response, challenge: str | None
) -> TenantContext:
    """Authenticates a key for one scope: 401 when missing or bad, 403 without the scope, 429 over its limit."""
    headers = {"WWW-Authenticate": challenge} if challenge else None
    if not plaintext:
        raise APIError(401, "unauthorized", "An API key is required.", headers=headers)
    context = await runtime.keys.verify(plaintext.strip())
    if context is None:
        if challenge:
            headers = {"WWW-Authenticate": f'{challenge}, error="invalid_token"'}
        raise APIError(401, "invalid_api_key", "The API key is unknown or revoked.", headers=headers)
    if scope not in context.scopes:
        raise APIError(403, "insufficient_scope", f"This API key lacks the '{scope.value}' scope.")
    await count_request(context, runtime, response)
    return context


async def count_request(context: TenantContext, runtime: Runtime, response: Response) -> None:
    """Counts a request against its key's rate limit: 429 over it, else the RateLimit-* headers on `response`."""
    state = await runtime.rate_limiter.hit(f"key:{context.key_id}", context.settings.rate_limit)
    if state is None:
        return
    if not state.allowed:
        raise APIError(
            429,
            "rate_limited",
            f"Too many requests for this API key; retry in {state.reset_seconds} s.",
            headers=state.headers(),
        )
    response.headers.update(state.headers())


def bearer_scope(scope: Scope):
    async def dependency(
        response: Response,
        runtime: CurrentRuntime,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> TenantContext:
        return await resolve_key(
            credentials.credentials if credentials else None, scope, runtime, response, BEARER_CHALLENGE
        )

    return dependency


MailContext = Annotated[TenantContext, Depends(bearer_scope(Scope.mail))]
AdminContext = Annotated[TenantContext, Depends(bearer_scope(Scope.admin))]


async def llm_context(
    response: Response, runtime: CurrentRuntime, key: Annotated[str | None, Security(_llm_key)]
) -> TenantContext:
    """The /llm/* key: X-API-Key with the llm scope."""
    return await resolve_key(key, Scope.llm, runtime, response, _LLM_CHALLENGE)


async def action_mail_context(
    response: Response,
    runtime: CurrentRuntime,
    key: Annotated[str | None, Security(_mcp_key)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> TenantContext:
    """The key that authorises an action's effects: X-MCP-API-Key (or Authorization: Bearer) with the mail scope."""
    plaintext = key or (credentials.credentials if credentials else None)
    return await resolve_key(plaintext, Scope.mail, runtime, response, BEARER_CHALLENGE)


LlmContext = Annotated[TenantContext, Depends(llm_context)]
ActionMailContext = Annotated[TenantContext, Depends(action_mail_context)]
