"""The MCP server: one tool per action of the registry, and each user's report as a resource.

Built on the SDK's low-level `Server` so that a tool's input schema is exactly its action's JSON Schema (plus
`user_id`), not one inferred again from a function signature. Both transports (streamable HTTP and stdio) serve
the same server; they differ only in how a call learns its tenant (`Caller`).
"""

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import mcp_types as types
import structlog
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.exc import OperationalError

from emailmcp import __version__
from emailmcp.actions import registry
from emailmcp.actions.base import Action, ActionContext
from emailmcp.actions.send_report import report_email
from emailmcp.errors import APIError
from emailmcp.mail.schemas import EntryPoint
from emailmcp.reports import service as reports
from emailmcp.reports.schemas import TimeRange
from emailmcp.runtime import Runtime
from emailmcp.tenancy.schemas import TenantContext
from emailmcp.users import service as users
from emailmcp.users.schemas import USER_ID_RULE, UserId

log = structlog.get_logger(__name__)

Caller = Callable[[ServerRequestContext], Awaitable[TenantContext]]
"""Who a request comes from: the tenant of the key that authenticated it."""

REPORT_URI_TEMPLATE = "emailmcp://users/{user_id}/report"
_REPORT_PAGE = 100
_user_id = TypeAdapter(UserId)
_USER_ID_SCHEMA = {
    **_user_id.json_schema(),
    "description": "Your app's identifier of the user whose mailbox and figures the call is about.",
}
INSTRUCTIONS = (
    "Send email from your app's users' own mailboxes (Gmail or SMTP) and read their delivery analytics. Every tool "
    "takes the user_id your app knows the user by. send_email and send_report queue a message and answer at once; "
    "follow it with get_message. Pass an idempotency_key to send_email when a call may be retried."
)


def tool_schema(action: Action) -> dict[str, Any]:
    """The action's JSON Schema with the required `user_id` first."""
    schema = action.schema()
    return {
        **schema,
        "properties": {"user_id": _USER_ID_SCHEMA, **schema.get("properties", {})},
        "required": ["user_id", *schema.get("required", [])],
    }


def tool_annotations(action: Action) -> types.ToolAnnotations:
    """Reading actions are read-only; sending ones reach the world outside and are not idempotent by themselves."""
    if not action.side_effects:
        return types.ToolAnnotations(read_only_hint=True, open_world_hint=False)
    return types.ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
    )


TOOLS = [
    types.Tool(
        name=action.name,
        title=action.name.replace("_", " ").capitalize(),
        description=action.description,
        input_schema=tool_schema(action),
        annotations=tool_annotations(action),
    )
    for action in registry.ACTIONS.values()
]


