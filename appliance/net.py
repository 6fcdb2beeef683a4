"""Outbound HTTP: the one place that decides proxies, trusted CAs, and how network failures read.

Corporate networks are where pulls fail (ollama#729, #7726, #8050, #2622), so every outbound client
is built here: the proxy comes from Settings or from HTTPS_PROXY / HTTP_PROXY / NO_PROXY (either
case, Go's rules: loopback is never proxied, a NO_PROXY entry matches its domain and subdomains),
basic auth may sit in the proxy URL, an `https://` proxy is spoken to over TLS, and extra CAs come
from SSL_CERT_FILE / SSL_CERT_DIR / Settings.ca_file *in addition to* the public roots, so a
corporate MITM CA can be added without losing the rest. Failures are turned into one sentence that
names the host, the proxy (password hidden) and the cause.

A pull is aimed by whoever names the model, and a registry answers with redirects and token realms
of its choosing, so requests to any host other than the registry's own (`RedirectGuard`) are
checked before they are sent: never to loopback, link-local or cloud-metadata addresses (the name
is resolved and every address checked) unless the registry itself is at that very address, never
to private ranges unless the registry is itself on a private network, and only to registries the
operator allows (`allowed_registries`, default any). What such a host answers is never relayed.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import certifi
import httpx
import trio

from appliance.errors import ApplianceError, Forbidden
from appliance.gocompat.urls import redact

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=120.0)
USER_AGENT = "llm-appliance (ollama-compatible)"
HF_ALIASES = frozenset({"hf.co", "huggingface.co"})
# Cloud instance-metadata services (AWS, GCP, Azure, Alibaba, Oracle...): never a redirect target.
METADATA_HOSTS = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data",
     "instance-data.ec2.internal", "metadata.azure.com"}
)  # fmt: skip
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200",
                                      "169.254.170.2", "192.0.0.192")
)  # fmt: skip


@dataclass(frozen=True)
class NetConfig:
    """Proxy and trust settings for outbound connections, resolved once."""

    https_proxy: str | None = None
    http_proxy: str | None = None
    no_proxy: str | None = None
    ca_files: tuple[str, ...] = ()
    ca_dirs: tuple[str, ...] = ()
    allowed_registries: tuple[str, ...] = ()  # `host` or `host:port`; empty: any registry

    @classmethod
    def resolve(cls, settings: Any = None, environ: Mapping[str, str] | None = None) -> NetConfig:
        """Proxies from Settings when it has them (it already merged the environment and the
        config file), else from the environment, upper case first as Go reads it. CA files from
        SSL_CERT_FILE / SSL_CERT_DIR plus Settings.ca_file."""
        env = os.environ if environ is None else environ

        def pick(field: str, *names: str) -> str | None:
            if settings is not None and hasattr(settings, field):
                value = getattr(settings, field)
            else:
                value = next((env[name] for name in names if env.get(name)), None)
            return (value.strip() or None) if isinstance(value, str) else None

        ca_files = [env.get("SSL_CERT_FILE") or "", getattr(settings, "ca_file", None) or ""]
        return cls(
            https_proxy=pick("https_proxy", "HTTPS_PROXY", "https_proxy"),
            http_proxy=pick("http_proxy", "HTTP_PROXY", "http_proxy"),
            no_proxy=pick("no_proxy", "NO_PROXY", "no_proxy"),
            ca_files=tuple(dict.fromkeys(str(f) for f in ca_files if f)),
            ca_dirs=tuple(d for d in (env.get("SSL_CERT_DIR") or "").split(os.pathsep) if d),
            allowed_registries=tuple(getattr(settings, "allowed_registries", None) or ()),
        )

    def check_registry(self, url: httpx.URL | str) -> None:
        """`Forbidden` (403) unless the operator allows pulls and pushes from `url`'s host."""
        if not self.allowed_registries:
            return
        url = httpx.URL(url)
        host = url.host.lower()
        port = url.port or _default_port(url.scheme)
        names = {host, *HF_ALIASES} if host in HF_ALIASES else {host}
        for entry in self.allowed_registries:
            entry_host, entry_port = _entry_host_port(entry.lower())
            if entry_host.strip("[]") in names and entry_port in (None, port):
                return
        raise Forbidden(
            f"registry {host!r} is not allowed here (LLM_APPLIANCE_ALLOWED_REGISTRIES: "
            f"{', '.join(self.allowed_registries)})"
        )

    def proxy_for(self, url: httpx.URL | str) -> str | None:
        """The proxy URL (with credentials) a request to `url` goes through, or None for direct."""
        url = httpx.URL(url)
        proxy = self.https_proxy if url.scheme == "https" else self.http_proxy
        if not proxy or not _use_proxy(url, self.no_proxy):
            return None
        return proxy if "://" in proxy else f"http://{proxy}"

    def describe(self) -> str:
        """A log line of what this config will do, passwords hidden."""
        parts = [
            f"https proxy {redact(self.https_proxy) if self.https_proxy else 'none'}",
            f"http proxy {redact(self.http_proxy) if self.http_proxy else 'none'}",
        ]
        if self.no_proxy:
            parts.append(f"no_proxy {self.no_proxy}")
        if self.ca_files or self.ca_dirs:
            parts.append(f"extra CAs {', '.join(self.ca_files + self.ca_dirs)}")
        return "; ".join(parts)


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _use_proxy(url: httpx.URL, no_proxy: str | None) -> bool:
    """Go's httpproxy rules (golang.org/x/net/http/httpproxy `useProxy`)."""
    host = url.host.lower()
    port = url.port or _default_port(url.scheme)
    if host == "localhost":
        return False
    ip = _ip(host)
    if ip is not None and ip.is_loopback:
        return False
    for raw in (no_proxy or "").split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return False
        if "/" in entry:
            try:
                if ip is not None and ip in ipaddress.ip_network(entry, strict=False):
                    return False
            except ValueError:
                pass
            continue
        entry_host, entry_port = _entry_host_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        entry_ip = _ip(entry_host)
        if entry_ip is not None:
            if ip == entry_ip:
                return False
            continue
        if entry_host.startswith("*."):
            entry_host = entry_host[1:]
        if entry_host.startswith("."):
            if host.endswith(entry_host):
                return False
        elif host == entry_host or host.endswith("." + entry_host):
            return False
    return True


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _entry_host_port(entry: str) -> tuple[str, int | None]:
    """A NO_PROXY or allowed-registries entry (`host`, `host:port`, `[v6]:port`): its host and
    port, None for any port (also where the port is not a number)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None


def create_ssl_context(config: NetConfig) -> ssl.SSLContext:
    """Public roots (certifi and the system store) plus every extra CA the user named."""
    context = ssl.create_default_context(cafile=certifi.where())
    try:
        context.load_default_certs()
    except ssl.SSLError as exc:  # a broken system store must not hide the explicit CAs
        log.warning("could not load the system CA store: %s", exc)
    for path in config.ca_files:
        context.load_verify_locations(cafile=path)
    for path in config.ca_dirs:
        context.load_verify_locations(capath=path)
    return context


class _ProxyRoutingTransport(httpx.AsyncBaseTransport):
    """Sends each request direct or through its proxy, chosen by `NetConfig.proxy_for`.

    One matcher decides both the route and what error messages say, so they cannot disagree.
    """

    def __init__(self, config: NetConfig, context: ssl.SSLContext) -> None:
        self._config = config
        self._context = context
        self._direct = httpx.AsyncHTTPTransport(verify=context)
        self._proxied: dict[str, httpx.AsyncHTTPTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        proxy = self._config.proxy_for(request.url)
        if proxy is None:
            return await self._direct.handle_async_request(request)
        transport = self._proxied.get(proxy)
        if transport is None:
            proxy_context = self._context if proxy.startswith("https:") else None
            transport = httpx.AsyncHTTPTransport(
                verify=self._context, proxy=httpx.Proxy(proxy, ssl_context=proxy_context)
            )
            self._proxied[proxy] = transport
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self._direct.aclose()
        for transport in self._proxied.values():
            await transport.aclose()


class RedirectRefused(ApplianceError):
    """A registry sent a pull to an address it may not reach (a redirect or a token realm)."""

    status = 502


def address_zone(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """`metadata`, `loopback`, `local` (link-local, unspecified, multicast, reserved), `private`
    or `public`: what a redirect into that address could reach."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return "metadata"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "local"
    if ip.is_private or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT):
        return "private"
    return "public"


