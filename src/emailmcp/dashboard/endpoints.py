"""The dashboard's pages: thin handlers that read the signed-in viewer, call the domain services in-process, and
render a template. Refusals from the services (APIError) are shown in place, on the page that caused them."""

import pathlib
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Depends, FastAPI, Form, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from emailmcp import errors
from emailmcp.actions import registry
from emailmcp.actions.base import ActionContext
from emailmcp.dashboard import auth, presenters
from emailmcp.dashboard.auth import CsrfRefused, SignInRequired, Viewer
from emailmcp.db import TOKEN_PATTERN
from emailmcp.errors import APIError, InvalidField, NotFound, api_error_response, validation_details
from emailmcp.llm import service as llm
from emailmcp.llm.schemas import InferenceIn
from emailmcp.mail import service as mail
from emailmcp.mail.schemas import EntryPoint, MessagePage, StatusFilter
from emailmcp.oauth import service as oauth
from emailmcp.oauth.schemas import AuthorizeIn
from emailmcp.reports import service as reports
from emailmcp.reports.schemas import TimeRange, Totals
from emailmcp.tenancy.dependencies import CurrentRuntime, Session, count_request
from emailmcp.tenancy.schemas import Scope
from emailmcp.users import service as users
from emailmcp.users.schemas import USER_ID_RULE, MailboxType, SmtpMailboxIn, UserCreate, UserId
from emailmcp.webhooks import service as webhooks
from emailmcp.webhooks.schemas import WebhookUpdate

HERE = pathlib.Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/dashboard", include_in_schema=False)
RANGES = [(r.value, r.value.replace("_", " ").capitalize()) for r in TimeRange]
STATUSES = get_args(StatusFilter)


async def viewer(request: Request, response: Response, session: Session, runtime: CurrentRuntime) -> Viewer:
    signed_in = await auth.current_viewer(request, session, runtime)
    request.state.viewer = signed_in  # for the error page, which keeps the navigation
    await count_request(signed_in.tenant, runtime, response)
    if request.method == "POST":
        await auth.check_csrf(request, signed_in)
    return signed_in


SignedIn = Annotated[Viewer, Depends(viewer)]
_user_id = TypeAdapter(UserId)


def _checked_user_id(user_id: str) -> str:
    """A user id as the API accepts it; anything else names no user (a page, not a 500 or a new user)."""
    try:
        return _user_id.validate_python(user_id)
    except ValidationError:
        raise APIError(404, "user_not_found", f"No user {user_id!r}: user ids are {USER_ID_RULE}.") from None


UserIdInPath = Annotated[str, Depends(_checked_user_id)]
# An id anything but printable ASCII names nothing: a 404 page, never a query (PostgreSQL refuses NUL).
TokenInPath = Annotated[str, Path(pattern=TOKEN_PATTERN)]


def render(request: Request, template: str, viewer: Viewer | None, status_code: int = 200, **context: Any):
    runtime = request.app.state.runtime
    return templates.TemplateResponse(
        request,
        template,
        {
            "viewer": viewer,
            "scopes": {scope.value for scope in viewer.tenant.scopes} if viewer else set(),
            "capture": runtime.settings.default_transport == "capture",
            **context,
        },
        status_code=status_code,
        headers={"Cache-Control": "no-store"},  # pages hold the tenant's data and a CSRF token
    )


def _needs(viewer: Viewer, scope: Scope) -> None:
    if scope not in viewer.tenant.scopes:
        raise APIError(403, "insufficient_scope", f"The key you signed in with lacks the '{scope.value}' scope.")


def _range(value: str | None) -> TimeRange:
    try:
        return TimeRange(value or TimeRange.last_30_days)
    except ValueError:
        return TimeRange.last_30_days


# Signing in and out.


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_page(request: Request):
    return _sign_in_form(request)


def _sign_in_form(request: Request, error: str | None = None, status_code: int = 200):
    token = auth.new_sign_in_token()
    response = render(request, "sign_in.html", None, status_code, csrf_token=token, error=error)
    auth.remember_sign_in_token(request, response, token)
    return response


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(
    request: Request,
    session: Session,
    runtime: CurrentRuntime,
    api_key: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
):
    if not auth.sign_in_token_matches(request, csrf_token):
        return _sign_in_form(request, "The form expired; please sign in again.", 403)
    tenant = await runtime.keys.verify(api_key.strip()) if api_key.strip() else None
    if tenant is None:
        return _sign_in_form(request, "That API key is unknown or revoked.", 401)
    response = RedirectResponse("/dashboard", status_code=303)
    await auth.start_session(session, request, response, tenant)
    return response


