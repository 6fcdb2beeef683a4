"""Optional API keys on the real server: 401 in both dialects, Bearer and X-Api-Key, key rotation.

Conventions: `running_appliance` runs the real appliance (hypercorn, scheduler, llama.cpp) on
127.0.0.1 port 0 with the tiny model stored as `tiny` and keys given through settings; the key
file is a real file under tmp_path, replaced atomically to rotate. The official `ollama` client runs
in a worker thread. Every test is bounded by fail_after.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import trio
from helpers import Running, add_model, running_appliance

LIMIT = 60
KEY = "sk-test-0123456789"


@asynccontextmanager
async def appliance(tmp_path: Path, tiny_gguf: Path, **settings: Any) -> AsyncIterator[Running]:
    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf)
    async with running_appliance(models, **settings) as running:
        yield running


@pytest.fixture
async def keyed(tmp_path: Path, tiny_gguf: Path):  # type: ignore[no-untyped-def]
    """The appliance requiring KEY."""
    async with appliance(tmp_path, tiny_gguf, api_keys=[KEY, "another-key"]) as running:
        yield running


async def test_native_route_without_a_key_is_401_with_ollama_error_shape(keyed):
    with trio.fail_after(LIMIT):
        async with keyed.client() as client:
            r = await client.get("/api/tags")
    assert r.status_code == 401
    assert r.json() == {"error": "unauthorized"}
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_wrong_key_is_401(keyed):
    with trio.fail_after(LIMIT):
        async with keyed.client() as client:
            bearer = await client.get("/api/tags", headers={"Authorization": "Bearer nope"})
            header = await client.get("/api/tags", headers={"X-Api-Key": KEY + "x"})
            basic = await client.get("/api/tags", headers={"Authorization": f"Basic {KEY}"})
    assert [r.status_code for r in (bearer, header, basic)] == [401, 401, 401]


async def test_openai_route_without_a_key_is_401_with_openai_envelope(keyed):
    with trio.fail_after(LIMIT):
        async with keyed.client() as client:
            r = await client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["message"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_bearer_and_x_api_key_are_accepted(keyed):
    with trio.fail_after(LIMIT):
        async with keyed.client() as client:
            bearer = await client.get("/api/tags", headers={"Authorization": f"Bearer {KEY}"})
            header = await client.get("/api/tags", headers={"X-Api-Key": "another-key"})
            openai = await client.get("/v1/models", headers={"Authorization": f"bearer {KEY}"})
    assert [r.status_code for r in (bearer, header, openai)] == [200, 200, 200]
    assert [m["name"] for m in bearer.json()["models"]] == ["tiny:latest"]


async def test_health_check_stays_open(keyed):
    with trio.fail_after(LIMIT):
        async with keyed.client() as client:
            get = await client.get("/")
            head = await client.head("/")
            version = await client.get("/api/version")
    assert (get.status_code, get.text) == (200, "Ollama is running")
    assert head.status_code == 200
    assert version.status_code == 401


async def test_cors_preflight_is_not_blocked(keyed):
    with trio.fail_after(LIMIT):
        async with keyed.client() as client:
            r = await client.options(
                "/api/chat",
                headers={"Origin": "http://localhost:3000",
                         "Access-Control-Request-Method": "POST",
                         "Access-Control-Request-Headers": "authorization"},
            )  # fmt: skip
            denied = await client.post(
                "/api/chat", json={}, headers={"Origin": "http://localhost:3000"}
            )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    # A browser can read the 401: it carries the CORS headers.
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == "http://localhost:3000"


async def test_metrics_need_the_key_too(keyed):
    with trio.fail_after(LIMIT):
        async with keyed.client() as client:
            denied = await client.get("/metrics")
            allowed = await client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert denied.status_code == 401
    assert allowed.status_code == 200
    assert 'ollama_http_requests_total{method="GET",route="/metrics",status="401"}' in allowed.text


def write_keys(path: Path, *lines: str) -> None:
    """Replace the key file atomically (new inode), as a rotation script should."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


