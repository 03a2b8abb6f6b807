"""What the pages show, computed from the services' answers: chart figures, a captured message's parts, and an
action's parameters as a form (and back). Pure functions, no HTTP."""

from email import policy
from email.parser import BytesParser
from typing import Any

from emailmcp.actions import registry
from emailmcp.actions.base import Action
from emailmcp.reports.schemas import Totals

LIST_FIELDS = {"to", "cc", "bcc", "reply_to"}


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
        "html": html.get_content() if html is not None else None,
    }


def step_form(action_name: str, parameters: dict, missing: list[str], errors: dict[str, str] | None = None) -> dict:
    """The planned step as form fields, following the action's JSON Schema: lists as comma-separated text."""
    schema = registry.get(action_name).schema()
    required = set(schema.get("required", []))
    fields = []
    for name, spec in schema.get("properties", {}).items():
        value = parameters.get(name)
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
    for name in properties:
        raw = form.get(name)
        if not isinstance(raw, str) or raw.strip() == "":
            continue
        if name in LIST_FIELDS:
            parameters[name] = [part.strip() for part in raw.split(",") if part.strip()]
        elif properties[name].get("type") == "integer":
            parameters[name] = int(raw) if raw.strip().isdigit() else raw
        else:
            parameters[name] = raw
    return parameters
