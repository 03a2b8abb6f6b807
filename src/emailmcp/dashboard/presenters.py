"""What the pages show, computed from the services' answers: chart figures, a captured message's parts, and an
action's parameters as a form (and back). Pure functions, no HTTP."""

import re
import secrets
from email import policy
from email.parser import BytesParser
from typing import Any

from emailmcp.actions import registry
from emailmcp.actions.base import Action
from emailmcp.reports.schemas import Totals

_ERROR_CODE = re.compile(r"[a-z_]{1,64}")
# Prepended to a captured HTML body shown in the (sandboxed, script-less) frame: nothing is fetched from elsewhere,
# so opening a message does not fire its tracking pixels.
_NO_REMOTE_CONTENT = (
    '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
    "style-src 'unsafe-inline'\">"
)


def gmail_outcome(status: str | None, error: str | None) -> tuple[str, str] | None:
    """The notice for a return from the Gmail consent flow, in fixed words: the query string is anybody's to write,
    so only a well-formed error code from it is shown."""
    if status == "connected":
        return "success", "Gmail is connected."
    if status == "error":
        code = f" ({error})" if error and _ERROR_CODE.fullmatch(error) else ""
        return "error", f"Gmail was not connected{code}. Try again, or ask the user to."
    return None


def chart_figures(report: Totals) -> dict:
    """What the chart draws and the table beside it lists: sent and failed per local day."""
    return {
        "days": [day.date.isoformat() for day in report.by_day],
        "sent": [day.successful for day in report.by_day],
        "failed": [day.failed for day in report.by_day],
        "tz": report.tz,
    }


def captured_parts(raw: bytes) -> dict:
    """The parts of a captured message worth showing: its text, its HTML (shown in a sandboxed frame)."""
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    text = parsed.get_body(preferencelist=("plain",))
    html = parsed.get_body(preferencelist=("html",))
    return {
        "headers": [(name, str(parsed[name])) for name in ("From", "To", "Cc", "Subject", "Date") if parsed[name]],
        "text": text.get_content() if text is not None else None,
        "html": _NO_REMOTE_CONTENT + html.get_content() if html is not None else None,
    }


def step_form(action_name: str, parameters: dict, missing: list[str], errors: dict[str, str] | None = None) -> dict:
    """The planned step as form fields, following the action's JSON Schema: lists as comma-separated text."""
    schema = registry.get(action_name).schema()
    required = set(schema.get("required", []))
    fields = []
    for name, spec in schema.get("properties", {}).items():
        value = parameters.get(name)
        if name == "idempotency_key" and not value:
            value = secrets.token_urlsafe(12)  # confirming twice (a double click, a reload) then sends once
        fields.append(
            {
                "name": name,
                "label": name.replace("_", " ").capitalize(),
                "value": ", ".join(value) if isinstance(value, list) else ("" if value is None else str(value)),
                "choices": _choices(spec),
                "long": name == "body",
                "required": name in required,
                "missing": name in missing,
                "error": (errors or {}).get(name),
                "description": spec.get("description", ""),
            }
        )
    return {"action": action_name, "fields": fields}


def _choices(spec: dict) -> list[str] | None:
    for option in [spec, *spec.get("anyOf", []), *spec.get("allOf", [])]:
        if "enum" in option:
            return option["enum"]
    return None


def parameters_from_form(action: Action, form: Any) -> dict:
    """Form values back into the action's parameters: lists split on commas, empty optional fields left out."""
    properties = action.schema().get("properties", {})
    parameters: dict[str, Any] = {}
    for name, spec in properties.items():
        raw = form.get(name)
        if not isinstance(raw, str) or raw.strip() == "":
            continue
        if spec.get("type") == "array":
            parameters[name] = [part.strip() for part in raw.split(",") if part.strip()]
        else:  # numbers too: the action's model reads "10" as 10, and names the field when it is not a number
            parameters[name] = raw
    return parameters
