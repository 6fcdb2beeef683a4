"""hypercorn's trio connection with a write timeout: a client that stops reading is dropped.

hypercorn 0.18 writes every byte with `send_all` inside a shielded cancel scope
(`hypercorn/trio/tcp_server.py`, `protocol_send`) and has no write timeout: a client that never
reads keeps its connection, the handler awaiting `send`, and all the handler holds (a slot, a
large answer) forever, and no cancellation can reach the shielded send. Its `read_timeout` does
not help: it also ends a client that is quietly receiving a long stream.

Here every send must make progress (the kernel accepts at least one byte) within `write_timeout`
seconds. When it does not, the socket is aborted with SO_LINGER 0 (a reset, so the kernel drops
the unsent bytes at once instead of retrying them for minutes), the app is told `http.disconnect`
(so the handler ends and frees what it holds), and `on_write_timeout` is called (the metric).
Every route gets this, streaming or not. What a writer has buffered is bounded: the app awaits
each send, so it is at most one ASGI message plus the kernel's socket buffer.

hypercorn builds its connections from `hypercorn.trio.run.TCPServer`; `install()` points that name
at the subclass below. Without a `write_timeout` on the config it behaves exactly as hypercorn's.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger(__name__)

TLS_PIECE = 16 * 1024  # TLS records are sent in pieces of this size, each within the timeout


class WriteTimeout(Exception):
    """The client accepted no byte for `write_timeout` seconds."""


async def send_with_progress(stream: Any, data: bytes, timeout: float) -> None:
    """Send all of `data`; `WriteTimeout` when any `timeout` seconds pass without a byte sent.

    A plain TCP stream is written through its socket, so each wait is for *any* progress; a TLS
    stream is written in small pieces, each of which must go out within `timeout`.
    """
    sock = getattr(stream, "socket", None)
    view = memoryview(data)
    if sock is None:
        for start in range(0, len(view), TLS_PIECE):
            with trio.move_on_after(timeout) as scope:
                await stream.send_all(view[start : start + TLS_PIECE])
            if scope.cancelled_caught:
                raise WriteTimeout()
        return
    sent = 0
    while sent < len(view):
        with trio.move_on_after(timeout) as scope:
            try:
                sent += await sock.send(view[sent:])
            except OSError as exc:  # EPIPE, ECONNRESET, EBADF: the peer or the socket is gone
                raise trio.BrokenResourceError(str(exc)) from exc
        if scope.cancelled_caught:
            raise WriteTimeout()


def _raw_socket(stream: Any) -> Any:
    inner = getattr(stream, "transport_stream", stream)
    return getattr(inner, "socket", None)


class GuardedTCPServer(TCPServer):
    """hypercorn's trio connection whose sends give up after `config.write_timeout` seconds."""

    async def protocol_send(self, event: Event) -> None:
        timeout = getattr(self.config, "write_timeout", None)
        if not isinstance(event, RawData) or not timeout or timeout == float("inf"):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True):  # as hypercorn: never half a message
                    await send_with_progress(self.stream, event.data, timeout)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
            except WriteTimeout:
                with trio.CancelScope(shield=True):
                    await self._drop(timeout)
                    await self.protocol.handle(Closed())

    async def _drop(self, timeout: float) -> None:
        hook: Callable[[str], None] | None = getattr(self.config, "on_connection_dropped", None)
        if hook is not None:
            hook("write_timeout")
        sock = _raw_socket(self.stream)
        peer = "?"
        if sock is not None:
            try:
                peer = str(sock.getpeername())
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        log.info("dropped connection from %s: it accepted no byte for %.1fs", peer, timeout)
        await trio.aclose_forcefully(self.stream)


def install() -> None:
    """Make hypercorn's trio worker build `GuardedTCPServer` connections (idempotent)."""
    hypercorn_run.TCPServer = GuardedTCPServer  # type: ignore[misc]
