"""Signing in to the dashboard with an API key, the session cookie, and CSRF protection.

The key is checked once, at sign-in, and never stored: the browser gets a random session token in an HttpOnly,
SameSite=Strict cookie (Secure over https), and the server keeps only the token's SHA-256 with the key's id. Every
request looks the key up again, so a revoked key ends its sessions at once. Every form carries the session's CSRF
token, checked in constant time; the sign-in form, which has no session yet, carries one bound to a short-lived
cookie (double submit).
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from emailmcp.dashboard import repository
from emailmcp.dashboard.models import DashboardSession
from emailmcp.db import utcnow
from emailmcp.runtime import Runtime
from emailmcp.tenancy.schemas import TenantContext

SESSION_COOKIE = "emailmcp_session"
SIGN_IN_COOKIE = "emailmcp_sign_in"
SESSION_TTL = timedelta(hours=8)
COOKIE_PATH = "/dashboard"


class SignInRequired(Exception):
    """No valid session: the browser goes to the sign-in page."""


class CsrfRefused(Exception):
    """A form without this session's CSRF token."""


@dataclass(frozen=True)
class Viewer:
    """The signed-in person: the tenant context of their key, and their session's CSRF token for forms."""

    tenant: TenantContext
    session_id: str
    csrf_token: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    """Secure when this request came over https, or when the server's public address is https (behind a proxy that
    does not say so)."""
    public_url = request.app.state.runtime.settings.public_url or ""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or public_url.startswith("https://"),
    )


def new_sign_in_token() -> str:
    return secrets.token_urlsafe(32)


def remember_sign_in_token(request: Request, response: Response, token: str) -> None:
    set_cookie(request, response, SIGN_IN_COOKIE, token, 3600)


def sign_in_token_matches(request: Request, submitted: str) -> bool:
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    return bool(expected) and hmac.compare_digest(expected.encode(), submitted.encode())


async def start_session(session: AsyncSession, request: Request, response: Response, tenant: TenantContext) -> None:
    now = utcnow()
    token = secrets.token_urlsafe(32)
    await repository.delete_expired_sessions(session, now)
    await repository.add_session(
        session,
        DashboardSession(
            id=_digest(token),
            tenant_id=tenant.tenant_id,
            api_key_id=tenant.key_id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + SESSION_TTL,
        ),
    )
    await session.commit()
    set_cookie(request, response, SESSION_COOKIE, token, int(SESSION_TTL.total_seconds()))
    response.delete_cookie(SIGN_IN_COOKIE, path=COOKIE_PATH)


async def end_session(session: AsyncSession, response: Response, viewer: Viewer) -> None:
    await repository.delete_session(session, viewer.session_id)
    await session.commit()
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)


async def current_viewer(request: Request, session: AsyncSession, runtime: Runtime) -> Viewer:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise SignInRequired
    row = await repository.get_live_session(session, _digest(token), utcnow())
    tenant = await runtime.keys.context_of_key(row.api_key_id) if row else None
    if row is None or tenant is None:
        raise SignInRequired
    return Viewer(tenant=tenant, session_id=row.id, csrf_token=row.csrf_token)


async def check_csrf(request: Request, viewer: Viewer) -> None:
    """Unsafe methods need the session's token, from the form field or (htmx) the X-CSRF-Token header."""
    submitted = request.headers.get("x-csrf-token")
    if submitted is None:
        form = await request.form()
        value = form.get("csrf_token")
        submitted = value if isinstance(value, str) else ""
    if not hmac.compare_digest(submitted.encode(), viewer.csrf_token.encode()):
        raise CsrfRefused