@router.post("/sign-out")
async def sign_out(viewer: SignedIn, session: Session):
    response = RedirectResponse("/dashboard/sign-in", status_code=303)
    await auth.end_session(session, response, viewer)
    return response


# Overview and users.


@router.get("", response_class=HTMLResponse)
async def overview(request: Request, viewer: SignedIn, session: Session, range: str | None = None):  # noqa: A002
    _needs(viewer, Scope.mail)
    summary = await reports.tenant_summary(session, viewer.tenant, _range(range))
    return render(
        request, "overview.html", viewer, summary=summary, figures=presenters.chart_figures(summary), ranges=RANGES
    )


@router.get("/users", response_class=HTMLResponse)
async def users_page(request: Request, viewer: SignedIn, session: Session, cursor: str | None = None):
    _needs(viewer, Scope.mail)
    page = await users.list_users(session, viewer.tenant, cursor, 50)
    return render(request, "users.html", viewer, page=page)


@router.post("/users", response_class=HTMLResponse)
async def add_user(request: Request, viewer: SignedIn, session: Session, user_id: Annotated[str, Form()] = ""):
    _needs(viewer, Scope.mail)
    try:
        data = UserCreate(user_id=user_id.strip())
    except ValidationError:
        page = await users.list_users(session, viewer.tenant, None, 50)
        error = f"A user id is {USER_ID_RULE} (for example user123)."
        return render(request, "users.html", viewer, 422, page=page, error=error, user_id=user_id)
    await users.upsert_user(session, viewer.tenant, data)
    return RedirectResponse(f"/dashboard/users/{data.user_id}", status_code=303)


@router.get("/users/{user_id}", response_class=HTMLResponse, name="dashboard_user")
async def user_page(
    request: Request,
    viewer: SignedIn,
    session: Session,
    runtime: CurrentRuntime,
    user_id: UserIdInPath,
    range: str | None = None,  # noqa: A002
    status: str | None = None,
    error: str | None = None,
):
    """Also where the Gmail consent flow comes back to, with `status=connected` or `status=error&error=<code>`."""
    gmail = presenters.gmail_outcome(status, error)
    return await _user_page(request, viewer, session, runtime, user_id, _range(range), gmail=gmail)


async def _user_page(
    request: Request,
    viewer: Viewer,
    session: Session,
    runtime,
    user_id: str,
    time_range: TimeRange = TimeRange.last_30_days,
    gmail: tuple[str, str] | None = None,
    smtp_error: str | None = None,
    status_code: int = 200,
):
    _needs(viewer, Scope.mail)
    report = await reports.user_report(session, viewer.tenant, user_id, time_range)
    mailbox = await users.get_mailbox(session, viewer.tenant, user_id)
    return render(
        request,
        "user.html",
        viewer,
        status_code,
        report=report,
        figures=presenters.chart_figures(report),
        mailbox=mailbox,
        ranges=RANGES,
        gmail_configured=runtime.google is not None,
        gmail=gmail,
        smtp_error=smtp_error,
    )


@router.post("/users/{user_id}/gmail")
async def connect_gmail(viewer: SignedIn, session: Session, runtime: CurrentRuntime, user_id: UserIdInPath):
    """Starts the consent flow; Google sends the person back to this user's page."""
    _needs(viewer, Scope.mail)
    back = f"{runtime.settings.public_base_url}/dashboard/users/{user_id}"
    data = AuthorizeIn(user_id=user_id, redirect_uri=back)
    flow = await oauth.start_authorization(session, viewer.tenant, runtime.google, runtime.vault, data, own_page=True)
    return RedirectResponse(flow.authorization_url, status_code=303)


