"""The one place that turns failures into HTTP answers.

Native routes answer `{"error": "<message>"}`; OpenAI routes (`/v1/*`) answer OpenAI's envelope.
Domain errors carry their status (`appliance.errors`); anything else is a 500 with its text, logged.
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


def openai_error_body(status: int, message: str) -> dict[str, Any]:
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        413: "invalid_request_error",
    }
    kind = kinds.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def error_parts(exc: BaseException, *, openai: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the answer to `exc`; also used by ASGI middleware."""
    status, message = error_status_and_message(exc)
    if openai:
        body = json.dumps(openai_error_body(status, message))
        headers = {"Content-Type": "application/json"}
    else:
        body = json.dumps({"error": message})
        headers = {"Content-Type": JSON_UTF8}
    if isinstance(exc, ServerBusy):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return status, headers, body.encode()


def error_response(exc: BaseException, *, openai: bool = False) -> Response:
    status, headers, body = error_parts(exc, openai=openai)
    content_type = headers.pop("Content-Type")
    response = Response(body, status=status, content_type=content_type)
    response.headers.update(headers)
    return response


def install_error_handlers(app: Quart) -> None:
    """Map domain errors, framework errors and crashes to answers in the client's dialect."""

    def _is_openai() -> bool:
        return request.path.startswith("/v1/")

    @app.errorhandler(ApplianceError)
    async def _domain(exc: ApplianceError) -> Response:
        if exc.status >= 500 and exc.status != 503:
            log.warning("%s %s: %s", request.method, request.path, exc.message)
        return error_response(exc, openai=_is_openai())

    @app.errorhandler(HTTPException)
    async def _http(exc: HTTPException) -> Response:
        # Go's net/http answers unknown paths and methods in plain text; clients match on it.
        if exc.code == 404:
            return Response("404 page not found", status=404, content_type="text/plain")
        if exc.code == 405:
            return Response("405 method not allowed", status=405, content_type="text/plain")
        if exc.code == 413:  # quart's own body limit (a route that streams its body)
            return error_response(PayloadTooLarge(), openai=_is_openai())
        return error_response(
            ApplianceError(exc.description or exc.name, status=exc.code or 500),
            openai=_is_openai(),
        )

    @app.errorhandler(Exception)
    async def _crash(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(exc, openai=_is_openai())