async def test_key_file_rotation_is_picked_up_without_restart(tmp_path: Path, tiny_gguf: Path):
    key_file = tmp_path / "keys"
    write_keys(key_file, "# team keys", "", "old-key")
    async with appliance(tmp_path, tiny_gguf, api_key_file=key_file) as running:
        async with running.client() as client:

            async def status(key: str) -> int:
                r = await client.get("/api/tags", headers={"Authorization": f"Bearer {key}"})
                return r.status_code

            with trio.fail_after(LIMIT):
                assert await status("old-key") == 200
                assert await status("# team keys") == 401
                write_keys(key_file, "new-key")
                while await status("new-key") != 200:  # re-read within about a second
                    await trio.sleep(0.1)
                assert await status("old-key") == 401


async def test_no_key_configured_means_no_auth(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            r = await client.get("/api/tags")
    assert r.status_code == 200


async def test_official_ollama_client_works_with_the_key_and_fails_without(keyed):
    def session() -> tuple[list[str], int]:
        good = ollama.Client(
            host=keyed.url, trust_env=False, headers={"Authorization": f"Bearer {KEY}"}
        )
        names = [m.model for m in good.list().models]
        bad = ollama.Client(host=keyed.url, trust_env=False)
        with pytest.raises(ollama.ResponseError) as denied:
            bad.list()
        return names, denied.value.status_code

    with trio.fail_after(LIMIT):
        names, status = await trio.to_thread.run_sync(session)
    assert names == ["tiny:latest"]
    assert status == 401


async def test_cli_client_sends_llm_appliance_api_key(keyed, monkeypatch: pytest.MonkeyPatch):
    from appliance.client.commands import Client, CLIError

    def tags() -> Any:
        with Client(keyed.url) as client:
            return client.request("GET", "/api/tags")

    with trio.fail_after(LIMIT):
        monkeypatch.delenv("LLM_APPLIANCE_API_KEY", raising=False)
        with pytest.raises(CLIError, match="unauthorized"):
            await trio.to_thread.run_sync(tags)
        monkeypatch.setenv("LLM_APPLIANCE_API_KEY", KEY)
        answer = await trio.to_thread.run_sync(tags)
    assert [m["name"] for m in answer["models"]] == ["tiny:latest"]


# --- settings ------------------------------------------------------------------------------------


def test_keys_and_metrics_settings_come_from_the_environment(tmp_path: Path):
    from appliance.settings.config import load_settings

    key_file = tmp_path / "keys"
    key_file.write_text("k3\n")
    env = {"HOME": str(tmp_path), "LLM_APPLIANCE_API_KEYS": " k1, k2 ,,k1",
           "LLM_APPLIANCE_API_KEY_FILE": str(key_file), "LLM_APPLIANCE_METRICS": "0"}  # fmt: skip
    settings = load_settings(env, default_config_path=tmp_path / "none.toml")
    assert settings.api_keys == ("k1", "k2")
    assert settings.api_key_file == key_file
    assert settings.metrics is False
    assert settings.auth_enabled
    assert "k1" not in repr(settings) and "k1" not in repr(settings.as_log_map())


def test_keys_and_metrics_settings_come_from_the_toml_file(tmp_path: Path):
    from appliance.settings.config import load_settings

    (tmp_path / "keys").write_text("k3\n")
    config = tmp_path / "config.toml"
    config.write_text('api_keys = ["k1"]\napi_key_file = "keys"\nmetrics = false\n')
    settings = load_settings({"HOME": str(tmp_path)}, config)
    assert (settings.api_keys, settings.api_key_file, settings.metrics) == (
        ("k1",),
        tmp_path / "keys",
        False,
    )


def test_defaults_are_metrics_on_and_no_auth(tmp_path: Path):
    from appliance.settings.config import load_settings

    settings = load_settings({"HOME": str(tmp_path)}, default_config_path=tmp_path / "none.toml")
    assert settings.metrics is True
    assert not settings.auth_enabled


def test_a_missing_key_file_stops_start_up(tmp_path: Path):
    from appliance.settings.config import ConfigError, load_settings

    env = {"HOME": str(tmp_path), "LLM_APPLIANCE_API_KEY_FILE": str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match="LLM_APPLIANCE_API_KEY_FILE"):
        load_settings(env, default_config_path=tmp_path / "none.toml")


# --- the key ring on real files --------------------------------------------------------------------


async def test_a_vanished_key_file_keeps_the_last_good_keys(tmp_path: Path):
    from appliance.api.middleware.auth import KeyRing

    key_file = tmp_path / "keys"
    write_keys(key_file, "kept")
    ring = KeyRing((), key_file, recheck=0)
    await ring.refresh()
    assert ring.accepts(b"kept")
    key_file.unlink()
    await ring.refresh()
    assert ring.accepts(b"kept") and not ring.accepts(b"other")


async def test_an_empty_key_file_lets_nobody_in(tmp_path: Path, tiny_gguf: Path):
    key_file = tmp_path / "keys"
    write_keys(key_file, "# no keys yet")
    with trio.fail_after(LIMIT):
        async with appliance(tmp_path, tiny_gguf, api_key_file=key_file) as running:
            async with running.client() as client:
                r = await client.get("/api/tags", headers={"X-Api-Key": "# no keys yet"})
                health = await client.get("/")
    assert (r.status_code, health.status_code) == (401, 200)


# --- key scopes: inference, admin, metrics --------------------------------------------------------

ADMIN = "sk-admin-9876543210"
SCRAPER = "sk-metrics-5555"
NEEDS_ADMIN = (
    "forbidden: /api/{} changes the model store and needs an admin key (LLM_APPLIANCE_ADMIN_KEYS)"
)


@pytest.fixture
async def scoped(tmp_path: Path, tiny_gguf: Path):  # type: ignore[no-untyped-def]
    """The appliance with an inference KEY, an ADMIN key and a SCRAPER (metrics) key."""
    async with appliance(
        tmp_path, tiny_gguf, api_keys=[KEY], admin_keys=[ADMIN], metrics_keys=[SCRAPER]
    ) as running:
        yield running


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_an_inference_key_gets_403_naming_the_admin_scope_on_store_changes(scoped):
    with trio.fail_after(LIMIT):
        async with scoped.client(headers=bearer(KEY)) as client:
            delete = await client.request("DELETE", "/api/delete", json={"model": "tiny"})
            copy = await client.post("/api/copy", json={"source": "tiny", "destination": "t2"})
            tags = await client.get("/api/tags")
    assert (delete.status_code, delete.json()) == (403, {"error": NEEDS_ADMIN.format("delete")})
    assert delete.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="admin"'
    assert (copy.status_code, copy.json()) == (403, {"error": NEEDS_ADMIN.format("copy")})
    assert [m["name"] for m in tags.json()["models"]] == ["tiny:latest"]  # nothing changed


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("POST", "/api//copy/"),
        ("DELETE", "/api/delete/"),
        ("HEAD", "/api/blobs/sha256:" + "0" * 64),
        ("POST", "/api/blobs/sha256:" + "0" * 64),
    ],
)
async def test_every_store_route_needs_the_admin_scope(scoped, method: str, path: str):
    with trio.fail_after(LIMIT):
        async with scoped.client() as client:
            inference = await client.request(method, path, headers=bearer(KEY), content=b"{}")
            nobody = await client.request(method, path, content=b"{}")
    assert (inference.status_code, nobody.status_code) == (403, 401)


