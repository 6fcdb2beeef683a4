"""Pulling models from a registry, through a proxy, over plain HTTP and TLS.

Conventions: every peer is real and on loopback (port 0): `RegistryPeer` speaks the registry
protocol, `ProxyPeer` is a forward proxy whose private name table is the only way to reach
`registry.test`, so a successful pull proves the proxy was used (the `store`, `registry`, `proxy`
and `model_bytes` fixtures come from tests/pullkit.py). Proxy and CA settings go in through
an injected `environ` (as the server would read HTTPS_PROXY / SSL_CERT_FILE), never the process
environment. TLS certificates come from a throw-away trustme CA. Blobs are small, with a small
part size so they still download in several parts. Every test has a `trio.fail_after` bound, and
nothing asserts how long anything took.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trustme
from peers.proxy import ProxyPeer
from peers.registry import BlobHost, RegistryPeer, server_tls, sha256
from pullkit import TIMEOUT, Lines

from appliance.errors import ApplianceError
from appliance.store.remote.download import DownloadPolicy, Downloads
from appliance.store.remote.pull import pull_model
from appliance.store.store import Store

SMALL_PARTS = DownloadPolicy(min_part_size=16 * 1024, max_part_size=64 * 1024, retries=0)


async def pull(store: Store, name: str, environ: dict[str, str], **kw: Any) -> Lines:
    lines = Lines()
    kw.setdefault("downloads", Downloads(SMALL_PARTS))
    with trio.fail_after(TIMEOUT):
        await pull_model(store, name, progress=lines, environ=environ, **kw)
    return lines


async def test_pull_through_proxy_of_name_only_the_proxy_resolves(
    store, registry, proxy, model_bytes
):
    lines = await pull(
        store, "registry.test/library/tiny", {"HTTP_PROXY": proxy.url}, insecure=True
    )

    model = store.resolve("registry.test/library/tiny")
    assert model.model_path is not None and model.model_path.read_bytes() == model_bytes
    assert any(url.startswith("http://registry.test/v2/library/tiny/") for url in proxy.forwards)
    assert lines.statuses()[0] == "pulling manifest"
    assert lines.statuses()[-3:] == ["verifying sha256 digest", "writing manifest", "success"]


async def test_pull_over_https_through_connect_tunnel_trusts_ca_from_ssl_cert_file(
    nursery, store, model_bytes, tmp_path
):
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    registry = RegistryPeer("registry.test", ssl_context=server_tls(ca, "registry.test"))
    registry.add_model("library/tiny", "latest", model_bytes)
    await nursery.start(registry.serve)
    proxy = ProxyPeer(names={"registry.test": ("127.0.0.1", registry.port)})
    await nursery.start(proxy.serve)

    await pull(
        store,
        "registry.test/library/tiny",
        {"HTTPS_PROXY": proxy.url, "SSL_CERT_FILE": str(ca_file)},
    )

    assert store.resolve("registry.test/library/tiny").model_path.read_bytes() == model_bytes
    assert proxy.connects and set(proxy.connects) == {"registry.test:443"}


async def test_https_pull_without_the_ca_fails_naming_tls_host_and_proxy(
    nursery, store, model_bytes
):
    ca = trustme.CA()
    registry = RegistryPeer("registry.test", ssl_context=server_tls(ca, "registry.test"))
    registry.add_model("library/tiny", "latest", model_bytes)
    await nursery.start(registry.serve)
    proxy = ProxyPeer(names={"registry.test": ("127.0.0.1", registry.port)})
    await nursery.start(proxy.serve)

    with pytest.raises(ApplianceError) as info:
        await pull(store, "registry.test/library/tiny", {"HTTPS_PROXY": proxy.url})

    message = str(info.value)
    assert message.startswith("pull model manifest: connecting to registry.test via proxy ")
    assert proxy.url in message
    assert "TLS certificate verification failed" in message and "SSL_CERT_FILE" in message


async def test_pull_through_https_proxy_with_basic_auth(
    nursery, store, registry, model_bytes, tmp_path
):
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    proxy = ProxyPeer(
        names={"registry.test": ("127.0.0.1", registry.port)},
        auth=("alice", "s3cret"),
        ssl_context=server_tls(ca, "127.0.0.1"),
    )
    await nursery.start(proxy.serve)

    await pull(
        store,
        "registry.test/library/tiny",
        {"HTTP_PROXY": proxy.url_with_auth("alice", "s3cret"), "SSL_CERT_FILE": str(ca_file)},
        insecure=True,
    )

    assert store.resolve("registry.test/library/tiny").model_path.read_bytes() == model_bytes
    assert proxy.forwards and not proxy.rejected


async def test_proxy_rejecting_credentials_fails_without_showing_the_password(
    nursery, store, registry
):
    proxy = ProxyPeer(
        names={"registry.test": ("127.0.0.1", registry.port)}, auth=("alice", "right")
    )
    await nursery.start(proxy.serve)

    with pytest.raises(ApplianceError) as info:
        await pull(
            store,
            "registry.test/library/tiny",
            {"HTTPS_PROXY": proxy.url_with_auth("alice", "wrong")},
        )

    message = str(info.value)
    assert "proxy answered 407" in message
    assert f"via proxy http://alice:***@127.0.0.1:{proxy.port}" in message
    assert "wrong" not in message


async def test_proxy_that_is_down_gives_connection_refused_naming_host_and_proxy(store):
    with trio.socket.socket() as sock:  # a port that was free a moment ago
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proxy_url = f"http://127.0.0.1:{port}"

    with pytest.raises(ApplianceError) as info:
        await pull(store, "registry.test/library/tiny", {"HTTPS_PROXY": proxy_url})

    assert str(info.value) == (
        f"pull model manifest: connecting to registry.test via proxy {proxy_url}: connection refused"
    )


async def test_proxy_that_cannot_reach_the_registry_says_so(nursery, store):
    proxy = ProxyPeer(names={})
    await nursery.start(proxy.serve)

    with pytest.raises(ApplianceError) as info:
        await pull(store, "registry.test/library/tiny", {"HTTPS_PROXY": proxy.url})

    assert str(info.value) == (
        f"pull model manifest: connecting to registry.test via proxy {proxy.url}: "
        "proxy answered 502 unknown host registry.test"
    )


async def test_registry_404_is_ollamas_file_does_not_exist(store, registry, proxy):
    with pytest.raises(ApplianceError) as info:
        await pull(store, "registry.test/library/absent", {"HTTP_PROXY": proxy.url}, insecure=True)

    assert str(info.value) == "pull model manifest: file does not exist"
    assert store.list_models() == []


async def test_wrong_digest_fails_and_leaves_no_blob_and_no_model(
    store, registry, proxy, model_bytes
):
    registry.wrong_bytes.add(sha256(model_bytes))

    with pytest.raises(ApplianceError) as info:
        await pull(store, "registry.test/library/tiny", {"HTTP_PROXY": proxy.url}, insecure=True)

    digest = sha256(model_bytes)
    assert str(info.value).startswith(
        f"digest mismatch, file must be downloaded again: want {digest}, got sha256:"
    )
    assert not store.has_blob(digest)
    assert not store.partial_path(digest).exists()
    assert store.list_models() == []


async def test_bearer_challenge_is_answered_with_an_anonymous_token(store, registry, proxy):
    registry.token = "tok-123"

    await pull(store, "registry.test/library/tiny", {"HTTP_PROXY": proxy.url}, insecure=True)

    assert store.resolve("registry.test/library/tiny")
    assert registry.token_requests
    assert registry.token_requests[0]["service"] == ["registry.test"]
    assert registry.token_requests[0]["scope"] == ["repository:library/tiny:pull"]


async def test_blob_redirect_to_another_host_is_followed_without_credentials(
    nursery, store, registry, model_bytes
):
    blob_host = BlobHost(registry, "blobs.test")
    await nursery.start(blob_host.serve)
    registry.redirect_blobs_to = blob_host
    registry.token = "tok-123"
    proxy = ProxyPeer(
        names={
            "registry.test": ("127.0.0.1", registry.port),
            "blobs.test": ("127.0.0.1", blob_host.port),
        }
    )
    await nursery.start(proxy.serve)

    await pull(store, "registry.test/library/tiny", {"HTTP_PROXY": proxy.url}, insecure=True)

    digest = sha256(model_bytes)
    assert store.has_blob(digest)
    assert sum(e - s for s, e in blob_host.served[digest]) == len(model_bytes)
    assert registry.bytes_served(digest) == 0


async def test_progress_lines_match_ollama(store, registry, proxy, model_bytes):
    lines = await pull(
        store, "registry.test/library/tiny", {"HTTP_PROXY": proxy.url}, insecure=True
    )

    manifest = json.loads(registry.manifests[("library/tiny", "latest")])
    model_digest = manifest["layers"][0]["digest"]
    config_digest = manifest["config"]["digest"]
    assert lines.statuses() == [
        "pulling manifest",
        f"pulling {model_digest[7:19]}",
        f"pulling {config_digest[7:19]}",  # the config comes last
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    last_model_line = [x for x in lines.items if x.get("digest") == model_digest][-1]
    assert last_model_line == {
        "status": f"pulling {model_digest[7:19]}",
        "digest": model_digest,
        "total": len(model_bytes),
        "completed": len(model_bytes),
    }
    for item in lines.items:
        assert "completed" not in item or item["completed"] > 0  # Go's omitempty


async def test_second_pull_reports_present_blobs_once_and_skips_verifying(store, registry, proxy):
    env = {"HTTP_PROXY": proxy.url}
    await pull(store, "registry.test/library/tiny", env, insecure=True)
    served_before = {d: list(r) for d, r in registry.served.items()}

    lines = await pull(store, "registry.test/library/tiny", env, insecure=True)

    assert "verifying sha256 digest" not in lines.statuses()
    assert "removing unused layers" not in lines.statuses()
    assert registry.served == served_before
    pulling = [x for x in lines.items if x["status"].startswith("pulling ") and "digest" in x]
    assert len(pulling) == 2 and all(x["completed"] == x["total"] for x in pulling)


async def test_repull_of_changed_tag_removes_unused_layers(store, registry, proxy, model_bytes):
    env = {"HTTP_PROXY": proxy.url}
    await pull(store, "registry.test/library/tiny", env, insecure=True)
    old_digest = sha256(model_bytes)
    registry.add_model("library/tiny", "latest", model_bytes + b"v2")

    lines = await pull(store, "registry.test/library/tiny", env, insecure=True)

    assert lines.statuses()[-2:] == ["removing unused layers", "success"]
    assert not store.has_blob(old_digest)
    assert store.has_blob(sha256(model_bytes + b"v2"))


async def test_noprune_keeps_layers_of_the_previous_manifest(store, registry, proxy, model_bytes):
    env = {"HTTP_PROXY": proxy.url}
    await pull(store, "registry.test/library/tiny", env, insecure=True)
    registry.add_model("library/tiny", "latest", model_bytes + b"v2")

    lines = await pull(
        store,
        "registry.test/library/tiny",
        env,
        insecure=True,
        settings=SimpleNamespace(noprune=True),
    )

    assert "removing unused layers" not in lines.statuses()
    assert store.has_blob(sha256(model_bytes))
