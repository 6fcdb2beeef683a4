"""CORS and the allowed-hosts (DNS-rebinding) check, as Ollama answers them (reference §1).

Conventions: most tests drive the middleware with raw ASGI calls around a tiny app that records
whether it ran, with `scope["server"]` saying which address the connection arrived on; one test
runs the real appliance (tests/helpers.py `running_appliance`) on 127.0.0.1 port 0 and talks real
HTTP to it. The machine's
hostname and interface addresses are injected (`hostname=`, `local_addresses=`) so results do not
depend on the host. Every I/O test has a `trio.fail_after` bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import running_appliance

from appliance.api.middleware.security import wrap_security
from appliance.settings.config import DEFAULT_ORIGINS, ConfigError, Settings

LOOPBACK = ("127.0.0.1", 11434)


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    app_ran: bool

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


@dataclass
class Recorder:
    """The app under the middleware: answers 200 "ok" and remembers that it ran."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.calls.append(scope)
        if scope["type"] == "lifespan" and receive is not None:
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]  # startup / shutdown
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"ok"})


def stack(origins: tuple[str, ...] = DEFAULT_ORIGINS, **kwargs: Any) -> tuple[Any, Recorder]:
    app = Recorder()
    kwargs.setdefault("hostname", "edgebox")
    kwargs.setdefault("local_addresses", lambda: frozenset({"127.0.0.1", "::1", "203.0.113.7"}))
    settings = Settings.for_tests(origins=origins)
    return wrap_security(app, settings, **kwargs), app


async def call(
    asgi: Any,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    server: tuple[str, int] | None = LOOPBACK,
    recorder: Recorder | None = None,
) -> Answer:
    headers = {"Host": "127.0.0.1:11434", **(headers or {})}
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": "/api/tags", "raw_path": b"/api/tags", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": server,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items() if v is not None],
    }  # fmt: skip
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    before = len(recorder.calls) if recorder else 0
    with trio.fail_after(5):
        await asgi(scope, receive, send)
    start = sent[0]
    return Answer(
        status=start["status"],
        headers=[(k.decode().lower(), v.decode()) for k, v in start["headers"]],
        body=b"".join(m.get("body", b"") for m in sent[1:]),
        app_ran=bool(recorder and len(recorder.calls) > before),
    )


# --- CORS ----------------------------------------------------------------------------------------


async def test_request_without_origin_is_not_cors() -> None:
    asgi, app = stack()
    answer = await call(asgi, recorder=app)
    assert (answer.status, answer.body, answer.app_ran) == (200, b"ok", True)
    assert answer.get("access-control-allow-origin") is None


async def test_allowed_origin_is_echoed_with_vary() -> None:
    asgi, app = stack()
    answer = await call(asgi, headers={"Origin": "http://localhost:3000"}, recorder=app)
    assert answer.status == 200 and answer.app_ran
    assert answer.get("access-control-allow-origin") == "http://localhost:3000"
    assert answer.all("vary") == ["Origin"]


async def test_disallowed_origin_gets_403_with_empty_body() -> None:
    asgi, app = stack()
    answer = await call(asgi, headers={"Origin": "http://evil.example"}, recorder=app)
    assert (answer.status, answer.body, answer.app_ran) == (403, b"", False)
    assert answer.get("content-length") == "0"


async def test_origin_equal_to_own_host_is_not_cors() -> None:
    asgi, app = stack()
    answer = await call(
        asgi, headers={"Origin": "http://edgebox:11434", "Host": "edgebox:11434"}, recorder=app
    )
    assert answer.status == 200 and answer.app_ran
    assert answer.get("access-control-allow-origin") is None


async def test_allowed_preflight_gets_204_with_cors_headers() -> None:
    asgi, app = stack()
    answer = await call(
        asgi,
        "OPTIONS",
        headers={"Origin": "http://127.0.0.1:5173", "Access-Control-Request-Method": "POST"},
        recorder=app,
    )
    assert (answer.status, answer.body, answer.app_ran) == (204, b"", False)
    assert answer.get("access-control-allow-origin") == "http://127.0.0.1:5173"
    assert answer.get("access-control-allow-methods") == "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
    assert answer.get("access-control-max-age") == "43200"
    assert answer.all("vary") == [
        "Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers"
    ]  # fmt: skip
    allowed = answer.get("access-control-allow-headers") or ""
    assert allowed.startswith("Authorization,Content-Type,User-Agent,Accept,X-Requested-With,")
    assert "Openai-Beta" in allowed and "X-Stainless-Retry-Count" in allowed


async def test_a_browser_may_send_an_api_key_and_anthropic_headers() -> None:
    asgi, app = stack()
    answer = await call(
        asgi,
        "OPTIONS",
        headers={"Origin": "http://127.0.0.1:5173", "Access-Control-Request-Method": "POST"},
        recorder=app,
    )
    allowed = (answer.get("access-control-allow-headers") or "").split(",")
    assert {"X-Api-Key", "Anthropic-Version", "Anthropic-Beta"} <= set(allowed)


async def test_disallowed_preflight_gets_403() -> None:
    asgi, app = stack()
    answer = await call(asgi, "OPTIONS", headers={"Origin": "https://evil.example"}, recorder=app)
    assert (answer.status, answer.app_ran) == (403, False)


