"""Pushing a local model to a registry through a proxy.

Conventions: the model is written into a real store in tmp_path; `RegistryPeer` (loopback, real
HTTP) receives the upload sessions and manifest, and is reachable as `registry.test` only through
the loopback `ProxyPeer` (the `proxy` and `env` fixtures of tests/pullkit.py). Proxy settings go
in through an injected `environ`. Every test has a `trio.fail_after` bound; nothing asserts a
duration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import add_model
from peers.registry import RegistryPeer, sha256
from pullkit import TIMEOUT, Lines, statuses

from appliance.errors import ApplianceError
from appliance.store.names import parse_model_name
from appliance.store.remote.push import push_model
from appliance.store.store import Store

NAME = "registry.test/alice/tiny:v1"


@pytest.fixture
def store(store: Store, tiny_gguf: Path) -> Store:
    """The shared empty store, holding the tiny model as NAME."""
    add_model(store.root, NAME, tiny_gguf)
    return store


@pytest.fixture
async def registry(nursery: trio.Nursery) -> RegistryPeer:
    """An empty `registry.test` to push to."""
    peer = RegistryPeer("registry.test")
    await nursery.start(peer.serve)
    return peer


async def push(
    store: Store, env: dict[str, str], name: str = NAME, **kw: Any
) -> list[dict[str, Any]]:
    lines = Lines()
    with trio.fail_after(TIMEOUT):
        await push_model(store, name, insecure=True, environ=env, progress=lines, **kw)
    return lines.items


async def test_push_uploads_blobs_then_manifest_with_ollamas_statuses(
    store, registry, env, tiny_gguf
):
    lines = await push(store, env)

    local = store.read_manifest(parse_model_name(NAME))
    assert registry.manifests[("alice/tiny", "v1")] == local.raw
    for digest in local.all_digests():
        assert sha256(registry.blobs[digest]) == digest
    model_digest = local.layers[0].digest
    assert statuses(lines) == [
        "retrieving manifest",
        f"pushing {model_digest[7:19]}",
        f"pushing {local.config.digest[7:19]}",
        "pushing manifest",
        "success",
    ]
    last = [x for x in lines if x.get("digest") == model_digest][-1]
    assert last["completed"] == last["total"] == tiny_gguf.stat().st_size


async def test_large_blob_is_pushed_in_patch_chunks(store, registry, env, tiny_gguf):
    await push(store, env, chunk_size=64 * 1024)

    patches = [r for r in registry.requests if r.method == "PATCH"]
    assert len(patches) == -(-tiny_gguf.stat().st_size // (64 * 1024))
    assert registry.blobs[sha256(tiny_gguf.read_bytes())] == tiny_gguf.read_bytes()


async def test_blobs_the_registry_has_are_not_uploaded_again(store, registry, env):
    await push(store, env)
    uploads_before = [r for r in registry.requests if r.method in ("POST", "PATCH", "PUT")]

    lines = await push(store, env)

    uploads = [r for r in registry.requests if r.method in ("POST", "PATCH", "PUT")]
    assert len(uploads) - len(uploads_before) == 1  # only the manifest PUT
    pushing = [x for x in lines if "digest" in x]
    assert len(pushing) == 2 and all(x["completed"] == x["total"] for x in pushing)


async def test_push_answers_the_bearer_challenge_for_push_scope(store, registry, env):
    registry.token = "push-token"

    await push(store, env)

    assert ("alice/tiny", "v1") in registry.manifests
    scopes = {q["scope"][0] for q in registry.token_requests}
    assert "repository:alice/tiny:push,pull" in scopes


async def test_push_of_missing_model_reports_and_fails(store, registry, env):
    lines = Lines()

    with pytest.raises(ApplianceError) as info, trio.fail_after(TIMEOUT):
        await push_model(store, "registry.test/alice/absent", environ=env, progress=lines)

    assert lines.statuses() == ["retrieving manifest", "couldn't retrieve manifest"]
    assert info.value.status == 404