async def test_an_admin_key_works_on_every_route(scoped):
    with trio.fail_after(LIMIT):
        async with scoped.client(headers=bearer(ADMIN)) as client:
            tags = await client.get("/api/tags")
            models = await client.get("/v1/models")
            metrics = await client.get("/metrics")
            copy = await client.post("/api/copy", json={"source": "tiny", "destination": "t2"})
            generate = await client.post(
                "/api/generate",
                json={"model": "t2", "prompt": "hi", "stream": False,
                      "options": {"num_predict": 2}},
            )  # fmt: skip
    assert [r.status_code for r in (tags, models, metrics, copy, generate)] == [200] * 5
    assert generate.json()["done"] is True


async def test_admin_keys_without_inference_keys_leave_inference_open(tmp_path, tiny_gguf):
    with trio.fail_after(LIMIT):
        async with appliance(tmp_path, tiny_gguf, admin_keys=[ADMIN]) as running:
            async with running.client() as client:
                tags = await client.get("/api/tags")
                metrics = await client.get("/metrics")
                denied = await client.request("DELETE", "/api/delete", json={"model": "tiny"})
                wrong = await client.post(
                    "/api/copy", json={"source": "tiny", "destination": "t2"}, headers=bearer(KEY)
                )
                allowed = await client.request(
                    "DELETE", "/api/delete", json={"model": "tiny"}, headers=bearer(ADMIN)
                )
    assert (tags.status_code, metrics.status_code) == (200, 200)
    assert (denied.status_code, wrong.status_code) == (401, 401)  # no key, or not a key at all
    assert allowed.status_code == 200


