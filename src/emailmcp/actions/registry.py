"""Every action an agent can take, defined once. /llm/capabilities, the LLM tools, /llm/execute-action, the MCP
tools and the dashboard's Ask box all come from here."""

from pydantic import BaseModel, ValidationError

from emailmcp.actions import check_status, get_analytics, get_message, list_messages, send_email, send_report
from emailmcp.actions.base import Action, ActionContext
from emailmcp.errors import APIError, validation_details

ACTIONS: dict[str, Action] = {
    action.name: action
    for action in (
        send_email.ACTION,
        send_report.ACTION,
        get_analytics.ACTION,
        check_status.ACTION,
        list_messages.ACTION,
        get_message.ACTION,
    )
}


def get(name: str) -> Action:
    action = ACTIONS.get(name)
    if action is None:
        raise APIError(
            400,
            "unknown_action",
            f"Unknown action {name!r}; the actions are: {', '.join(ACTIONS)}.",
            [{"field": "action_type", "message": "not an action"}],
        )
    return action


def validate(action: Action, parameters: dict, field_prefix: str = "parameters") -> BaseModel:
    """The action's parameters model, or a 422 naming every offending field (under `field_prefix`, the name of the
    object that holds the parameters in the caller's request: "parameters" for execute-action, none for MCP)."""
    try:
        return action.parameters.model_validate(parameters)
    except ValidationError as exc:
        located = [
            {**error, "loc": (field_prefix, *error["loc"]) if field_prefix else error["loc"]} for error in exc.errors()
        ]
        details = validation_details(located)
        fields = ", ".join(detail["field"] for detail in details)
        raise APIError(422, "validation_error", f"Invalid parameters for {action.name}: {fields}.", details) from None


async def run(action: Action, ctx: ActionContext, parameters: dict, field_prefix: str = "parameters") -> dict:
    """Validates and runs an action: the one path from any entry point to a side effect."""
    if action.scope not in ctx.tenant.scopes:
        raise APIError(403, "insufficient_scope", f"This API key lacks the '{action.scope.value}' scope.")
    return await action.handler(ctx, validate(action, parameters, field_prefix))
