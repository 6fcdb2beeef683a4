"""Optional API keys as ASGI middleware: off unless a key (or a key file) is configured.

Ollama has no authentication and tells users to front it with a proxy (field.md, "API keys / auth");
thousands of exposed servers show how that goes. With LLM_APPLIANCE_API_KEYS or
LLM_APPLIANCE_API_KEY_FILE set, every request needs `Authorization: Bearer <key>` or
`X-Api-Key: <key>`, except the health check (`GET|HEAD /`, which load balancers and `ollama`'s own
"is it running" probe use) and OPTIONS (CORS preflights carry no credentials by design). Keys are
compared in constant time over their SHA-256 digests, so neither the key nor its length leaks
through timing. The key file is re-read when it changes (checked at most once a second, in a
worker thread), so keys rotate without a restart; an unreadable file keeps the last good keys
(fail closed), and a configured but empty key file lets nobody in.

This sits inside the CORS middleware, so a 401 to a browser still carries the CORS headers and the
page can read it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from appliance.api.errors import dialect_for_path, error_parts
from appliance.api.security import ASGIApp, Receive, Scope, Send
from appliance.config import Settings, read_api_key_file
from appliance.errors import Unauthorized

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


class AuthMiddleware:
    """401 for a request without a valid key, in the client's dialect (native, OpenAI or
    Anthropic)."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._open(scope):
            await self.app(scope, receive, send)
            return
        await self.keys.refresh()
        key = presented_key(scope)
        if key is not None and self.keys.accepts(key):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        status, headers, body = error_parts(Unauthorized(), dialect=dialect_for_path(path))
        raw = [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    @staticmethod
    def _open(scope: Scope) -> bool:
        method = scope.get("method", "GET")
        if method == "OPTIONS":
            return True
        return method in OPEN_METHODS and scope.get("path") in OPEN_PATHS


def wrap_auth(asgi_app: ASGIApp, settings: Settings, **kwargs: Any) -> ASGIApp:
    """`asgi_app` behind API-key checks when `settings` configure keys; unchanged otherwise."""
    if not settings.auth_enabled:
        return asgi_app
    return AuthMiddleware(asgi_app, KeyRing(settings.api_keys, settings.api_key_file, **kwargs))
