"""`POST /api/pull` and `POST /api/push` over HTTP, against the real server.

Conventions: the real appliance (tests/helpers.py `running_appliance`, a Store in tmp_path,
Settings carrying the proxy, a `Downloads` with small parts) on 127.0.0.1 port 0; the registry and
the proxy are the loopback peers of tests/pullkit.py. Clients are httpx on trio. Every test has a
`trio.fail_after` bound; nothing asserts a duration.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from helpers import running_appliance
from peers.proxy import ProxyPeer
from peers.registry import sha256
from pullkit import TIMEOUT

from appliance.store.remote.download import DownloadPolicy, Downloads
from appliance.store.store import Store


@dataclass
class PullServer:
    url: str
    store: Store
    downloads: Downloads


@pytest.fixture
async def server(tmp_path: Path, proxy: ProxyPeer) -> AsyncIterator[PullServer]:
    downloads = Downloads(
        DownloadPolicy(min_part_size=16 * 1024, max_part_size=16 * 1024, retries=0)
    )
    async with running_appliance(
        tmp_path / "models", http_proxy=proxy.url, https_proxy=proxy.url, downloads=downloads
    ) as running:
        assert running.appliance.services is not None
        yield PullServer(running.url, running.appliance.services.store, downloads)


async def post_lines(
    url: str, path: str, body: dict[str, Any]
) -> tuple[httpx.Response, list[dict]]:
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        response = await client.post(path, json=body)
    lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    return response, lines


async def test_streamed_pull_sends_ndjson_progress_ending_in_success(server, registry):
    with trio.fail_after(TIMEOUT):
        response, lines = await post_lines(
            server.url, "/api/pull", {"model": "registry.test/library/tiny", "insecure": True}
        )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-1] == {"status": "success"}
    assert server.store.resolve("registry.test/library/tiny")


async def test_pull_with_stream_false_answers_only_the_last_status(server, registry):
    with trio.fail_after(TIMEOUT):
        response, lines = await post_lines(
            server.url,
            "/api/pull",
            {"name": "registry.test/library/tiny", "insecure": True, "stream": False},
        )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert lines == [{"status": "success"}]


async def test_streamed_pull_error_is_a_final_error_line(server, registry):
    with trio.fail_after(TIMEOUT):
        response, lines = await post_lines(
            server.url, "/api/pull", {"model": "registry.test/library/absent", "insecure": True}
        )

    assert response.status_code == 200
    assert lines == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]


async def test_pull_error_with_stream_false_is_a_500(server, registry):
    with trio.fail_after(TIMEOUT):
        response, lines = await post_lines(
            server.url,
            "/api/pull",
            {"model": "registry.test/library/absent", "insecure": True, "stream": False},
        )

    assert response.status_code == 500
    assert lines == [{"error": "pull model manifest: file does not exist"}]


async def test_pull_of_invalid_name_is_400(server):
    with trio.fail_after(TIMEOUT):
        response, lines = await post_lines(server.url, "/api/pull", {"model": "a/b/c/d/e"})

    assert response.status_code == 400
    assert lines == [{"error": "invalid model name"}]


async def test_push_without_model_is_400_model_is_required(server):
    with trio.fail_after(TIMEOUT):
        response, lines = await post_lines(server.url, "/api/push", {})

    assert response.status_code == 400
    assert lines == [{"error": "model is required"}]


async def test_client_leaving_mid_pull_stops_the_download_and_keeps_it_resumable(
    server, registry, model_bytes
):
    registry.blob_gate = trio.Event()  # blob bodies never start: the pull waits mid-download
    digest = sha256(model_bytes)
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            body = {"model": "registry.test/library/tiny", "insecure": True}
            async with client.stream("POST", "/api/pull", json=body) as response:
                async for line in response.aiter_lines():
                    if json.loads(line).get("digest") == digest:
                        break  # the download is under way; now hang up
        while server.downloads.in_flight(digest):
            await trio.sleep(0.01)  # the transfer task ends once it sees the client gone

    assert not server.store.has_blob(digest)
    assert server.store.partial_path(digest).exists()
    assert server.store.list_models() == []


async def test_transfer_whose_response_is_never_sent_is_cancelled(autojump_clock):
    # The client can vanish between the handler's return and hypercorn's first byte; then no
    # generator `finally` runs, so a watchdog must end the job (virtual time: autojump clock).
    from appliance.api.routes import transfer

    ended = trio.Event()

    async def job(progress: Any) -> None:
        try:
            await trio.sleep_forever()
        finally:
            ended.set()

    send, _receive = trio.open_memory_channel[Any](1)
    async with trio.open_nursery() as nursery:
        await nursery.start(transfer._run_streamed, job, send, trio.Event())
        with trio.fail_after(transfer.RELAY_START_TIMEOUT * 2):
            await ended.wait()
