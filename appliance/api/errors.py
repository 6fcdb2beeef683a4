"""The one place that turns failures into HTTP answers.

Native routes answer `{"error": "<message>"}`; OpenAI routes (`/v1/*`) answer OpenAI's envelope;
Anthropic routes (`/v1/messages*`) answer Anthropic's (`{"type":"error","error":{type,message}}`).
The dialect follows from the path (`dialect_for_path`). Domain errors carry their status
(`appliance.errors`); anything else is a 500 with its text, logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from appliance.errors import ApplianceError, PayloadTooLarge, ServerBusy, Unauthorized

log = logging.getLogger(__name__)

JSON_UTF8 = "application/json; charset=utf-8"


def error_status_and_message(exc: BaseException) -> tuple[int, str]:
    """Status and client-facing message for any exception."""
    if isinstance(exc, ApplianceError):
        return exc.status, exc.message
    return 500, str(exc) or type(exc).__name__


NATIVE, OPENAI, ANTHROPIC = "native", "openai", "anthropic"
ANTHROPIC_PATHS = ("/v1/messages",)
# Anthropic's error types by status (anthropic/anthropic.go `NewError`; 529 is their "overloaded").
ANTHROPIC_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def dialect_for_path(path: str) -> str:
    """Which error envelope a path's clients read: Anthropic's, OpenAI's (`/v1/`) or native."""
    if any(path == p or path.startswith(p + "/") for p in ANTHROPIC_PATHS):
        return ANTHROPIC
    return OPENAI if path.startswith("/v1/") else NATIVE


def openai_error_body(status: int, message: str) -> dict[str, Any]:
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "invalid_request_error",
    }
    kind = kinds.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    kind = ANTHROPIC_KINDS.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_body(dialect: str, status: int, message: str) -> dict[str, Any]:
    """The error object in `dialect` (also what a stream sends in-band after its first byte)."""
    if dialect == ANTHROPIC:
        return anthropic_error_body(status, message)
    if dialect == OPENAI:
        return openai_error_body(status, message)
    return {"error": message}


def error_parts(exc: BaseException, *, dialect: str = NATIVE) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the answer to `exc`; also used by ASGI middleware."""
    status, message = error_status_and_message(exc)
    body = json.dumps(error_body(dialect, status, message))
    headers = {"Content-Type": JSON_UTF8 if dialect == NATIVE else "application/json"}
    if isinstance(exc, ServerBusy):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return status, headers, body.encode()


def error_response(exc: BaseException, *, dialect: str = NATIVE) -> Response:
    status, headers, body = error_parts(exc, dialect=dialect)
    content_type = headers.pop("Content-Type")
    response = Response(body, status=status, content_type=content_type)
    response.headers.update(headers)
    return response


def install_error_handlers(app: Quart) -> None:
    """Map domain errors, framework errors and crashes to answers in the client's dialect."""

    def _dialect() -> str:
        return dialect_for_path(request.path)

    @app.errorhandler(ApplianceError)
    async def _domain(exc: ApplianceError) -> Response:
        if exc.status >= 500 and exc.status != 503:
            log.warning("%s %s: %s", request.method, request.path, exc.message)
        return error_response(exc, dialect=_dialect())

    @app.errorhandler(HTTPException)
    async def _http(exc: HTTPException) -> Response:
        # Go's net/http answers unknown paths and methods in plain text; clients match on it.
        if exc.code == 404:
            return Response("404 page not found", status=404, content_type="text/plain")
        if exc.code == 405:
            return Response("405 method not allowed", status=405, content_type="text/plain")
        if exc.code == 413:  # quart's own body limit (a route that streams its body)
            return error_response(PayloadTooLarge(), dialect=_dialect())
        return error_response(
            ApplianceError(exc.description or exc.name, status=exc.code or 500),
            dialect=_dialect(),
        )

    @app.errorhandler(Exception)
    async def _crash(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(exc, dialect=_dialect())
