"""The error shape as OpenAPI models, declared on every router so clients and fuzzers know it."""

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    field: str | None = None
    message: str
    type: str | None = None


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail]


class ErrorResponse(BaseModel):
    error: ErrorInfo


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("Malformed request (e.g. invalid JSON)"),
    401: _error("Missing, unknown or revoked API key"),
    403: _error("The API key lacks the scope this operation needs"),
    404: _error("No such object in this tenant"),
    413: _error("Request body too large"),
    422: _error("Invalid field; `details` names it"),
    429: _error("Rate limit exceeded; see Retry-After"),
    503: _error("The database is unavailable; retry after Retry-After seconds"),
}
