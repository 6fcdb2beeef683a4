"""Ollama's browser-facing protections as plain ASGI middleware: CORS, then the allowed-hosts check.

A local LLM server is reachable from every web page the user opens. Ollama answers that with
gin-contrib/cors (allowed origins, wildcard patterns, preflights) and a Host-header check against
DNS rebinding while bound to loopback (reference §1). Browser apps and extensions built for Ollama
depend on exactly those answers, so both are reproduced here, in Ollama's order, before any
route runs. Rejections are empty-bodied 403s, as Ollama's are.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import trio

from appliance.settings.config import Settings, check_origins
from appliance.settings.platform import local_addresses as _local_addresses

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

ALLOW_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "User-Agent",
    "Accept",
    "X-Requested-With",
    # OpenAI SDK headers
    "OpenAI-Beta",
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-custom-poll-interval",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-poll-helper",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
    "x-stainless-read-timeout",
    # Our API keys, and Anthropic's SDK in a browser (/v1/messages)
    "X-Api-Key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
)
MAX_AGE_SECONDS = 12 * 3600
LOCAL_TLDS = ("localhost", "local", "internal")


def _canonical_header_key(name: str) -> str:
    """Go's http.CanonicalHeaderKey: `x-stainless-os` -> `X-Stainless-Os`."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


@dataclass(frozen=True)
class CorsPolicy:
    """gin-contrib/cors v1.7.2 as Ollama configures it (AllowWildcard, AllowBrowserExtensions)."""

    allow_all: bool
    exact: frozenset[str]
    wildcards: tuple[tuple[str, str], ...]

    @classmethod
    def from_origins(cls, origins: tuple[str, ...] | list[str]) -> CorsPolicy:
        check_origins(tuple(origins), "origins")
        exact = frozenset(o.strip().lower() for o in origins)
        wildcards = []
        for origin in origins:
            if "*" not in origin:
                continue
            i = origin.index("*")
            if i == 0:
                wildcards.append(("*", origin[1:]))
            elif i == len(origin) - 1:
                wildcards.append((origin[:i], "*"))
            else:
                wildcards.append((origin[:i], origin[i + 1 :]))
        return cls(allow_all="*" in origins, exact=exact, wildcards=tuple(wildcards))

    def allows(self, origin: str) -> bool:
        if self.allow_all or origin in self.exact:
            return True
        for prefix, suffix in self.wildcards:
            if prefix == "*" and origin.endswith(suffix):
                return True
            if suffix == "*" and origin.startswith(prefix):
                return True
            if origin.startswith(prefix) and origin.endswith(suffix):
                return True
        return False

    def preflight_headers(self, origin: str) -> Headers:
        headers = [
            (b"access-control-allow-methods", ",".join(ALLOW_METHODS).encode()),
            (
                b"access-control-allow-headers",
                ",".join(
                    _canonical_header_key(h)
                    for h in dict.fromkeys(h.lower() for h in ALLOW_HEADERS)
                ).encode(),
            ),
            (b"access-control-max-age", str(MAX_AGE_SECONDS).encode()),
        ]
        if self.allow_all:
            return headers + [(b"access-control-allow-origin", b"*")]
        return headers + [
            (b"vary", b"Origin"),
            (b"vary", b"Access-Control-Request-Method"),
            (b"vary", b"Access-Control-Request-Headers"),
            (b"access-control-allow-origin", origin.encode("latin-1")),
        ]

    def normal_headers(self, origin: str) -> Headers:
        if self.allow_all:
            return [(b"access-control-allow-origin", b"*")]
        return [(b"vary", b"Origin"), (b"access-control-allow-origin", origin.encode("latin-1"))]


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _unmap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


_PRIVATE_NETS = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


def _is_loopback(ip: IPAddress) -> bool:
    return _unmap(ip).is_loopback


def _is_private(ip: IPAddress) -> bool:
    """Go's netip.Addr.IsPrivate (RFC 1918 and RFC 4193 only; narrower than Python's)."""
    plain = _unmap(ip)
    return any(plain.version == net.version and plain in net for net in _PRIVATE_NETS)


def _split_host(host_header: str) -> str:
    """The host part of a Host header (Go's SplitHostPort, falling back to the whole value)."""
    if host_header.startswith("["):
        end = host_header.find("]")
        if end > 0 and host_header[end + 1 : end + 2] in ("", ":"):
            return host_header[1:end]  # brackets stripped even without a port
        return host_header
    if host_header.count(":") == 1:
        return host_header.split(":", 1)[0]
    return host_header


class SecurityMiddleware:
    """CORS (gin-contrib/cors) followed by Ollama's allowedHostsMiddleware."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        *,
        hostname: str | None = None,
        local_addresses: Callable[[], frozenset[str]] = _local_addresses,
    ) -> None:
        self.app = app
        self.cors = CorsPolicy.from_origins(settings.origins)
        self.bind_host = settings.host
        self.hostname = (hostname if hostname is not None else socket.gethostname()).lower()
        self.local_addresses = local_addresses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        host = _header(scope, b"host")
        method = scope.get("method", "GET")
        extra: Headers = []
        if origin and origin not in (f"http://{host}", f"https://{host}"):
            if not self.cors.allows(origin):
                await _answer(send, 403)
                return
            if method == "OPTIONS":
                await _answer(send, 204, self.cors.preflight_headers(origin))
                return
            extra = self.cors.normal_headers(origin)
        if self._listening_on_loopback(scope):
            status = await self._check_host(host, method)
            if status is not None:
                await _answer(send, status, extra)
                return
        if extra:
            send = _adding_headers(send, extra)
        await self.app(scope, receive, send)

    def _listening_on_loopback(self, scope: Scope) -> bool:
        """Whether the connection arrived on a loopback listener (the check applies only then)."""
        server = scope.get("server")
        if server:
            ip = _ip(str(server[0]))
            return True if ip is None else _is_loopback(ip)
        if self.bind_host == "localhost":
            return True
        ip = _ip(self.bind_host)
        return ip is not None and _is_loopback(ip)

    async def _check_host(self, host_header: str, method: str) -> int | None:
        """None to let the request through, else the status to answer (403, or 204 for OPTIONS)."""
        host = _split_host(host_header)
        ip = _ip(host)
        if ip is not None:
            plain = _unmap(ip)
            if plain.is_loopback or _is_private(ip) or ip.is_unspecified:
                return None
            addresses = await trio.to_thread.run_sync(self.local_addresses)
            if any(_ip(a) == ip for a in addresses):
                return None
        if self._allowed_hostname(host):
            return 204 if method == "OPTIONS" else None
        return 403

    def _allowed_hostname(self, host: str) -> bool:
        host = host.lower()
        if host in ("", "localhost") or host == self.hostname:
            return True
        return any(host.endswith("." + tld) for tld in LOCAL_TLDS)


def wrap_security(asgi_app: ASGIApp, settings: Settings, **kwargs: Any) -> ASGIApp:
    """`asgi_app` behind Ollama's CORS and allowed-hosts checks, configured from `settings`."""
    return SecurityMiddleware(asgi_app, settings, **kwargs)


def _header(scope: Scope, name: bytes) -> str:
    """The first value of a request header (Go's Header.Get), or ""."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


async def _answer(send: Send, status: int, headers: Headers | None = None) -> None:
    """An empty-bodied answer, as gin's AbortWithStatus gives."""
    headers = list(headers or [])
    if status != 204:
        headers.append((b"content-length", b"0"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _adding_headers(send: Send, extra: Headers) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = list(message.get("headers", ())) + extra
        await send(message)

    return wrapped