async def test_a_metrics_key_reads_metrics_and_nothing_else(scoped):
    with trio.fail_after(LIMIT):
        async with scoped.client(headers=bearer(SCRAPER)) as client:
            metrics = await client.get("/metrics")
            tags = await client.get("/api/tags")
            models = await client.get("/v1/models")
        async with scoped.client(headers=bearer(KEY)) as client:
            inference_on_metrics = await client.get("/metrics")
    assert metrics.status_code == 200 and "ollama_requests_queued" in metrics.text
    assert (tags.status_code, tags.json()) == (
        403, {"error": "forbidden: /api/tags needs an API key (LLM_APPLIANCE_API_KEYS)"}
    )  # fmt: skip
    assert models.status_code == 403
    assert models.json()["error"] == {
        "message": "forbidden: /v1/models needs an API key (LLM_APPLIANCE_API_KEYS)",
        "type": "permission_error",
        "param": None,
        "code": None,
    }
    assert inference_on_metrics.status_code == 403
    assert inference_on_metrics.json() == {
        "error": "forbidden: /metrics needs a metrics key (LLM_APPLIANCE_METRICS_KEYS)"
    }


async def test_a_metrics_key_alone_guards_metrics_only(tmp_path, tiny_gguf):
    with trio.fail_after(LIMIT):
        async with appliance(tmp_path, tiny_gguf, metrics_keys=[SCRAPER]) as running:
            async with running.client() as client:
                tags = await client.get("/api/tags")
                denied = await client.get("/metrics")
                allowed = await client.get("/metrics", headers={"X-Api-Key": SCRAPER})
    assert (tags.status_code, denied.status_code, allowed.status_code) == (200, 401, 200)


async def test_a_metrics_key_file_guards_metrics(tmp_path, tiny_gguf):
    key_file = tmp_path / "scrapers"
    write_keys(key_file, "# prometheus", SCRAPER)
    with trio.fail_after(LIMIT):
        async with appliance(tmp_path, tiny_gguf, metrics_key_file=key_file) as running:
            async with running.client() as client:
                denied = await client.get("/metrics")
                allowed = await client.get("/metrics", headers=bearer(SCRAPER))
    assert (denied.status_code, allowed.status_code) == (401, 200)