async def test_star_allows_every_origin_and_answers_star() -> None:
    asgi, app = stack(("*",) + DEFAULT_ORIGINS)
    normal = await call(asgi, headers={"Origin": "https://anything.example"}, recorder=app)
    assert normal.status == 200 and normal.get("access-control-allow-origin") == "*"
    assert normal.get("vary") is None
    pre = await call(asgi, "OPTIONS", headers={"Origin": "https://anything.example"})
    assert pre.status == 204 and pre.get("access-control-allow-origin") == "*"


@pytest.mark.parametrize(
    ("pattern", "origin", "allowed"),
    [
        ("chrome-extension://*", "chrome-extension://abcdef", True),
        ("chrome-extension://*", "moz-extension://abcdef", False),
        ("*.example.com", "https://app.example.com", True),
        ("*.example.com", "https://example.org", False),
        ("https://*.example.com", "https://app.example.com", True),
        ("https://*.example.com", "http://app.example.com", False),
    ],
)
async def test_wildcard_origins_match_as_prefix_or_suffix(
    pattern: str, origin: str, allowed: bool
) -> None:
    asgi, _ = stack((pattern,) + DEFAULT_ORIGINS)
    answer = await call(asgi, headers={"Origin": origin})
    assert answer.status == (200 if allowed else 403)


async def test_exact_origins_are_lower_cased_but_requests_are_not() -> None:
    asgi, _ = stack(("http://Example.COM",) + DEFAULT_ORIGINS)
    assert (await call(asgi, headers={"Origin": "http://example.com"})).status == 200
    assert (await call(asgi, headers={"Origin": "http://Example.COM"})).status == 403


def test_invalid_origins_are_refused_at_wrap_time() -> None:
    with pytest.raises(ConfigError):
        stack(("example.com",))


# --- allowed hosts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["localhost:11434", "LOCALHOST", "", "edgebox:11434", "EdgeBox", "ai.localhost",
     "nas.local:11434", "svc.internal", "127.0.0.1:11434", "127.0.0.2", "10.1.2.3",
     "172.16.0.9", "192.168.1.20:11434", "[::1]:11434", "[::1]", "0.0.0.0", "[fd00::5]:1",
     "203.0.113.7:11434"],
)  # fmt: skip
async def test_loopback_listener_accepts_local_hosts(host: str) -> None:
    asgi, app = stack()
    answer = await call(asgi, headers={"Host": host}, recorder=app)
    assert answer.status == 200 and answer.app_ran


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:11434", "localhost.evil.example", "8.8.8.8", "[2001:db8::1]:80",
     "local", "internal.evil"],
)  # fmt: skip
async def test_loopback_listener_rejects_foreign_hosts_with_empty_403(host: str) -> None:
    asgi, app = stack()
    answer = await call(asgi, headers={"Host": host}, recorder=app)
    assert (answer.status, answer.body, answer.app_ran) == (403, b"", False)


async def test_options_on_an_allowed_hostname_is_answered_204() -> None:
    asgi, app = stack()
    answer = await call(asgi, "OPTIONS", headers={"Host": "localhost:11434"}, recorder=app)
    assert (answer.status, answer.app_ran) == (204, False)


async def test_options_on_an_ip_host_reaches_the_app() -> None:
    asgi, app = stack()
    answer = await call(asgi, "OPTIONS", headers={"Host": "127.0.0.1:11434"}, recorder=app)
    assert answer.app_ran


@pytest.mark.parametrize("server", [("0.0.0.0", 11434), ("10.0.0.5", 11434), ("::", 11434)])
async def test_non_loopback_listener_accepts_any_host(server: tuple[str, int]) -> None:
    asgi, app = stack()
    answer = await call(asgi, headers={"Host": "evil.example"}, server=server, recorder=app)
    assert answer.status == 200 and answer.app_ran


async def test_without_server_address_the_bind_host_decides() -> None:
    app = Recorder()
    asgi = wrap_security(app, Settings.for_tests(host="0.0.0.0"), hostname="edgebox")
    assert (await call(asgi, headers={"Host": "evil.example"}, server=None)).status == 200
    asgi = wrap_security(app, Settings.for_tests(host="127.0.0.1"), hostname="edgebox")
    assert (await call(asgi, headers={"Host": "evil.example"}, server=None)).status == 403


async def test_host_rejection_keeps_cors_headers_of_an_allowed_origin() -> None:
    asgi, _ = stack()
    answer = await call(asgi, headers={"Host": "evil.example", "Origin": "http://localhost"})
    assert answer.status == 403
    assert answer.get("access-control-allow-origin") == "http://localhost"


async def test_non_http_scopes_pass_through() -> None:
    asgi, app = stack()
    with trio.fail_after(5):
        await asgi({"type": "lifespan"}, None, None)
    assert app.calls == [{"type": "lifespan"}]


# --- end to end ----------------------------------------------------------------------------------


async def test_real_server_on_loopback_enforces_both_checks(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_appliance(tmp_path / "models") as server:
            async with server.client(trust_env=False) as client:
                ok = await client.get("/")
                assert (ok.status_code, ok.text) == (200, "Ollama is running")
                rebound = await client.get("/", headers={"Host": "attacker.example"})
                assert (rebound.status_code, rebound.content) == (403, b"")
                cross = await client.get("/", headers={"Origin": "https://evil.example"})
                assert cross.status_code == 403
                pre = await client.options(
                    "/",
                    headers={
                        "Origin": "http://localhost:8080",
                        "Access-Control-Request-Method": "POST",
                    },
                )
                assert pre.status_code == 204
                assert pre.headers["access-control-allow-origin"] == "http://localhost:8080"
