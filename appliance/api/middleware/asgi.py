"""The ASGI edge: a fix for quart-trio's keep-alive, reason phrases, and one log line a request.

A fix for quart-trio 0.12: idle keep-alive connections were never closed.

hypercorn starts a connection's keep-alive timer from inside the app's final `send`, and in the same
call tells the app `http.disconnect` (the request cycle is over). quart-trio cancels the request's
nursery on that disconnect, which cancels the final `send` before the timer task is started, so the
connection stays open forever: a leak of file descriptors and a slot in any proxy's pool. Here a
disconnect that arrives while the response's last body message is being sent is the normal end of
the cycle and cancels nothing; a disconnect at any other time still cancels the handler at once
(that is how a client going away frees its slot).

hypercorn writes HTTP/1.1 status lines without a reason phrase (`HTTP/1.1 404 `), so ollama-js
shows `Error 403: ` and httpx errors read `'400 '`: `install_reason_phrases` fills in the
standard phrase. Every request is logged once when its answer ends, like Ollama's GIN line
(status, duration, client, method, path), with the model a route noted (`note_model`).

Each request's body also gets its limit here, before the handler runs: blob uploads stream to
disk under their own large limit, every other body is bounded by `MAX_BODY_BYTES`. Quart's body
then stops keeping bytes past the limit even on a route that never reads its body, and a
handler that reads it gets a 413 (`appliance.api.requests.body_bytes`). Once a handler reads its
body piece by piece (a blob upload writing to a slow disk), no more than `BODY_HIGH_WATER` bytes
wait in memory: the receiver stops taking messages, hypercorn stops reading the socket, and TCP
slows the client down. Quart's own receiver takes everything the client sends at once.
"""

from __future__ import annotations

import http
import logging
import time
from typing import Any

import h11
import trio
from hypercorn.protocol.h11 import H11Protocol
from quart import has_request_context, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody

from appliance.api.requests import MAX_BLOB_BYTES, MAX_BODY_BYTES, BodyBudget

access_log = logging.getLogger("appliance.access")

MODEL_KEY = "llm_appliance.model"
BLOB_PATH_PREFIX = "/api/blobs/"
BODY_HIGH_WATER = 8 * 1024 * 1024


def install_reason_phrases() -> None:
    """Patch hypercorn's HTTP/1.1 writer to send `404 Not Found`, not `404 ` (idempotent)."""
    send = H11Protocol._send_h11_event
    if getattr(send, "_with_reason", False):
        return

    async def send_with_reason(self: H11Protocol, event: Any) -> None:
        if isinstance(event, h11.Response) and not event.reason:
            event = h11.Response(
                status_code=event.status_code,
                headers=event.headers,
                http_version=event.http_version,
                reason=_phrase(event.status_code),
            )
        await send(self, event)

    send_with_reason._with_reason = True  # type: ignore[attr-defined]
    H11Protocol._send_h11_event = send_with_reason  # type: ignore[method-assign]


def _phrase(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def note_model(name: str) -> None:
    """Name the model of the current request in its log line."""
    if has_request_context():
        request.scope[MODEL_KEY] = name


class AccessLog:
    """ASGI middleware: one INFO line per HTTP request once its answer is complete."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def watching_send(message: Any) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 0))
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            _log_request(scope, status, time.perf_counter() - started)


def _log_request(scope: Any, status: int, seconds: float) -> None:
    client = scope.get("client") or ("", 0)
    path = scope.get("path", "")
    if scope.get("query_string"):
        path += "?" + scope["query_string"].decode("latin-1")
    host = client[0] if client else ""
    method = scope.get("method", "")
    line = f'| {status or "-":>3} | {_duration(seconds):>12} | {host:>15} | {method:<7} "{path}"'
    model = scope.get(MODEL_KEY)
    if model:
        line += f" model={model}"
    access_log.info("%s", line)


def _duration(seconds: float) -> str:
    """Go's time.Duration text as GIN prints it (`1.234ms`, `2.5s`)."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3f}µs"
    if seconds < 1:
        return f"{seconds * 1e3:.6g}ms"
    return f"{seconds:.6g}s"


def body_limit(path: str) -> int:
    """The most bytes a request to `path` may send."""
    return MAX_BLOB_BYTES if path.startswith(BLOB_PATH_PREFIX) else MAX_BODY_BYTES


class _BoundedBody(TrioBody):
    """Quart-trio's request body with backpressure once the handler reads it in pieces."""

    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        super().__init__(expected_content_length, max_content_length)
        self._streaming = False  # the handler iterates: it takes the data as it comes
        self._taken = trio.Event()

    async def __anext__(self) -> bytes:
        self._streaming = True
        try:
            return await super().__anext__()
        finally:
            self._taken.set()

    async def wait_for_room(self) -> None:
        """Return once the handler has taken enough that more may be received."""
        while self._streaming and self._must_raise is None and len(self._data) >= BODY_HIGH_WATER:
            self._taken = trio.Event()
            await self._taken.wait()


async def _receive_messages(request: Any, receive: Any) -> None:
    """Quart's `handle_messages`, waiting for room in the body before each receive."""
    body = request.body
    while True:
        if isinstance(body, _BoundedBody):
            await body.wait_for_room()
        message = await receive()
        if message["type"] == "http.request":
            body.append(message.get("body", b""))
            if not message.get("more_body", False):
                body.set_complete()
        elif message["type"] == "http.disconnect":
            return


class _HTTPConnection(TrioASGIHTTPConnection):
    def _create_request_from_scope(self, send: Any) -> Any:
        request = super()._create_request_from_scope(send)
        limit = body_limit(request.path)
        request.max_content_length = limit
        request.body = _BoundedBody(request.content_length, limit)
        return request

    async def __call__(self, receive: Any, send: Any) -> None:
        finishing = False

        async def tracking_send(message: Any) -> None:
            nonlocal finishing
            if message.get("type") == "http.response.body" and not message.get("more_body", False):
                finishing = True
            await send(message)

        async def watch_disconnect(nursery: trio.Nursery, request: Any) -> None:
            await _receive_messages(request, receive)
            if not finishing:
                nursery.cancel_scope.cancel()

        request = self._create_request_from_scope(tracking_send)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, nursery, request)
            nursery.start_soon(self.handle_request, nursery, request, tracking_send)


class ApplianceQuart(QuartTrio):
    asgi_http_class = _HTTPConnection  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.body_budget = BodyBudget()  # JSON bodies held at once, across all requests

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Log every request, including those the middlewares answer (401, 403, 404)."""
        await AccessLog(self.asgi_app)(scope, receive, send)


install_reason_phrases()