async def test_admin_key_file_rotation_is_picked_up_without_restart(tmp_path, tiny_gguf):
    key_file = tmp_path / "admin-keys"
    write_keys(key_file, "old-admin")
    async with appliance(tmp_path, tiny_gguf, api_keys=[KEY], admin_key_file=key_file) as running:
        async with running.client() as client:

            async def copy_status(key: str, destination: str) -> int:
                body = {"source": "tiny", "destination": destination}
                r = await client.post("/api/copy", json=body, headers=bearer(key))
                return r.status_code

            with trio.fail_after(LIMIT):
                assert await copy_status("old-admin", "a1") == 200
                assert await copy_status(KEY, "a2") == 403
                write_keys(key_file, "new-admin")
                while await copy_status("new-admin", "a3") != 200:
                    await trio.sleep(0.1)
                assert await copy_status("old-admin", "a4") == 401


async def test_official_ollama_client_with_an_inference_key_may_list_but_not_delete(
    scoped, monkeypatch: pytest.MonkeyPatch
):
    def session(key: str) -> tuple[list[str], int | None, str]:
        monkeypatch.setenv("OLLAMA_API_KEY", key)
        client = ollama.Client(host=scoped.url, trust_env=False)
        names = [m.model for m in client.list().models]
        try:
            client.copy("tiny", "copied")
        except ollama.ResponseError as exc:
            return names, exc.status_code, exc.error
        return names, None, ""

    with trio.fail_after(LIMIT):
        inference = await trio.to_thread.run_sync(session, KEY)
        admin = await trio.to_thread.run_sync(session, ADMIN)
    assert inference == (["tiny:latest"], 403, NEEDS_ADMIN.format("copy"))
    assert admin == (["tiny:latest"], None, "")


async def test_official_openai_client_gets_permission_denied_with_a_metrics_key(scoped):
    import openai

    def session(key: str) -> list[str] | str:
        client = openai.OpenAI(base_url=scoped.url + "/v1", api_key=key, max_retries=0)
        try:
            return [m.id for m in client.models.list()]
        except openai.PermissionDeniedError as exc:
            return exc.message
        finally:
            client.close()

    with trio.fail_after(LIMIT):
        inference = await trio.to_thread.run_sync(session, KEY)
        scraper = await trio.to_thread.run_sync(session, SCRAPER)
    assert inference == ["tiny:latest"]
    assert "needs an API key (LLM_APPLIANCE_API_KEYS)" in scraper


async def test_cli_client_sends_the_admin_key_when_it_has_one(
    scoped, monkeypatch: pytest.MonkeyPatch
):
    from appliance.client.commands import Client, CLIError

    def copy() -> Any:
        with Client(scoped.url) as client:
            return client.request("POST", "/api/copy", {"source": "tiny", "destination": "c"})

    with trio.fail_after(LIMIT):
        monkeypatch.setenv("LLM_APPLIANCE_API_KEY", KEY)
        monkeypatch.delenv("LLM_APPLIANCE_ADMIN_KEY", raising=False)
        with pytest.raises(CLIError, match="needs an admin key"):
            await trio.to_thread.run_sync(copy)
        monkeypatch.setenv("LLM_APPLIANCE_ADMIN_KEY", ADMIN)
        await trio.to_thread.run_sync(copy)
        async with scoped.client(headers=bearer(KEY)) as client:
            tags = await client.get("/api/tags")
    assert sorted(m["name"] for m in tags.json()["models"]) == ["c:latest", "tiny:latest"]


