"""What the pull and push tests share: a store, the loopback registry serving the tiny model, the
proxy that alone resolves `registry.test`, and a collector of progress lines.

Conventions: conftest.py registers this module as a plugin, so its fixtures reach every test
module; a module that needs another shape (an empty registry, a store that holds a model, a
different peer behind the proxy) overrides the fixture of the same name, and the fixtures here
that depend on it (`proxy`, `env`) then use that one. Every peer is real and on loopback, port 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from peers.proxy import ProxyPeer
from peers.registry import RegistryPeer

from appliance.store.store import Store

TIMEOUT = 30
SMALL_PART = 16 * 1024  # the smallest part size the pull tests set, to download in several parts


def statuses(lines: list[dict[str, Any]]) -> list[str]:
    """The progress statuses in order, each run of equal statuses once."""
    out: list[str] = []
    for line in lines:
        if not out or out[-1] != line["status"]:
            out.append(line["status"])
    return out


class Lines:
    """A progress callback that keeps every line."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    async def __call__(self, line: dict[str, Any]) -> None:
        self.items.append(line)

    def statuses(self) -> list[str]:
        return statuses(self.items)


@pytest.fixture
def model_bytes(tiny_gguf: Path) -> bytes:
    """The tiny model's bytes, the blob the registry serves."""
    data = tiny_gguf.read_bytes()
    assert len(data) > 4 * SMALL_PART, "the tiny model must span several small parts"
    return data


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """An empty store in tmp_path."""
    return Store(tmp_path / "models")


@pytest.fixture
async def registry(nursery: trio.Nursery, model_bytes: bytes) -> RegistryPeer:
    """`registry.test`, serving the tiny model as library/tiny:latest."""
    peer = RegistryPeer("registry.test")
    peer.add_model("library/tiny", "latest", model_bytes)
    await nursery.start(peer.serve)
    return peer


@pytest.fixture
async def proxy(nursery: trio.Nursery, registry: RegistryPeer) -> ProxyPeer:
    """A forward proxy whose name table is the only way to reach `registry.test`."""
    peer = ProxyPeer(names={"registry.test": ("127.0.0.1", registry.port)})
    await nursery.start(peer.serve)
    return peer


@pytest.fixture
def env(proxy: ProxyPeer) -> dict[str, str]:
    """The environment a pull or push reads: plain HTTP through the proxy."""
    return {"HTTP_PROXY": proxy.url}
