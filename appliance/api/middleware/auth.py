"""Optional API keys in three scopes, as ASGI middleware: off unless a key (or a key file) is set.

Ollama has no authentication and tells users to front it with a proxy (field.md, "API keys / auth");
thousands of exposed servers show how that goes. Keys come in scopes, each with its own routes:

- inference (LLM_APPLIANCE_API_KEYS / _API_KEY_FILE): every route but the two below;
- admin (LLM_APPLIANCE_ADMIN_KEYS / _ADMIN_KEY_FILE): the routes that change the store or what it
  holds (`/api/pull`, `/api/push`, `/api/create`, `/api/copy`, `/api/delete`, `/api/blobs/*`);
  an admin key also works on every other route;
- metrics (LLM_APPLIANCE_METRICS_KEYS / _METRICS_KEY_FILE): `/metrics`, so a Prometheus scraper
  holds no key that can generate.

A route whose own scope has no keys falls back to the inference keys (today's behaviour: one key
for everything), and is open when those are unset too. So admin keys without inference keys mean
"inference open, store changes need an admin key". A valid key of the wrong scope gets 403 naming
the scope needed; no key or an unknown one gets 401. The health check (`GET|HEAD /`, which load
balancers and `ollama`'s own "is it running" probe use) and OPTIONS (CORS preflights carry no
credentials by design) stay open.

A key is `Authorization: Bearer <key>` or `X-Api-Key: <key>`, compared in constant time over
SHA-256 digests against every key of every scope, so neither a key, its length nor its scope leaks
through timing. Key files are re-read when they change (checked at most once a second, in a worker
thread), so keys rotate without a restart; an unreadable file keeps the last good keys (fail
closed), and a configured but empty key file lets nobody into its scope.

This sits inside the CORS middleware, so a 401 to a browser still carries the CORS headers and the
page can read it.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from appliance.api.errors import dialect_for_path, error_parts
from appliance.api.middleware.security import ASGIApp, Receive, Scope, Send
from appliance.errors import Forbidden, Unauthorized
from appliance.settings.config import Settings, read_api_key_file

log = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0
OPEN_PATHS = frozenset({"/"})
OPEN_METHODS = frozenset({"GET", "HEAD"})


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class KeyRing:
    """The accepted keys: the fixed ones plus the key file's, reloaded when the file changes."""

    def __init__(
        self,
        keys: tuple[str, ...],
        key_file: Path | None,
        *,
        recheck: float = RECHECK_SECONDS,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._fixed = tuple(_digest(k) for k in keys)
        self._file = key_file
        self._recheck = recheck
        self._clock = clock
        self._file_digests: tuple[bytes, ...] = ()
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = -float("inf")  # the first request reads the file

    async def refresh(self) -> None:
        """Re-read the key file if it changed (stat and read in a worker thread)."""
        if self._file is None:
            return
        now = self._clock()
        if now - self._checked_at < self._recheck:
            return
        self._checked_at = now
        await trio.to_thread.run_sync(self._reload)

    def _reload(self) -> None:
        assert self._file is not None
        try:
            stat = os.stat(self._file)
            signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if signature == self._signature:
                return
            keys = read_api_key_file(self._file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            if self._signature is not None:
                log.warning(
                    "cannot read API key file %s (keeping the last keys): %s", self._file, exc
                )
                self._signature = None
            return
        self._signature = signature
        self._file_digests = tuple(_digest(k) for k in keys)
        log.info("API key file %s: %d keys", self._file, len(keys))

    def accepts(self, presented: bytes) -> bool:
        """Whether `presented` is a key; every key is compared, whichever matches."""
        digest = _digest(presented)
        ok = False
        for known in self._fixed + self._file_digests:
            ok |= hmac.compare_digest(digest, known)
        return ok


def presented_key(scope: Scope) -> bytes | None:
    """The key from `Authorization: Bearer <key>` or `X-Api-Key: <key>`, or None."""
    api_key = None
    for name, value in scope.get("headers", ()):
        name = name.lower()
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and api_key is None and value.strip():
            api_key = value.strip()
    return api_key


class KeyScope(str, enum.Enum):
    INFERENCE = "inference"
    ADMIN = "admin"
    METRICS = "metrics"


ADMIN_ROUTES = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs")
METRICS_ROUTE = "/metrics"
_SLASHES = re.compile(r"/{2,}")


def route_scope(path: str) -> tuple[KeyScope, str]:
    """The scope a path belongs to, and the route name to quote in a 403.

    Paths are matched as the router would match them (it merges slashes and ignores a trailing
    one), so `/api//pull/` is still a store change.
    """
    path = _SLASHES.sub("/", path).rstrip("/") or "/"
    for route in ADMIN_ROUTES:
        if path == route or path.startswith(route + "/"):
            return KeyScope.ADMIN, route
    if path == METRICS_ROUTE:
        return KeyScope.METRICS, path
    return KeyScope.INFERENCE, path


NEEDS = {
    KeyScope.ADMIN: "changes the model store and needs an admin key (LLM_APPLIANCE_ADMIN_KEYS)",
    KeyScope.METRICS: "needs a metrics key (LLM_APPLIANCE_METRICS_KEYS)",
    KeyScope.INFERENCE: "needs an API key (LLM_APPLIANCE_API_KEYS)",
}


class ScopedKeys:
    """The key ring of each scope that has keys configured."""

    def __init__(self, rings: dict[KeyScope, KeyRing]) -> None:
        self.rings = rings

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> ScopedKeys:
        rings = {}
        if settings.auth_enabled:
            rings[KeyScope.INFERENCE] = KeyRing(settings.api_keys, settings.api_key_file, **kwargs)
        if settings.admin_auth_enabled:
            rings[KeyScope.ADMIN] = KeyRing(settings.admin_keys, settings.admin_key_file, **kwargs)
        if settings.metrics_auth_enabled:
            rings[KeyScope.METRICS] = KeyRing(
                settings.metrics_keys, settings.metrics_key_file, **kwargs
            )
        return cls(rings)

    async def refresh(self) -> None:
        for ring in self.rings.values():
            await ring.refresh()

    def guard(self, scope: KeyScope) -> KeyScope | None:
        """Whose keys a route of `scope` needs: its own, else the inference keys, else none."""
        if scope in self.rings:
            return scope
        return KeyScope.INFERENCE if KeyScope.INFERENCE in self.rings else None

    def held(self, presented: bytes) -> set[KeyScope]:
        """Every scope `presented` belongs to; every ring is compared, whatever matches."""
        return {scope for scope, ring in self.rings.items() if ring.accepts(presented)}


class AuthMiddleware:
    """401 without a valid key, 403 with a key of the wrong scope, in the client's dialect."""

    def __init__(self, app: ASGIApp, keys: ScopedKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._open(scope):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        needed, route = route_scope(path)
        guard = self.keys.guard(needed)
        if guard is None:
            await self.app(scope, receive, send)
            return
        await self.keys.refresh()
        key = presented_key(scope)
        held = self.keys.held(key) if key is not None else set()
        if held & {guard, KeyScope.ADMIN}:
            await self.app(scope, receive, send)
            return
        dialect = dialect_for_path(path)
        if not held:
            await _answer(send, Unauthorized(), dialect)
            return
        extra = {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{guard.value}"'}
        await _answer(send, Forbidden(f"forbidden: {route} {NEEDS[guard]}"), dialect, extra)

    @staticmethod
    def _open(scope: Scope) -> bool:
        method = scope.get("method", "GET")
        if method == "OPTIONS":
            return True
        return method in OPEN_METHODS and scope.get("path") in OPEN_PATHS


async def _answer(
    send: Send, exc: Exception, dialect: str, extra: dict[str, str] | None = None
) -> None:
    """The error answer in the client's dialect (native, OpenAI or Anthropic)."""
    status, headers, body = error_parts(exc, dialect=dialect)
    headers.update(extra or {})
    raw = [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def wrap_auth(asgi_app: ASGIApp, settings: Settings, **kwargs: Any) -> ASGIApp:
    """`asgi_app` behind API-key checks when `settings` configure keys; unchanged otherwise."""
    if not settings.any_auth_enabled:
        return asgi_app
    return AuthMiddleware(asgi_app, ScopedKeys.from_settings(settings, **kwargs))


def exposure_warning(settings: Settings) -> str | None:
    """What a bind reachable from the network exposes without inference keys, or None.

    Nothing is refused (Ollama's Docker image binds 0.0.0.0 by design); this is said at start and
    by `doctor`.
    """
    if settings.loopback_only or settings.auth_enabled:
        return None
    where = (
        f"{settings.host or '0.0.0.0'} (every network interface)"
        if settings.host in ("", "0.0.0.0", "::")
        else f"{settings.host} (reachable from other machines)"
    )
    if settings.admin_auth_enabled:
        return (
            f"bound to {where} without API keys: anyone who can reach it can run every model "
            "(/api/generate, /api/chat, /v1/*); store changes need an admin key. To require a key "
            "for inference too, set LLM_APPLIANCE_API_KEYS=<key> or LLM_APPLIANCE_API_KEY_FILE"
        )
    return (
        f"bound to {where} without an API key: anyone who can reach it can run every model, "
        "pull models onto this disk, overwrite and delete them (/api/generate, /api/chat, "
        "/v1/*, /api/pull, /api/create, /api/delete). Set LLM_APPLIANCE_API_KEYS=<key> (or "
        "LLM_APPLIANCE_API_KEY_FILE) and LLM_APPLIANCE_ADMIN_KEYS=<another key> for store "
        "changes, or bind to 127.0.0.1 (OLLAMA_HOST=127.0.0.1:11434)"
    )
