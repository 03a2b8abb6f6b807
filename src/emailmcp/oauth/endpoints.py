from html import escape
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from emailmcp.errors import APIError
from emailmcp.oauth import service
from emailmcp.oauth.schemas import AuthorizeIn, AuthorizeOut, CallbackIn, ConnectedOut, DisconnectedOut
from emailmcp.openapi import ERROR_RESPONSES
from emailmcp.settings import Settings
from emailmcp.tenancy.dependencies import AdminContext, CurrentRuntime, MailContext, Session
from emailmcp.users.endpoints import UserIdPath

router = APIRouter(tags=["gmail"], responses=ERROR_RESPONSES)


@router.post("/v1/oauth/authorize", response_model=AuthorizeOut)
async def authorize(body: AuthorizeIn, ctx: MailContext, session: Session, runtime: CurrentRuntime) -> AuthorizeOut:
    """Starts connecting the user's Gmail: send their browser to `authorization_url`."""
    return await service.start_authorization(session, ctx, runtime.google, runtime.vault, body)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}}</style>
</head><body><main><h1>{title}</h1><p>{message}</p></main></body></html>
"""


def _page(title: str, message: str, status_code: int) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=escape(title), message=escape(message)),
        status_code=status_code,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


_MOVE_ON = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={url}">
<title>Back to the dashboard</title></head>
<body><p><a href="{url}">Back to the dashboard</a></p></body></html>
"""


def _back_to(settings: Settings, return_url: str, **params: str) -> Response:
    """A 302 to the tenant's return URL with our parameters added to its own.

    For this server's own dashboard, a page that moves on by itself instead: the dashboard's session cookie is
    SameSite=Strict, so a redirect in a chain that Google's page started would arrive without it, where a navigation
    started by a page of this server carries it."""
    parts = urlsplit(return_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    url = urlunsplit(parts._replace(query=urlencode(query + list(params.items()))))
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    if url.startswith(f"{settings.public_base_url}/dashboard/"):
        return HTMLResponse(_MOVE_ON.format(url=escape(url)), headers=headers)
    return RedirectResponse(url, status_code=302, headers=headers)


_HTML = {"content": {"text/html": {}}}


@router.get(
    "/v1/oauth/callback",
    response_class=HTMLResponse,
    responses={
        200: {"description": "Connected; a page saying so (no return URL was bound to the flow)", **_HTML},
        302: {"description": "Back to the return URL bound to the state, with status=connected or status=error"},
        400: {"description": "Nothing connected: a page saying why", **_HTML},
        502: {"description": "Google could not be reached: a page saying so", **_HTML},
        503: {"description": "Gmail is not configured on this server: a page saying so", **_HTML},
    },
)
async def callback(
    session: Session,
    runtime: CurrentRuntime,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
):
    """Where Google sends the user back (the redirect URI registered at Google). Public: the state proves the flow.

    Every answer is a page or a redirect for the user's browser, never JSON."""
    try:
        connected = await service.complete_authorization(session, runtime.google, runtime.vault, state, code, error)
    except service.ConnectFailed as exc:
        if exc.return_url:
            return _back_to(runtime.settings, exc.return_url, status="error", error=exc.code, user_id=exc.user_id or "")
        return _page("Gmail was not connected", exc.message, exc.status)
    except APIError as exc:
        return _page("Gmail was not connected", exc.message, exc.status_code)
    if connected.return_url:
        return _back_to(runtime.settings, connected.return_url, status="connected", user_id=connected.user_id)
    return _page("Gmail connected", f"{connected.email} is connected. You can close this window.", 200)


@router.post("/v1/oauth/callback", response_model=ConnectedOut)
async def callback_json(body: CallbackIn, ctx: MailContext, session: Session, runtime: CurrentRuntime) -> ConnectedOut:
    """For apps that receive Google's redirect themselves: completes the flow with its code and state."""
    try:
        connected = await service.complete_authorization(
            session, runtime.google, runtime.vault, body.state, body.code, tenant_id=ctx.tenant_id
        )
    except service.ConnectFailed as exc:
        raise APIError(exc.status, exc.code, exc.message) from None
    return ConnectedOut(user_id=connected.user_id, status="connected", email=connected.email, mailbox=connected.mailbox)


@router.delete("/v1/users/{user_id}/gmail", response_model=DisconnectedOut)
async def disconnect_gmail(
    user_id: UserIdPath, ctx: AdminContext, session: Session, runtime: CurrentRuntime
) -> DisconnectedOut:
    """Revokes the user's Gmail access at Google and forgets the tokens; their queued mail then fails with
    mailbox_not_connected. `revoked` is false when Google could not be reached (the tokens are erased anyway)."""
    revoked = await service.disconnect(session, ctx, runtime.google, runtime.vault, user_id)
    return DisconnectedOut(user_id=user_id, status="disconnected", revoked=revoked)
