"""End to end: the official `ollama` Python client manages models on the real server.

Conventions: the real appliance (tests/helpers.py `running_appliance`, a real Store in `tmp_path`)
is served by hypercorn's trio worker in this process on 127.0.0.1 port 0 (`serving`);
the synchronous `ollama` client runs in a worker thread; raw sockets where a test must misbehave
as a client. Bounded by `trio.fail_after`; nothing asserts a duration.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import ollama
import pytest
import trio
from helpers import running_appliance

from appliance.store.store import Store

TIMEOUT = 120


@asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[tuple[str, Store]]:
    """The real appliance on loopback with an empty store; yields (base URL, store)."""
    async with running_appliance(tmp_path / "models") as server:
        yield server.url, server.appliance.services.store


async def test_ollama_client_creates_lists_shows_copies_and_deletes(
    tmp_path: Path, tiny_gguf: Path
) -> None:

    def session(host: str) -> dict[str, object]:
        client = ollama.Client(host=host, trust_env=False)
        seen: dict[str, object] = {}
        digest = client.create_blob(tiny_gguf)
        seen["create"] = [
            p.status for p in client.create("tiny", files={"tiny.gguf": digest}, stream=True)
        ]
        done = client.create(
            "tiny-chat",
            from_="tiny",
            system="You are terse.",
            parameters={"temperature": 0.2, "stop": ["<end>"]},
            license="MIT",
        )
        seen["create_from"] = done.status
        seen["list"] = sorted(m.model for m in client.list().models)
        shown = client.show("tiny-chat")
        seen["show"] = (
            shown.modelfile,
            shown.license,
            shown.details.parent_model,
            shown.details.family,
            shown.modelinfo["general.architecture"],
            shown.capabilities,
            shown.parameters,
        )
        seen["copy"] = client.copy("tiny-chat", "me/copied:v1").status
        seen["delete"] = client.delete("tiny-chat").status
        seen["after"] = sorted(m.model for m in client.list().models)
        with pytest.raises(ollama.ResponseError) as missing:
            client.show("tiny-chat")
        seen["missing"] = (missing.value.status_code, missing.value.error)
        return seen

    with trio.fail_after(TIMEOUT):
        async with serving(tmp_path) as (url, _):
            seen = await trio.to_thread.run_sync(session, url)

    assert seen["create"][0] == "parsing GGUF" and seen["create"][-1] == "success"
    assert seen["create_from"] == "success"
    assert seen["list"] == ["tiny-chat:latest", "tiny:latest"]
    system, license_text, parent, family, arch, caps, params = seen["show"]
    assert "SYSTEM You are terse.\n" in system
    assert (license_text, parent, family, arch) == (
        "MIT",
        "tiny:latest",
        "llama",
        "llama",
    )
    assert "completion" in caps
    assert 'stop                           "<end>"' in params
    assert seen["copy"] == "success" and seen["delete"] == "success"
    assert seen["after"] == ["me/copied:v1", "tiny:latest"]
    assert seen["missing"] == (404, "model 'tiny-chat' not found")


async def test_upload_cut_off_mid_body_leaves_no_blob(tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with trio.fail_after(TIMEOUT):
        async with serving(tmp_path) as (url, store):
            port = int(url.rsplit(":", 1)[1])
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            head = (
                f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Length: {len(data)}\r\n\r\n"
            )
            await stream.send_all(head.encode() + data[: len(data) // 2])
            while not any(n.startswith(".tmp-") for n in os.listdir(store.blobs_dir)):
                await trio.sleep(0.01)  # the server is writing the upload to its temp file
            await stream.aclose()
            while os.listdir(store.blobs_dir):
                await trio.sleep(0.01)  # ...and removes it once it sees the client is gone
            assert not store.has_blob(digest)