def _failure(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def _explain(error: APIError) -> str:
    """An API error as one readable line for the agent: the message, then each offending field it does not name."""
    fields = [f"{detail['field']}: {detail['message']}" for detail in error.details if detail.get("field")]
    fields = [field for field in fields if field not in error.message]
    return f"{error.message} ({'; '.join(fields)})" if fields else error.message


def _refusal(error: Exception) -> tuple[int, str]:
    """What the caller may be told of a failure: the API's refusals as they are, anything else without its internals
    (an exception's text can hold SQL and the values of a message)."""
    if isinstance(error, APIError):
        return types.INVALID_PARAMS, _explain(error)
    if isinstance(error, OperationalError):
        log.warning("database_unavailable", error=type(error.orig).__name__ if error.orig else type(error).__name__)
        return types.INTERNAL_ERROR, "The database is unavailable; retry shortly."
    log.exception("mcp_request_failed")
    return types.INTERNAL_ERROR, "Something went wrong on our side; the server's log has the details."


def _user_id_of(arguments: dict[str, Any]) -> str:
    value = arguments.get("user_id")
    try:
        return _user_id.validate_python(value, strict=True)
    except ValidationError:
        if value is None:
            reason, hint = "missing", "user_id is required: your app's identifier of the user."
        elif not isinstance(value, str):
            reason, hint = "not a string", f"user_id must be a JSON string, not {type(value).__name__}."
        else:
            reason, hint = "not a user identifier", f"user_id must be {USER_ID_RULE}."
        raise APIError(422, "validation_error", hint, [{"field": "user_id", "message": reason}]) from None


def build_server(runtime: Runtime, caller: Caller) -> Server:
    async def list_tools(
        ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(ctx: ServerRequestContext, params: types.CallToolRequestParams) -> types.CallToolResult:
        action = registry.ACTIONS.get(params.name)
        if action is None:
            return _failure(f"Unknown tool {params.name!r}; the tools are: {', '.join(registry.ACTIONS)}.")
        arguments = dict(params.arguments or {})
        try:
            tenant = await caller(ctx)
            user_id = _user_id_of(arguments)
            del arguments["user_id"]
            async with runtime.sessionmaker() as session:
                action_ctx = ActionContext(runtime, session, tenant, user_id, EntryPoint.mcp)
                result = await registry.run(action, action_ctx, arguments, field_prefix="")
        except Exception as error:  # noqa: BLE001 (every failure becomes a tool error; see _refusal)
            if isinstance(error, APIError):
                log.info("mcp_tool_refused", tool=action.name, code=error.code)
            return _failure(_refusal(error)[1])
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(result, ensure_ascii=False))], structured_content=result
        )

    async def list_resources(
        ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        try:
            tenant = await caller(ctx)
            async with runtime.sessionmaker() as session:
                page = await users.list_users(session, tenant, params.cursor if params else None, _REPORT_PAGE)
        except Exception as error:  # noqa: BLE001
            raise MCPError(*_refusal(error)) from None
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri=REPORT_URI_TEMPLATE.format(user_id=user.user_id),
                    name=f"report-{user.user_id}",
                    title=f"Email report for {user.user_id}",
                    description="Delivery figures for the last 30 days.",
                    mime_type="text/plain",
                )
                for user in page.users
            ],
            next_cursor=page.next_cursor,
        )

    async def list_resource_templates(
        ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    uri_template=REPORT_URI_TEMPLATE,
                    name="user-report",
                    title="A user's email report",
                    description="The user's delivery figures, as a readable summary and as JSON. Add "
                    f"?time_range=one of {', '.join(TimeRange)} (default last_30_days).",
                    mime_type="text/plain",
                )
            ]
        )

    async def read_resource(
        ctx: ServerRequestContext, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        user_id, time_range = _parse_report_uri(str(params.uri))
        try:
            tenant = await caller(ctx)
            async with runtime.sessionmaker() as session:
                report = await reports.user_report(session, tenant, user_id, time_range)
        except Exception as error:  # noqa: BLE001
            raise MCPError(*_refusal(error)) from None
        _, text, _ = report_email(report)
        figures = report.model_dump(mode="json", exclude={"recent_emails"})
        uri = str(params.uri)
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(uri=uri, mime_type="text/plain", text=text),
                types.TextResourceContents(uri=uri, mime_type="application/json", text=json.dumps(figures)),
            ]
        )

    return Server(
        "emailmcp",
        version=__version__,
        title="EmailMCP",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
    )


def _parse_report_uri(uri: str) -> tuple[str, TimeRange]:
    """`emailmcp://users/{user_id}/report[?time_range=...]` -> the user id and the window."""
    parts = urlsplit(uri)
    segments = parts.path.strip("/").split("/")
    if parts.scheme != "emailmcp" or parts.netloc != "users" or len(segments) != 2 or segments[1] != "report":
        raise MCPError(types.INVALID_PARAMS, f"Unknown resource {uri!r}; reports are at {REPORT_URI_TEMPLATE}.")
    try:
        user_id = _user_id.validate_python(unquote(segments[0]))
    except ValidationError:
        raise MCPError(types.INVALID_PARAMS, f"Not a user identifier in {uri!r}.") from None
    requested = parse_qs(parts.query).get("time_range", [TimeRange.last_30_days.value])[-1]
    try:
        return user_id, TimeRange(requested)
    except ValueError:
        raise MCPError(
            types.INVALID_PARAMS, f"time_range must be one of {', '.join(TimeRange)}, not {requested!r}."
        ) from None
