"""A fix for quart-trio 0.12: idle keep-alive connections were never closed.

hypercorn starts a connection's keep-alive timer from inside the app's final `send`, and in the same
call tells the app `http.disconnect` (the request cycle is over). quart-trio cancels the request's
nursery on that disconnect, which cancels the final `send` before the timer task is started, so the
connection stays open forever: a leak of file descriptors and a slot in any proxy's pool. Here a
disconnect that arrives while the response's last body message is being sent is the normal end of
the cycle and cancels nothing; a disconnect at any other time still cancels the handler at once
(that is how a client going away frees its slot).

Each request's body also gets its limit here, before the handler runs: blob uploads stream to
disk under their own large limit, every other body is bounded by `MAX_BODY_BYTES`. Quart's body
then stops keeping bytes past the limit even on a route that never reads its body, and a
handler that reads it gets a 413 (`appliance.api.requests.body_bytes`). Once a handler reads its
body piece by piece (a blob upload writing to a slow disk), no more than `BODY_HIGH_WATER` bytes
wait in memory: the receiver stops taking messages, hypercorn stops reading the socket, and TCP
slows the client down. Quart's own receiver takes everything the client sends at once.
"""

from __future__ import annotations

from typing import Any

import trio
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody

from appliance.api.requests import MAX_BLOB_BYTES, MAX_BODY_BYTES, BodyBudget

BLOB_PATH_PREFIX = "/api/blobs/"
BODY_HIGH_WATER = 8 * 1024 * 1024


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
