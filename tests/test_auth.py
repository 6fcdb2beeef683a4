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
    from appliance.client_cli import Client, CLIError

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
    from appliance.config import load_settings

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
    from appliance.config import load_settings

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
    from appliance.config import load_settings

    settings = load_settings({"HOME": str(tmp_path)}, default_config_path=tmp_path / "none.toml")
    assert settings.metrics is True
    assert not settings.auth_enabled


def test_a_missing_key_file_stops_start_up(tmp_path: Path):
    from appliance.config import ConfigError, load_settings

    env = {"HOME": str(tmp_path), "LLM_APPLIANCE_API_KEY_FILE": str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match="LLM_APPLIANCE_API_KEY_FILE"):
        load_settings(env, default_config_path=tmp_path / "none.toml")


# --- the key ring on real files --------------------------------------------------------------------


async def test_a_vanished_key_file_keeps_the_last_good_keys(tmp_path: Path):
    from appliance.api.auth import KeyRing

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
