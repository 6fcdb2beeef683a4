"""Pulling `hf.co/<user>/<repo>[:<quant>]` from a Hugging Face-style server set as HF_ENDPOINT.

Conventions: `HFPeer` is a real loopback HTTP server with huggingface.co's model-info and resolve
routes; it is reached through a real loopback proxy under the name `hf.test`, which only the proxy
resolves. HF_ENDPOINT / HF_TOKEN / HTTP_PROXY go in through an injected `environ`; the empty
`store` is tests/pullkit.py's. Every test has a `trio.fail_after` bound; nothing asserts a duration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from peers.proxy import ProxyPeer
from peers.registry import CDNPeer, HFPeer, sha256
from pullkit import TIMEOUT, Lines

from appliance.errors import ApplianceError
from appliance.store.remote.download import DownloadPolicy, Downloads
from appliance.store.remote.hf import choose_file
from appliance.store.remote.pull import pull_model
from appliance.store.store import Store


@pytest.fixture
async def hf(nursery: trio.Nursery, tiny_gguf: Path, tiny_gguf_factory: Any) -> HFPeer:
    peer = HFPeer()
    peer.add_file("someone/tiny-GGUF", "tiny-Q4_K_M.gguf", tiny_gguf.read_bytes())
    peer.add_file("someone/tiny-GGUF", "tiny-Q8_0.gguf", tiny_gguf_factory(seed=1).read_bytes())
    peer.add_file("someone/tiny-GGUF", "README.md", b"# tiny")
    await nursery.start(peer.serve)
    return peer


@pytest.fixture
async def env(nursery: trio.Nursery, hf: HFPeer) -> dict[str, str]:
    proxy = ProxyPeer(names={"hf.test": ("127.0.0.1", hf.port)})
    await nursery.start(proxy.serve)
    return {"HF_ENDPOINT": "http://hf.test", "HTTP_PROXY": proxy.url}


async def pull(store: Store, name: str, env: dict[str, str]) -> list[dict[str, Any]]:
    lines = Lines()
    with trio.fail_after(TIMEOUT):
        await pull_model(
            store,
            name,
            environ=env,
            progress=lines,
            downloads=Downloads(DownloadPolicy(min_part_size=64 * 1024)),
        )
    return lines.items


async def test_hf_pull_picks_the_file_of_the_quant_tag(store, hf, env, tiny_gguf_factory):
    lines = await pull(store, "hf.co/someone/tiny-GGUF:Q8_0", env)

    model = store.resolve("hf.co/someone/tiny-GGUF:Q8_0")
    assert model.model_path.read_bytes() == tiny_gguf_factory(seed=1).read_bytes()
    assert model.config["model_format"] == "gguf"
    assert model.config["model_family"] == "llama"
    assert lines[0] == {"status": "pulling manifest"}
    assert [x["status"] for x in lines[-3:]] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    assert "tiny-Q4_K_M.gguf" not in hf.served


async def test_hf_pull_without_tag_prefers_q4_k_m(store, hf, env, tiny_gguf):
    await pull(store, "hf.co/someone/tiny-GGUF", env)

    assert (
        store.resolve("hf.co/someone/tiny-GGUF").model_path.read_bytes() == tiny_gguf.read_bytes()
    )
    assert set(hf.served) == {"tiny-Q4_K_M.gguf"}


async def test_hf_unknown_quant_names_the_files_there(store, hf, env):
    with pytest.raises(ApplianceError) as info:
        await pull(store, "hf.co/someone/tiny-GGUF:Q2_K", env)

    assert "no GGUF file for quantization Q2_K" in str(info.value)
    assert "tiny-Q8_0.gguf" in str(info.value)


async def test_hf_missing_repository_is_file_does_not_exist(store, hf, env):
    with pytest.raises(ApplianceError) as info:
        await pull(store, "hf.co/someone/absent", env)

    assert str(info.value) == "pull model manifest: file does not exist"


async def test_hf_token_is_sent_as_bearer(store, hf, env, tiny_gguf):
    hf.token = "hf_secret"
    with pytest.raises(ApplianceError) as info:
        await pull(store, "hf.co/someone/tiny-GGUF", env)
    assert "401" in str(info.value) and "HF_TOKEN" in str(info.value)

    await pull(store, "hf.co/someone/tiny-GGUF", {**env, "HF_TOKEN": "hf_secret"})

    assert store.has_blob(sha256(tiny_gguf.read_bytes()))
    assert all(r.headers.get("authorization") == "Bearer hf_secret" for r in hf.requests[1:])


async def test_hf_token_is_not_sent_to_the_cdn_it_redirects_to(nursery, store, hf, tiny_gguf):
    hf.token = "hf_secret"
    hf.cdn = CDNPeer("cdn.test")
    await nursery.start(hf.cdn.serve)
    proxy = ProxyPeer(
        names={"hf.test": ("127.0.0.1", hf.port), "cdn.test": ("127.0.0.1", hf.cdn.port)}
    )
    await nursery.start(proxy.serve)
    env = {"HF_ENDPOINT": "http://hf.test", "HTTP_PROXY": proxy.url, "HF_TOKEN": "hf_secret"}

    await pull(store, "hf.co/someone/tiny-GGUF", env)

    assert store.blob_path(sha256(tiny_gguf.read_bytes())).read_bytes() == tiny_gguf.read_bytes()
    assert hf.cdn.served  # the bytes came from the CDN, which refuses credentials


def test_choose_file_does_not_take_iq4_for_q4_or_mmproj_files():
    siblings = [{"rfilename": n} for n in ("m-IQ4_K_M.gguf", "mmproj-Q4_K_M.gguf", "m.q4_k_m.gguf")]
    assert choose_file(siblings, "Q4_K_M", "r")["rfilename"] == "m.q4_k_m.gguf"


def test_choose_file_refuses_split_gguf():
    siblings = [{"rfilename": "big-Q8_0-00001-of-00002.gguf"}]
    with pytest.raises(ApplianceError, match="split"):
        choose_file(siblings, "Q8_0", "r")
