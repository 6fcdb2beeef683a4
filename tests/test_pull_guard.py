"""A pull (or push) cannot be aimed at internal services, and only allowed registries are used.

The real appliance serves /api/pull and /api/push on 127.0.0.1; `RegistryPeer` (tests/peers)
is the registry, on 127.0.0.1 too, and `InternalService` plays an internal-only service that
answers 403 with a secret: on 127.0.0.2 (another machine's loopback, so the "registry is there"
exception does not apply) or on the registry's own address. The last tests check `RedirectGuard`
on literal addresses that need no listener (metadata, link-local, ::1, private ranges).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from helpers import add_model, running_appliance
from peers.registry import InternalService, RegistryPeer, serving

from appliance.errors import Forbidden
from appliance.net import NetConfig, RedirectGuard, RedirectRefused

TIMEOUT = 60


async def pull(server: Any, name: str) -> tuple[int, dict[str, Any]]:
    # The server's own download policy (6 retries with backoff for transport errors): a closed
    # port behind a redirect must fail as fast as an open one, not after a minute of retries.
    async with server.client() as client:
        r = await client.post("/api/pull", json={"model": name, "insecure": True, "stream": False})
    return r.status_code, json.loads(r.text)


def registry_for(model_bytes: bytes) -> RegistryPeer:
    peer = RegistryPeer()
    peer.add_model("library/tiny", "latest", model_bytes)
    return peer


def name_on(peer: RegistryPeer) -> str:
    return f"127.0.0.1:{peer.port}/library/tiny"


async def pull_redirected_to_metadata(
    tmp_path: Path, tiny_gguf: Path, host: str
) -> tuple[int, dict[str, Any], InternalService]:
    """A pull whose blobs redirect to the metadata path of an internal service on `host`."""
    registry, internal = registry_for(tiny_gguf.read_bytes()), InternalService(host)
    with trio.fail_after(TIMEOUT):
        async with serving(registry, internal), running_appliance(tmp_path / "m") as server:
            registry.redirect_blobs_url = f"{internal.direct_url}/latest/meta-data/iam"
            status, body = await pull(server, name_on(registry))
    return status, body, internal


async def test_a_redirect_to_another_loopback_address_is_refused_before_connecting(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    status, body, internal = await pull_redirected_to_metadata(tmp_path, tiny_gguf, "127.0.0.2")
    assert status >= 400
    assert "may not reach" in body["error"] and "AWS_SECRET" not in body["error"]
    assert internal.requests == []


async def test_the_body_of_a_redirect_target_is_never_relayed(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    # On the registry's own address, so the redirect is allowed and the service does answer.
    status, body, internal = await pull_redirected_to_metadata(tmp_path, tiny_gguf, "127.0.0.1")
    assert internal.requests, "the redirect to the registry's own address is followed"
    assert status >= 400
    assert "AWS_SECRET" not in body["error"] and "403" not in body["error"]


async def test_an_open_and_a_closed_port_behind_a_redirect_read_the_same(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    registry, internal = registry_for(tiny_gguf.read_bytes()), InternalService("127.0.0.1")
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    closed_port = closed.getsockname()[1]
    errors = []
    with trio.fail_after(TIMEOUT):
        async with serving(registry, internal), running_appliance(tmp_path / "m") as server:
            for port in (internal.port, closed_port):
                registry.redirect_blobs_url = f"http://127.0.0.1:{port}/latest/meta-data/iam"
                status, body = await pull(server, name_on(registry))
                assert status >= 400
                errors.append(body["error"])
    closed.close()
    assert errors[0] == errors[1]


async def test_a_token_realm_on_an_internal_address_is_refused(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    registry, internal = registry_for(tiny_gguf.read_bytes()), InternalService("127.0.0.2")
    registry.token = "t"
    with trio.fail_after(TIMEOUT):
        async with serving(registry, internal), running_appliance(tmp_path / "m") as server:
            registry.realm_url = f"{internal.direct_url}/computeMetadata/v1/token"
            status, body = await pull(server, name_on(registry))
    assert status >= 400 and "may not reach" in body["error"]
    assert internal.requests == []


async def test_a_redirect_to_the_registrys_own_address_still_pulls(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    registry = registry_for(tiny_gguf.read_bytes())
    cdn = RegistryPeer(blobs=registry.blobs)  # the same blobs on another port of 127.0.0.1
    with trio.fail_after(TIMEOUT):
        async with serving(registry, cdn), running_appliance(tmp_path / "m") as server:
            cdn.public_host = f"127.0.0.1:{cdn.port}"
            registry.redirect_blobs_to = cdn
            status, body = await pull(server, name_on(registry))
    assert (status, body) == (200, {"status": "success"})


async def test_a_registry_not_in_the_allowlist_is_refused_with_403(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    registry = registry_for(tiny_gguf.read_bytes())
    with trio.fail_after(TIMEOUT):
        async with serving(registry):
            async with running_appliance(
                tmp_path / "m", allowed_registries=("registry.ollama.ai", "hf.co")
            ) as server:
                status, body = await pull(server, name_on(registry))
    assert status == 403 and "not allowed" in body["error"]
    assert registry.requests == []


async def test_a_registry_in_the_allowlist_pulls(tmp_path: Path, tiny_gguf: Path) -> None:
    registry = registry_for(tiny_gguf.read_bytes())
    with trio.fail_after(TIMEOUT):
        async with serving(registry):
            async with running_appliance(
                tmp_path / "m", allowed_registries=(f"127.0.0.1:{registry.port}",)
            ) as server:
                status, body = await pull(server, name_on(registry))
    assert (status, body) == (200, {"status": "success"})


async def test_a_push_to_a_registry_not_in_the_allowlist_is_refused_with_403(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    registry = RegistryPeer()
    with trio.fail_after(TIMEOUT):
        async with serving(registry):
            name = name_on(registry)
            add_model(tmp_path / "m", name, tiny_gguf)
            async with running_appliance(
                tmp_path / "m", allowed_registries=("registry.ollama.ai",)
            ) as server:
                async with server.client() as client:
                    r = await client.post(
                        "/api/push", json={"model": name, "insecure": True, "stream": False}
                    )
    assert r.status_code == 403 and "not allowed" in r.json()["error"]
    assert registry.requests == []


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/iam",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://169.254.10.1/",
        "http://[fe80::1]/",
        "http://[::1]:8080/",
        "http://127.0.0.2/",
        "http://[::ffff:127.0.0.2]/",
        "http://0.0.0.0:9000/",
        "http://10.0.0.5/",
        "http://192.168.1.1/admin",
    ],
)
async def test_a_public_registry_may_not_send_a_pull_inside(target: str) -> None:
    guard = RedirectGuard(NetConfig(), "https://8.8.8.8")
    with pytest.raises(RedirectRefused):
        await guard(httpx.Request("GET", target))


@pytest.mark.parametrize("target", ["https://1.1.1.1/blob", "https://8.8.8.8:8443/other-port"])
async def test_a_public_registry_may_redirect_to_public_addresses(target: str) -> None:
    await RedirectGuard(NetConfig(), "https://8.8.8.8")(httpx.Request("GET", target))


async def test_a_registry_on_a_private_network_may_redirect_within_it() -> None:
    guard = RedirectGuard(NetConfig(), "http://192.168.1.10:5000")
    await guard(httpx.Request("GET", "http://192.168.1.11:9000/bucket/blob"))
    with pytest.raises(RedirectRefused):
        await guard(httpx.Request("GET", "http://169.254.169.254/"))


def test_the_allowlist_matches_host_or_host_and_port_and_hf_aliases() -> None:
    net = NetConfig(allowed_registries=("registry.ollama.ai", "hf.co", "127.0.0.1:5000"))
    net.check_registry("https://registry.ollama.ai")
    net.check_registry("https://huggingface.co")
    net.check_registry("http://127.0.0.1:5000")
    for url in ("http://127.0.0.1:5001", "https://evil.example", "https://ollama.ai"):
        with pytest.raises(Forbidden):
            net.check_registry(url)


def test_allowed_registries_come_from_the_variable_or_the_file(tmp_path: Path) -> None:
    from appliance.settings.config import load_settings

    no_file = tmp_path / "absent.toml"
    assert load_settings({}, None, default_config_path=no_file).allowed_registries == ()
    env = {"LLM_APPLIANCE_ALLOWED_REGISTRIES": " Registry.Ollama.AI, https://hf.co/ ,"}
    loaded = load_settings(env, None, default_config_path=no_file)
    assert loaded.allowed_registries == ("registry.ollama.ai", "hf.co")
    toml = tmp_path / "config.toml"
    toml.write_text('allowed_registries = ["registry.example:5000"]\n')
    from_file = load_settings({}, toml, default_config_path=no_file)
    assert from_file.allowed_registries == ("registry.example:5000",)
