"""A client for the registry protocol Ollama's registries speak (Docker distribution v2).

Manifests by tag, blobs by digest (with HTTP Range; a 307 to a CDN on another host is followed, and
httpx drops credentials when the host changes), blob uploads and manifest PUTs for push. A 401
with a `WWW-Authenticate: Bearer realm=...,service=...,scope=...` challenge is answered with an
anonymous token from the realm, which is what public repositories need. Every failure becomes an
`ApplianceError` whose message names the host, the proxy in use and the cause.

The registry must be one the operator allows (`NetConfig.check_registry`), and every request it
sends us elsewhere (a redirect, a token realm) passes `appliance.net.RedirectGuard` first. A
failure at such a host is reported in one fixed sentence: its body is never relayed (it may be an
internal service's secret) and its cause (refused, timed out, a status) stays in the server log,
so the answers cannot map which ports are open behind the server.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx

from appliance.errors import ApplianceError
from appliance.net import NetConfig, RedirectGuard, describe_failure, via
from appliance.store.names import ModelName

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_NOT_FOUND = "pull model manifest: file does not exist"

_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^,\s]*))')


class RegistryError(ApplianceError):
    """A registry conversation that failed; the message says where and why."""

    status = 500


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="..",service=".."` -> ("bearer", {"realm": .., "service": ..})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), params


class BearerChallengeAuth(httpx.Auth):
    """Answers registry bearer challenges with anonymous tokens, cached per scope."""

    def __init__(self) -> None:
        self._token: str | None = None
        self.tokens_fetched = 0

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self._token is not None and "authorization" not in request.headers:
            request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code != 401:
            return
        scheme, params = parse_challenge(response.headers.get("www-authenticate", ""))
        if scheme != "bearer" or not params.get("realm"):
            return
        query = {k: params[k] for k in ("service", "scope") if params.get(k)}
        token_response = yield httpx.Request("GET", params["realm"], params=query)
        if token_response.status_code != 200:
            return
        await token_response.aread()
        try:
            body: Any = token_response.json()
        except ValueError:
            return
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not token:
            return
        self._token = token
        self.tokens_fetched += 1
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


class Registry:
    """One repository (`<ns>/<model>`) on one registry host."""

    def __init__(
        self, client: httpx.AsyncClient, net: NetConfig, name: ModelName, *, insecure: bool = False
    ) -> None:
        self.client = client
        self.net = net
        self.name = name
        self.base_url = registry_url(name, insecure=insecure)
        self.repo = f"{name.namespace}/{name.model}"
        net.check_registry(self.base_url)
        self.guard = guard_client(client, net, self.base_url)

    def where(self) -> str:
        """`host` or `host via proxy ...`, for logs."""
        return via(self.net, self.base_url)

    def manifest_url(self, tag: str | None = None) -> str:
        return f"{self.base_url}/v2/{self.repo}/manifests/{tag or self.name.tag}"

    def blob_url(self, digest: str) -> str:
        return f"{self.base_url}/v2/{self.repo}/blobs/{digest}"

    def failure(self, context: str, exc: httpx.HTTPError) -> RegistryError:
        """A transport failure as one sentence: context, host, proxy, cause."""
        url = failed_url(exc, self.base_url)
        if self.guard.is_foreign(url):
            return foreign_failure(context, url, self.guard, describe_failure(exc, url, self.net))
        return RegistryError(f"{context}: {describe_failure(exc, url, self.net)}")

    def status_failure(self, context: str, response: httpx.Response) -> RegistryError:
        url = response.request.url
        if self.guard.is_foreign(url):
            reason = f"answered {response.status_code} {response.reason_phrase}".strip()
            return foreign_failure(context, url, self.guard, reason)
        proxy = self.net.proxy_for(url)
        reason = f"{response.status_code} {response.reason_phrase}".strip()
        if proxy and url.scheme == "http" and response.status_code in (407, 502, 503, 504):
            return RegistryError(
                f"{context}: connecting to {via(self.net, url)}: proxy answered {reason}"
            )
        detail = _registry_message(response)
        host = url.host if url.port is None else f"{url.host}:{url.port}"
        return RegistryError(
            f"{context}: {host} answered {reason}{': ' + detail if detail else ''}"
        )

    async def get_manifest(self) -> bytes:
        """The manifest bytes for the name's tag, exactly as served (their hash is the digest)."""
        context = "pull model manifest"
        try:
            response = await self.client.get(
                self.manifest_url(), headers={"Accept": MANIFEST_MEDIA_TYPE}
            )
        except httpx.HTTPError as exc:
            raise self.failure(context, exc) from exc
        if response.status_code == 404:
            raise RegistryError(MANIFEST_NOT_FOUND)
        if response.status_code != 200:
            raise self.status_failure(context, response)
        return response.content

    @asynccontextmanager
    async def open_blob(self, digest: str, start: int, end: int) -> AsyncIterator[httpx.Response]:
        """A streaming response for bytes `start..end` (inclusive) of a blob; 200 or 206 only.

        Transport errors propagate as httpx errors so the caller can retry them, except a
        connection that failed at a host the registry redirected to: retrying that would tell a
        closed port (retried for a minute) from an open one (an answer at once).
        """
        headers = {"Range": f"bytes={start}-{end}"}
        context = f"pulling {digest[7:19]}"
        async with AsyncExitStack() as stack:
            try:
                response = await stack.enter_async_context(
                    self.client.stream("GET", self.blob_url(digest), headers=headers)
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if self.guard.is_foreign(failed_url(exc, self.base_url)):
                    raise self.failure(context, exc) from exc
                raise
            if response.status_code not in (200, 206):
                await response.aread()
                raise self.status_failure(context, response)
            yield response

    async def blob_exists(self, digest: str) -> bool:
        context = f"pushing {digest[7:19]}"
        try:
            response = await self.client.head(self.blob_url(digest))
        except httpx.HTTPError as exc:
            raise self.failure(context, exc) from exc
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self.status_failure(context, response)

    async def start_upload(self, digest: str) -> httpx.URL:
        """POST /blobs/uploads/ and return the absolute upload location."""
        context = f"pushing {digest[7:19]}"
        url = f"{self.base_url}/v2/{self.repo}/blobs/uploads/"
        try:
            response = await self.client.post(url)
        except httpx.HTTPError as exc:
            raise self.failure(context, exc) from exc
        if response.status_code != 202 or "location" not in response.headers:
            raise self.status_failure(context, response)
        return response.request.url.join(response.headers["location"])

    async def send_chunk(
        self, location: httpx.URL, digest: str, body: Any, start: int, length: int, *, final: bool
    ) -> httpx.URL:
        """PATCH one chunk (or PUT the last with ?digest=); returns the next location."""
        context = f"pushing {digest[7:19]}"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        try:
            if final:
                url = location.copy_merge_params({"digest": digest})
                response = await self.client.put(url, content=body, headers=headers)
            else:
                headers["Content-Range"] = f"{start}-{start + length - 1}"
                response = await self.client.patch(location, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise self.failure(context, exc) from exc
        expected = 201 if final else 202
        if response.status_code != expected:
            raise self.status_failure(context, response)
        return response.request.url.join(response.headers.get("location", str(location)))

    async def put_manifest(self, data: bytes) -> None:
        context = "pushing manifest"
        try:
            response = await self.client.put(
                self.manifest_url(), content=data, headers={"Content-Type": MANIFEST_MEDIA_TYPE}
            )
        except httpx.HTTPError as exc:
            raise self.failure(context, exc) from exc
        if response.status_code not in (200, 201, 202):
            raise self.status_failure(context, response)


def registry_url(name: ModelName, *, insecure: bool = False) -> str:
    """The base URL a pull or push of `name` talks to."""
    scheme = "http" if insecure or name.scheme == "http" else "https"
    return f"{scheme}://{name.host}"


def check_allowed(name: ModelName, settings: Any, *, insecure: bool = False) -> None:
    """`Forbidden` (403) before any progress line when the operator does not allow `name`'s
    registry (LLM_APPLIANCE_ALLOWED_REGISTRIES); hf.co counts as a registry."""
    NetConfig.resolve(settings).check_registry(registry_url(name, insecure=insecure))


def guard_client(client: httpx.AsyncClient, net: NetConfig, origin: str) -> RedirectGuard:
    """Check every request `client` sends to a host other than `origin`'s (see RedirectGuard)."""
    guard = RedirectGuard(net, origin)
    hooks = client.event_hooks
    client.event_hooks = {**hooks, "request": [*hooks.get("request", []), guard]}
    return guard


def foreign_failure(
    context: str, url: httpx.URL, guard: RedirectGuard, cause: str
) -> RegistryError:
    """The one sentence for any failure at a host the registry sent us to; the cause is logged."""
    log.warning("%s: %s (sent there by %s): %s", context, url.host, guard.origin.host, cause)
    return RegistryError(
        f"{context}: the download from {url.host}, where {guard.origin.host} sent it, failed"
    )


def failed_url(exc: httpx.HTTPError, default: str | httpx.URL) -> httpx.URL:
    """The URL whose request failed (after redirects: the CDN's), else `default`."""
    try:
        return exc.request.url
    except RuntimeError:  # httpx raises when the error carries no request
        return httpx.URL(default)


def _registry_message(response: httpx.Response) -> str:
    """The first message of a registry's `{"errors": [...]}` body, if any."""
    try:
        body = response.json()
    except (ValueError, httpx.ResponseNotRead):
        return ""
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("message") or errors[0].get("code") or "")
        if isinstance(body.get("error"), str):
            return body["error"]
    return ""