@router.post("/users/{user_id}/mailbox", response_class=HTMLResponse)
async def set_smtp_mailbox(
    request: Request, viewer: SignedIn, session: Session, runtime: CurrentRuntime, user_id: UserIdInPath
):
    _needs(viewer, Scope.admin)
    form = await request.form()
    fields = {k: v for k, v in form.items() if k not in ("csrf_token",) and isinstance(v, str) and v != ""}
    try:
        body = SmtpMailboxIn.model_validate({"type": "smtp", **fields})
        await oauth.replace_with_smtp(
            session,
            viewer.tenant,
            runtime.google,
            runtime.vault,
            user_id,
            body,
            runtime.settings.smtp_allow_private_hosts,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{d['field']}: {d['message']}" for d in validation_details(exc.errors()))
        return await _user_page_with_error(request, viewer, session, runtime, user_id, problems)
    except APIError as exc:
        return await _user_page_with_error(request, viewer, session, runtime, user_id, exc.message)
    return RedirectResponse(f"/dashboard/users/{user_id}", status_code=303)


async def _user_page_with_error(request, viewer, session, runtime, user_id: str, message: str):
    return await _user_page(request, viewer, session, runtime, user_id, smtp_error=message, status_code=422)


@router.post("/users/{user_id}/mailbox/remove")
async def remove_mailbox(viewer: SignedIn, session: Session, runtime: CurrentRuntime, user_id: UserIdInPath):
    """Disconnects Gmail (revoking the grant at Google; the user can connect again) or removes an SMTP mailbox."""
    _needs(viewer, Scope.admin)
    mailbox = await users.get_mailbox(session, viewer.tenant, user_id)
    if mailbox.type == MailboxType.gmail:
        await oauth.disconnect(session, viewer.tenant, runtime.google, runtime.vault, user_id)
    else:
        await oauth.remove_mailbox(session, viewer.tenant, runtime.google, runtime.vault, user_id)
    return RedirectResponse(f"/dashboard/users/{user_id}", status_code=303)


# Messages.


async def _messages(session: Session, viewer: Viewer, user_id: str, status: str) -> MessagePage:
    """The newest 50 matching messages; a filter on a user who does not exist (yet) matches none."""
    try:
        return await mail.list_messages(
            session, viewer.tenant, user_id or None, status if status in STATUSES else None, None, 50
        )
    except NotFound:
        return MessagePage(messages=[], next_cursor=None)


@router.get("/messages", response_class=HTMLResponse)
async def messages_page(request: Request, viewer: SignedIn, session: Session, user_id: str = "", status: str = ""):
    _needs(viewer, Scope.mail)
    page = await _messages(session, viewer, user_id, status)
    return render(request, "messages.html", viewer, page=page, user_id=user_id, status=status, statuses=STATUSES)


@router.get("/messages/rows", response_class=HTMLResponse)
async def message_rows(request: Request, viewer: SignedIn, session: Session, user_id: str = "", status: str = ""):
    """The table body alone, polled by htmx while some message is still on its way."""
    _needs(viewer, Scope.mail)
    page = await _messages(session, viewer, user_id, status)
    return render(request, "_message_rows.html", viewer, page=page, user_id=user_id, status=status)


@router.get("/messages/{message_id}", response_class=HTMLResponse)
async def message_page(request: Request, viewer: SignedIn, session: Session, message_id: TokenInPath):
    _needs(viewer, Scope.mail)
    message = await mail.get_message(session, viewer.tenant, message_id)
    content = None
    if message.transport == "capture" and message.status == "sent":
        try:
            content = presenters.captured_parts(await mail.raw_mime(session, viewer.tenant, message_id))
        except APIError:
            content = None  # erased after the retention period
    return render(request, "message.html", viewer, message=message, content=content)


# Webhooks: each with its recent deliveries; a failed delivery can be retried, a disabled webhook enabled.

RECENT_DELIVERIES = 10


@router.get("/webhooks", response_class=HTMLResponse)
async def webhooks_page(request: Request, viewer: SignedIn, session: Session):
    _needs(viewer, Scope.admin)
    listed = (await webhooks.list_webhooks(session, viewer.tenant)).webhooks
    recent = {
        hook.id: (
            await webhooks.list_deliveries(session, viewer.tenant, hook.id, None, None, RECENT_DELIVERIES)
        ).deliveries
        for hook in listed
    }
    return render(request, "webhooks.html", viewer, webhooks=listed, deliveries=recent)


@router.post("/webhooks/{webhook_id}/enable")
async def enable_webhook(viewer: SignedIn, session: Session, runtime: CurrentRuntime, webhook_id: TokenInPath):
    _needs(viewer, Scope.admin)
    await webhooks.update_webhook(session, viewer.tenant, runtime.settings, webhook_id, WebhookUpdate(enabled=True))
    runtime.webhook_signal.notify()
    return RedirectResponse("/dashboard/webhooks", status_code=303)


@router.post("/webhooks/deliveries/{delivery_id}/retry")
async def retry_webhook_delivery(viewer: SignedIn, session: Session, runtime: CurrentRuntime, delivery_id: TokenInPath):
    _needs(viewer, Scope.admin)
    await webhooks.retry_delivery(session, viewer.tenant, runtime.settings, delivery_id)
    runtime.webhook_signal.notify()
    return RedirectResponse("/dashboard/webhooks", status_code=303)


# Ask: a prompt through the planner, shown as an editable form, run only when confirmed.


@router.get("/ask", response_class=HTMLResponse)
async def ask_page(request: Request, viewer: SignedIn):
    return render(request, "ask.html", viewer, prompt="", user_id="")


@router.post("/ask", response_class=HTMLResponse)
async def ask(
    request: Request,
    viewer: SignedIn,
    runtime: CurrentRuntime,
    prompt: Annotated[str, Form()] = "",
    user_id: Annotated[str, Form()] = "",
):
    _needs(viewer, Scope.llm)
    try:
        plan = await llm.infer(runtime.planners, InferenceIn(prompt=prompt, user_id=user_id.strip()))
    except ValidationError as exc:
        fields = ", ".join(str(e["loc"][0]) for e in exc.errors(include_url=False))
        return render(
            request, "ask.html", viewer, 422, prompt=prompt, user_id=user_id, error=f"Please fill in: {fields}."
        )
    except APIError as exc:
        return render(request, "ask.html", viewer, exc.status_code, prompt=prompt, user_id=user_id, error=exc.message)
    step = presenters.step_form(plan.action, plan.parameters, plan.missing) if plan.action else None
    return render(request, "ask.html", viewer, prompt=prompt, user_id=user_id.strip(), plan=plan, step=step)


@router.post("/ask/run", response_class=HTMLResponse)
async def run_step(request: Request, viewer: SignedIn, session: Session, runtime: CurrentRuntime):
    """Runs the confirmed step through the registry, exactly as /llm/execute-action and the MCP tools do."""
    _needs(viewer, Scope.llm)
    form = await request.form()
    action_name = str(form.get("action", ""))
    try:
        user_id = _user_id.validate_python(str(form.get("user_id", "")).strip())
    except ValidationError:
        raise InvalidField("user_id", USER_ID_RULE) from None
    action = registry.get(action_name)
    parameters = presenters.parameters_from_form(action, form)
    ctx = ActionContext(runtime, session, viewer.tenant, user_id, EntryPoint.dashboard)
    try:
        result = await registry.run(action, ctx, parameters, field_prefix="")
    except APIError as exc:
        errors = {d["field"].split(".")[0]: d["message"] for d in exc.details if d.get("field")}
        step = presenters.step_form(action_name, parameters, [], errors)
        return render(
            request,
            "ask.html",
            viewer,
            exc.status_code,
            prompt=str(form.get("prompt", "")),
            user_id=user_id,
            step=step,
            error=exc.message,
        )
    figures = presenters.chart_figures(Totals.model_validate(result)) if "by_day" in result else None
    done = {"action": action_name, "result": result, "figures": figures}
    return render(request, "ask.html", viewer, prompt="", user_id=user_id, done=done)


# Wiring.


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=HERE / "static"), name="dashboard_static")

    async def to_sign_in(request: Request, _: SignInRequired) -> Response:
        if request.headers.get("hx-request"):
            return Response(status_code=204, headers={"HX-Redirect": "/dashboard/sign-in"})
        return RedirectResponse("/dashboard/sign-in", status_code=303)

    async def refuse_csrf(request: Request, _: CsrfRefused) -> Response:
        return render(request, "error.html", None, 403, title="Form expired", message="Reload the page and try again.")

    def on_pages(api_handler, message_of):
        """A handler that answers dashboard paths with a page and everything else as the API does (the API's handler
        runs either way, for what it logs)."""

        async def handler(request: Request, exc: Exception) -> Response:
            api_response = await api_handler(request, exc)
            if not request.url.path.startswith("/dashboard"):
                return api_response
            status_code, message = message_of(exc)
            viewer = getattr(request.state, "viewer", None)
            response = render(request, "error.html", viewer, status_code, title="That did not work", message=message)
            response.headers.update(getattr(exc, "headers", None) or {})
            return response

        return handler

    async def api_error_json(_: Request, exc: APIError) -> Response:
        return api_error_response(exc)

    app.add_exception_handler(SignInRequired, to_sign_in)
    app.add_exception_handler(CsrfRefused, refuse_csrf)
    app.add_exception_handler(APIError, on_pages(api_error_json, lambda exc: (exc.status_code, exc.message)))
    app.add_exception_handler(
        StarletteHTTPException,
        on_pages(
            errors.http_error,
            lambda exc: (exc.status_code, "There is no such page." if exc.status_code == 404 else str(exc.detail)),
        ),
    )
    app.add_exception_handler(
        RequestValidationError,
        on_pages(errors.validation_error, lambda exc: (422, "The form could not be read; reload the page and retry.")),
    )
    app.add_exception_handler(
        OperationalError,
        on_pages(errors.database_unavailable, lambda exc: (503, "The database is unavailable; retry shortly.")),
    )
