"""A real forward HTTP proxy on loopback, for testing pulls behind a corporate proxy.

It does `CONNECT host:port` tunnels and plain `GET http://host/...` forwarding, optionally demands
basic auth (407 otherwise), optionally speaks TLS on its own listening socket (an `https://` proxy),
and resolves host names only through its private `names` table: a registry addressed as
`registry.test` can be reached through this proxy and through nothing else, so a pull that works
proves it went through the proxy. It records what it was asked to do for the tests to assert on.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import trio

MAX_HEAD = 64 * 1024


@dataclass
class ProxyPeer:
    names: dict[str, tuple[str, int]]
    auth: tuple[str, str] | None = None
    ssl_context: ssl.SSLContext | None = None
    port: int = 0
    connects: list[str] = field(default_factory=list)
    forwards: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def url_with_auth(self, user: str, password: str) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{user}:{password}@127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, raw: trio.SocketStream) -> None:
        stream: trio.abc.Stream = raw
        try:
            if self.ssl_context is not None:
                stream = trio.SSLStream(raw, self.ssl_context, server_side=True)
                await stream.do_handshake()
            await self._serve_one(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_one(self, stream: trio.abc.Stream) -> None:
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = await stream.receive_some(65536)
            if not chunk or len(buffer) > MAX_HEAD:
                return
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = [
            tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line
        ]
        if not self._authorized(headers):
            self.rejected.append(target)
            await stream.send_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n'
                b"Connection: close\r\n\r\n"
            )
            return
        if method == "CONNECT":
            host = target.rpartition(":")[0]
            self.connects.append(target)
            upstream = await self._open(stream, host)
            if upstream is None:
                return
            await stream.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                await upstream.send_all(rest)
        else:
            url = urlsplit(target)
            if not url.hostname:
                await self._fail(stream, 400, "absolute URL required")
                return
            self.forwards.append(target)
            upstream = await self._open(stream, url.hostname)
            if upstream is None:
                return
            path = url.path or "/"
            if url.query:
                path += "?" + url.query
            kept = [
                f"{k}: {v}"
                for k, v in headers
                if k.lower() not in ("proxy-authorization", "proxy-connection", "connection")
            ]
            request = "\r\n".join([f"{method} {path} HTTP/1.1", *kept, "Connection: close", "", ""])
            await upstream.send_all(request.encode("latin-1") + rest)
        async with upstream:
            await _splice(stream, upstream)

    def _authorized(self, headers: list[tuple[str, ...]]) -> bool:
        if self.auth is None:
            return True
        expected = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
        return any(k.lower() == "proxy-authorization" and v == expected for k, v in headers)

    async def _open(self, stream: trio.abc.Stream, host: str) -> trio.SocketStream | None:
        address = self.names.get(host.lower().strip("[]"))
        if address is None:
            await self._fail(stream, 502, f"unknown host {host}")
            return None
        try:
            return await trio.open_tcp_stream(*address)
        except OSError:
            await self._fail(stream, 502, "connection refused")
            return None

    async def _fail(self, stream: trio.abc.Stream, status: int, reason: str) -> None:
        body = reason.encode()
        await stream.send_all(
            f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + body
        )


async def _splice(a: trio.abc.Stream, b: trio.abc.Stream) -> None:
    """Copy bytes both ways until either side ends, then end both."""

    async def pump(src: trio.abc.Stream, dst: trio.abc.Stream, scope: trio.CancelScope) -> None:
        try:
            while chunk := await src.receive_some(65536):
                await dst.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, a, b, nursery.cancel_scope)
        nursery.start_soon(pump, b, a, nursery.cancel_scope)


@asynccontextmanager
async def open_proxy(
    names: dict[str, tuple[str, int]],
    *,
    auth: tuple[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[ProxyPeer]:
    """A running proxy for the body of the `async with`."""
    peer = ProxyPeer(names=names, auth=auth, ssl_context=ssl_context)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        yield peer
        nursery.cancel_scope.cancel()
