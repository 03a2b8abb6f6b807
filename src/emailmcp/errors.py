"""The one error shape of the API, {"error": {"code", "message", "details"}}, and its handlers."""

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger(__name__)


class ConfigurationError(Exception):
    """The service cannot start as configured; the message says what to change."""


class APIError(Exception):
    """An error a client can act on. Raised by services and dependencies, rendered by the handler."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers


class NotFound(APIError):
    def __init__(self, what: str, code: str = "not_found") -> None:
        super().__init__(404, code, f"{what} not found")


class InvalidField(APIError):
    """A 422 naming one field, for rules a schema cannot express."""

    def __init__(self, field: str, message: str, code: str = "validation_error") -> None:
        super().__init__(422, code, f"{field}: {message}", [{"field": field, "message": message}])


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict:
    return {"error": {"code": code, "message": message, "details": details or []}}


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status_code, headers=headers)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


def _field_path(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location)


def _message(error: dict[str, Any]) -> str:
    """Pydantic's message without the "Value error, " it puts before the text of a validator's ValueError."""
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def validation_details(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # The input value is left out on purpose: it may be a password or a key.
    return [
        {"field": _field_path(err.get("loc", ())), "message": _message(err), "type": err.get("type")} for err in errors
    ]


def api_error_response(exc: APIError) -> JSONResponse:
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return api_error_response(exc)


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    if any(err.get("type") == "json_invalid" for err in errors):
        return error_response(400, "invalid_json", "The request body is not valid JSON.")
    details = validation_details(errors)
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return error_response(422, "validation_error", f"Invalid request. {summary}", details)


async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 400 and "parsing the body" in message:
        code, message = "invalid_body", "The request body could not be parsed (is it UTF-8 JSON?)."
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def database_unavailable(_: Request, exc: OperationalError) -> JSONResponse:
    # Connection refused, server gone, SQLite locked past its busy timeout: transient, so 503 and not 500.
    log.warning("database_unavailable", error=type(exc.orig).__name__ if exc.orig else type(exc).__name__)
    return error_response(
        503, "database_unavailable", "The database is unavailable; retry shortly.", headers={"Retry-After": "2"}
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