def test_scoped_key_settings_come_from_the_environment_and_the_toml_file(tmp_path: Path):
    from appliance.settings.config import load_settings

    (tmp_path / "admin").write_text("a3\n")
    env = {"HOME": str(tmp_path), "LLM_APPLIANCE_ADMIN_KEYS": "a1, a2,a1",
           "LLM_APPLIANCE_ADMIN_KEY_FILE": str(tmp_path / "admin"),
           "LLM_APPLIANCE_METRICS_KEYS": "m1"}  # fmt: skip
    settings = load_settings(env, default_config_path=tmp_path / "none.toml")
    assert (settings.admin_keys, settings.admin_key_file, settings.metrics_keys) == (
        ("a1", "a2"), tmp_path / "admin", ("m1",)
    )  # fmt: skip
    assert settings.admin_auth_enabled and not settings.auth_enabled and settings.any_auth_enabled
    log_map = repr(settings.as_log_map())
    assert "a1" not in repr(settings) and "a1" not in log_map and "m1" not in log_map
    assert settings.as_log_map()["LLM_APPLIANCE_ADMIN_KEYS"] == "2 keys"
    config = tmp_path / "config.toml"
    config.write_text('admin_keys = ["a"]\nadmin_key_file = "admin"\nmetrics_keys = ["m"]\n')
    from_file = load_settings({"HOME": str(tmp_path)}, config)
    assert (from_file.admin_keys, from_file.admin_key_file, from_file.metrics_keys) == (
        ("a",), tmp_path / "admin", ("m",)
    )  # fmt: skip


def test_a_missing_admin_or_metrics_key_file_stops_start_up(tmp_path: Path):
    from appliance.settings.config import ConfigError, load_settings

    env = {"HOME": str(tmp_path), "LLM_APPLIANCE_ADMIN_KEY_FILE": str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match="LLM_APPLIANCE_ADMIN_KEY_FILE"):
        load_settings(env, default_config_path=tmp_path / "none.toml")
    env = {"HOME": str(tmp_path), "LLM_APPLIANCE_METRICS_KEY_FILE": str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match="LLM_APPLIANCE_METRICS_KEY_FILE"):
        load_settings(env, default_config_path=tmp_path / "none.toml")


def test_the_cli_prefers_the_admin_key():
    from appliance.settings.config import client_api_key

    assert client_api_key({"LLM_APPLIANCE_API_KEY": "k"}) == "k"
    assert client_api_key({"LLM_APPLIANCE_API_KEY": "k", "LLM_APPLIANCE_ADMIN_KEY": "a"}) == "a"
    assert client_api_key({}) is None


# --- the exposure warning --------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_no_exposure_warning_on_loopback(host: str):
    from appliance.api.middleware.auth import exposure_warning
    from appliance.settings.config import Settings

    assert exposure_warning(Settings(host=host)) is None


def test_no_exposure_warning_with_api_keys():
    from appliance.api.middleware.auth import exposure_warning
    from appliance.settings.config import Settings

    assert exposure_warning(Settings(host="0.0.0.0", api_key_file=Path("/keys"))) is None


async def test_serving_on_all_interfaces_without_a_key_warns_at_start(tmp_path: Path):
    import sys

    from serverproc import (
        clean_env,
        free_port,
        hide_reference_model,
        register_tiny_model,
        run_server,
        wait_until_answers,
    )

    models = tmp_path / "models"
    register_tiny_model(models)
    port = free_port()
    repo = Path(__file__).resolve().parents[1]
    pythonpath = f"{hide_reference_model(tmp_path / 'shim')}:{repo}"
    env = clean_env(port, models, {"PYTHONPATH": pythonpath, "OLLAMA_HOST": f"0.0.0.0:{port}"})
    with trio.fail_after(LIMIT * 2):
        async with run_server(
            [sys.executable, "-m", "appliance", "serve"], env, tmp_path, tmp_path / "server.log"
        ) as server:
            await wait_until_answers(server)  # traffic still goes to 127.0.0.1
            async with httpx.AsyncClient(trust_env=False) as client:
                tags = await client.get(server.base_url + "/api/tags")
            log = server.log_path.read_text()
    assert tags.status_code == 200  # nothing is refused
    warning = [line for line in log.splitlines() if "level=WARNING" in line]
    assert any(
        "bound to 0.0.0.0 (every network interface) without an API key" in line
        and "LLM_APPLIANCE_API_KEYS=<key>" in line
        for line in warning
    ), log