_CGNAT = ipaddress.ip_network("100.64.0.0/10")


async def _addresses(host: str, port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    literal = _ip(host)
    if literal is not None:
        return {literal}
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return {ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos}


class RedirectGuard:
    """A request hook that checks every request to a host other than `origin`'s.

    Allowed: public addresses; private ones when the registry itself is on a private network;
    loopback and link-local ones only when the registry itself is at that very address; cloud
    metadata never. A host reached through a proxy cannot be resolved here, so only its name (or
    literal address) is checked. Refusals say the same whatever listens at the address.
    """

    def __init__(self, config: NetConfig, origin: httpx.URL | str) -> None:
        self._config = config
        self.origin = httpx.URL(origin)
        self._origin_ips: set[Any] | None = None

    def is_foreign(self, url: httpx.URL) -> bool:
        return not _same_host(url, self.origin)

    async def __call__(self, request: httpx.Request) -> None:
        url = request.url
        if not self.is_foreign(url):
            return
        host = url.host.lower().rstrip(".")
        port = url.port or _default_port(url.scheme)
        if url.scheme not in ("http", "https"):
            raise self._refuse(url)
        if host in METADATA_HOSTS:
            raise self._refuse(url)
        if self._config.proxy_for(url) is not None and _ip(host) is None:
            return  # the proxy resolves it; its name was checked
        try:
            targets = await _addresses(host, port)
        except OSError:
            raise self._refuse(url) from None
        origin = await self._origin_addresses()
        for ip in targets:
            zone = address_zone(ip)
            if zone == "public" or (ip in origin and zone != "metadata"):
                continue
            if zone == "private" and any(address_zone(o) != "public" for o in origin):
                continue
            raise self._refuse(url)

    async def _origin_addresses(self) -> set[Any]:
        if self._origin_ips is None:
            host = self.origin.host
            try:
                if self._config.proxy_for(self.origin) is not None and _ip(host) is None:
                    self._origin_ips = set()
                else:
                    port = self.origin.port or _default_port(self.origin.scheme)
                    self._origin_ips = await _addresses(host, port)
            except OSError:
                self._origin_ips = set()
        return self._origin_ips

    def _refuse(self, url: httpx.URL) -> RedirectRefused:
        log.warning("refused a request to %s that %s sent us to", _host_port(url), self.origin.host)
        return RedirectRefused(
            f"{self.origin.host} sent the request to {url.host}, an address pulls may not reach"
        )


def _same_host(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.host.lower(), a.port or _default_port(a.scheme)) == (
        b.host.lower(),
        b.port or _default_port(b.scheme),
    )


def _host_port(url: httpx.URL) -> str:
    return url.host if url.port is None else f"{url.host}:{url.port}"


def open_client(
    config: NetConfig,
    *,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    auth: httpx.Auth | None = None,
    headers: Mapping[str, str] | None = None,
    guard: RedirectGuard | None = None,
) -> httpx.AsyncClient:
    """An httpx client that follows redirects and routes through the configured proxies.

    With a `guard`, every request to another host than the guard's origin is checked first.
    Use it as `async with open_client(config) as client:`; it owns its connection pools.
    """
    log.info("outbound connections: %s", config.describe())
    return httpx.AsyncClient(
        event_hooks={"request": [guard]} if guard is not None else None,
        transport=_ProxyRoutingTransport(config, create_ssl_context(config)),
        timeout=timeout,
        follow_redirects=True,
        trust_env=False,
        auth=auth,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
    )


def via(config: NetConfig, url: httpx.URL | str) -> str:
    """`host` or `host via proxy URL` for messages, the password hidden."""
    url = httpx.URL(url)
    host = url.host if url.port is None else f"{url.host}:{url.port}"
    proxy = config.proxy_for(url)
    return f"{host} via proxy {redact(proxy)}" if proxy else host


def describe_failure(exc: BaseException, url: httpx.URL | str, config: NetConfig) -> str:
    """`connecting to <host> [via proxy <p>]: <cause>` for a transport-level failure."""
    verb = (
        "reading from"
        if isinstance(exc, (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError))
        else "connecting to"
    )
    return f"{verb} {via(config, url)}: {failure_cause(exc, url, config)}"


def failure_cause(exc: BaseException, url: httpx.URL | str, config: NetConfig) -> str:
    """The cause of a network failure in words a user can act on."""
    url = httpx.URL(url)
    proxy = config.proxy_for(url)
    chain = list(_exception_chain(exc))
    for item in chain:
        if isinstance(item, ssl.SSLCertVerificationError):
            hint = "; add its CA with SSL_CERT_FILE" if item.verify_code in (19, 20, 21) else ""
            return f"TLS certificate verification failed: {item.verify_message}{hint}"
    for item in chain:
        if isinstance(item, httpx.ProxyError):
            return f"proxy answered {item}"
        if isinstance(item, ssl.SSLError):
            return f"TLS handshake failed: {item.reason or item}"
        if isinstance(item, socket.gaierror):
            name = httpx.URL(proxy).host if proxy else url.host
            return f"cannot resolve host name {name!r} ({item.strerror})"
        if isinstance(item, ConnectionRefusedError) or (
            isinstance(item, OSError) and item.errno == errno.ECONNREFUSED
        ):
            return "connection refused"
        if isinstance(item, httpx.TimeoutException):
            return "timed out"
        if isinstance(item, httpx.RemoteProtocolError):
            return f"connection closed unexpectedly ({item})"
    text = " ".join(str(item) for item in chain[:1])
    if "refused" in text.lower():
        return "connection refused"
    if "name or service not known" in text.lower() or "name resolution" in text.lower():
        name = httpx.URL(proxy).host if proxy else url.host
        return f"cannot resolve host name {name!r}"
    return text or type(exc).__name__


def _exception_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    stack = [exc]
    while stack:
        item = stack.pop(0)
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        if isinstance(item, BaseExceptionGroup):
            stack.extend(item.exceptions)
        stack.extend(e for e in (item.__cause__, item.__context__) if e is not None)
    return seen
