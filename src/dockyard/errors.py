"""The one error body of every 4xx/5xx answer, and the exceptions services raise to produce it.

Services raise `ApiError` subclasses; they know nothing of HTTP beyond the status code they imply. The
handlers registered by `install_error_handlers` turn those, FastAPI's validation errors and anything
unexpected into `{"code", "reason", "message", "details"}`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a user can act on. `message` is a sentence that says what to do."""

    status_code = 400
    reason = "BAD_REQUEST"

    def __init__(
        self,
        message: str,
        *,
        details: Sequence[dict[str, Any]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)
        self.headers = headers or {}


class BadRequest(ApiError):
    pass


class InvalidField(ApiError):
    """A field that is well-formed but not acceptable (an unknown product, a template of another org)."""

    status_code = 422
    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", details=[{"field": field, "message": message}])


class Unauthorized(ApiError):
    status_code = 401
    reason = "UNAUTHENTICATED"


class Forbidden(ApiError):
    status_code = 403
    reason = "PERMISSION_DENIED"


class NotFound(ApiError):
    status_code = 404
    reason = "NOT_FOUND"


class Conflict(ApiError):
    status_code = 409
    reason = "CONFLICT"


class PayloadTooLarge(ApiError):
    status_code = 413
    reason = "PAYLOAD_TOO_LARGE"


class ResourceExhausted(ApiError):
    """No capacity right now (no free GPU); the client may retry later."""

    status_code = 429
    reason = "RESOURCE_EXHAUSTED"


class QuotaExceeded(ResourceExhausted):
    """An ask past one of the organization's quotas. 429 RESOURCE_EXHAUSTED, as Google's APIs answer a quota:
    the canonical code of our `reason`s for it (403 PERMISSION_DENIED would say the caller may not, which it
    may), and the ask succeeds later once something is deleted or the limit raised. `details` names the quota
    with its figures."""

    def __init__(self, message: str, *, quota: str, limit: float, used: float, asked: float) -> None:
        detail = {"field": quota, "message": message, "limit": limit, "used": used, "asked": asked}
        super().__init__(message, details=[detail])


class Unavailable(ApiError):
    status_code = 503
    reason = "UNAVAILABLE"


_REASONS = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",  # the gateway could not reach a worker
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(code: int, message: str, details: Sequence[dict[str, Any]] = (), reason: str = "") -> dict[str, Any]:
    return {
        "code": code,
        "reason": reason or _REASONS.get(code, "ERROR"),
        "message": message,
        "details": list(details),
    }


def error_response(
    code: int,
    message: str,
    details: Sequence[dict[str, Any]] = (),
    reason: str = "",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details, reason), status_code=code, headers=headers)


def _field_name(loc: Sequence[Any]) -> str:
    """`("body", "ports", 0, "containerPort")` -> `ports[0].containerPort`; the location kind is dropped."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        elif not name:
            name = str(part)
        else:
            name += f".{part}"
    return name or (str(loc[0]) if loc else "request")


def validation_details(errors: Sequence[Any]) -> list[dict[str, Any]]:
    details = []
    for error in errors:
        if error.get("type") == "json_invalid":
            # FastAPI puts the character offset where a field name goes; the field is the body itself.
            offset = error.get("loc", ("body", 0))[-1]
            problem = (error.get("ctx") or {}).get("error", "malformed")
            message = f"not valid JSON ({problem} at character {offset}); send a JSON object"
            details.append({"field": "body", "message": message})
            continue
        message = str(error.get("msg", "invalid value"))
        message = message.removeprefix("Value error, ")
        details.append({"field": _field_name(error.get("loc", ())), "message": message})
    return details


def api_error_response(exc: ApiError) -> JSONResponse:
    return error_response(exc.status_code, exc.message, exc.details, exc.reason, exc.headers)


def internal_error_response(method: str, path: str) -> JSONResponse:
    """The 500 of an error nobody planned for; the traceback goes to the log, the user learns where to look."""
    log.exception("unhandled error on %s %s", method, path)
    return error_response(500, "internal error; the server log has the details", reason="INTERNAL")


async def _on_api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return api_error_response(exc)


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = validation_details(exc.errors())
    message = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5]) or "invalid request"
    return error_response(422, message, details, "INVALID_ARGUMENT")


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    # Starlette's routing raises these with only the status phrase ("Not Found"); say what to do instead.
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}; the API reference is at /docs"
    elif exc.status_code == 405 and message == "Method Not Allowed":
        message = f"{request.method} is not allowed on {request.url.path}; the API reference is at /docs"
    elif exc.status_code == 400 and message == "There was an error parsing the body":
        message = "the request body could not be read; send a JSON object encoded as UTF-8"
    return error_response(exc.status_code, message, headers=dict(exc.headers or {}))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    return internal_error_response(request.method, request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
