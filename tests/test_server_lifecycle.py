"""The server as a long-running citizen: connections, long streams, bursts, parallel slots, shutdown.

Conventions: the real appliance runs in the test's trio run on 127.0.0.1 port 0. Tests that need a
stream of a chosen length use the pure-trio backend double (tests/fakes.py) behind the real HTTP
layer and scheduler; the others use the tiny real model. Every test is bounded by fail_after.
"""

from __future__ import annotations

import json

import httpx
import trio
from fakes import FakeBackend
from helpers import add_model, ndjson, running_appliance

BUSY = "server busy, please try again.  maximum pending requests exceeded"


class SlowLoader:
    """Loads the backend double; each decode step takes `step` seconds of real time."""

    def __init__(self, step: float) -> None:
        self.step = step

    async def __call__(self, spec):  # type: ignore[no-untyped-def]
        return FakeBackend(spec, step_seconds=self.step, default_tokens=10**6)


async def test_an_idle_keep_alive_connection_is_closed_by_the_server(tmp_path, tiny_gguf):
    add_model(tmp_path / "m", "tiny", tiny_gguf)
    with trio.fail_after(30):
        async with running_appliance(tmp_path / "m", http_keep_alive=0.5) as server:
            host, port = server.url.removeprefix("http://").rsplit(":", 1)
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            received = b""
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    break  # the server closed the idle connection
                received += data
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"Ollama is running")


async def test_a_stream_outlives_quarts_response_timeout(tmp_path, tiny_gguf):
    add_model(tmp_path / "m", "tiny", tiny_gguf)
    with trio.fail_after(60):
        async with running_appliance(tmp_path / "m", loader=SlowLoader(0.05)) as server:
            server.appliance.app.config["RESPONSE_TIMEOUT"] = (
                0.5  # what a default Quart would cut at
            )
            async with server.client() as client:
                async with client.stream(
                    "POST",
                    "/api/generate",
                    json={
                        "model": "tiny",
                        "prompt": "x",
                        "options": {"num_predict": 40, "temperature": 0},
                    },
                ) as r:
                    chunks = await ndjson(r)
    assert chunks[-1]["done"] is True and chunks[-1]["eval_count"] == 40


async def test_four_parallel_slots_stream_together(tmp_path, tiny_gguf):
    add_model(tmp_path / "m", "tiny", tiny_gguf)
    first_chunk_at: list[float] = []
    done_at: list[float] = []

    async def one(client: httpx.AsyncClient) -> None:
        async with client.stream(
            "POST",
            "/api/generate",
            json={"model": "tiny", "prompt": "x", "options": {"num_predict": 30}},
        ) as r:
            seen_text = False
            async for line in r.aiter_lines():
                if line and not seen_text and not json.loads(line)["done"]:
                    seen_text = True
                    first_chunk_at.append(trio.current_time())
        done_at.append(trio.current_time())

    with trio.fail_after(60):
        async with running_appliance(
            tmp_path / "m", num_parallel=4, loader=SlowLoader(0.02)
        ) as server:
            async with server.client() as client:
                await client.post("/api/generate", json={"model": "tiny"})
                async with trio.open_nursery() as nursery:
                    for _ in range(4):
                        nursery.start_soon(one, client)
    # Every stream had produced text before the first one finished: they progressed together.
    assert len(first_chunk_at) == 4 and max(first_chunk_at) < min(done_at)


async def test_a_burst_past_the_queue_bound_gets_503s_and_every_accepted_request_completes(
    tmp_path, tiny_gguf
):
    add_model(tmp_path / "m", "tiny", tiny_gguf)
    outcomes: list[tuple[int, object]] = []

    async def one(client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/api/generate",
            json={"model": "tiny", "prompt": "x", "stream": False, "options": {"num_predict": 60}},
        )
        outcomes.append((r.status_code, r.json() if r.status_code != 200 else r.json()["done"]))
        if r.status_code == 503:
            assert r.headers["retry-after"]

    with trio.fail_after(60):
        async with running_appliance(
            tmp_path / "m", num_parallel=1, max_queue=2, loader=SlowLoader(0.02)
        ) as server:
            async with server.client(limits=httpx.Limits(max_connections=20)) as client:
                await client.post("/api/generate", json={"model": "tiny"})  # loaded
                async with trio.open_nursery() as nursery:
                    for _ in range(10):
                        nursery.start_soon(one, client)
    busy = [o for o in outcomes if o[0] == 503]
    done = [o for o in outcomes if o[0] == 200]
    assert len(outcomes) == 10  # no connection was reset
    assert busy and all(o[1] == {"error": BUSY} for o in busy)
    assert len(done) == 3 and all(o[1] is True for o in done)  # one running + two waiting


async def test_shutdown_ends_an_inflight_stream_with_an_error_line(tmp_path, tiny_gguf):
    add_model(tmp_path / "m", "tiny", tiny_gguf)
    lines: list[dict] = []
    with trio.fail_after(60):
        async with running_appliance(tmp_path / "m", loader=SlowLoader(0.02), grace=0.5) as server:
            async with server.client() as client:
                async with client.stream(
                    "POST", "/api/generate", json={"model": "tiny", "prompt": "x"}
                ) as r:
                    async for line in r.aiter_lines():
                        if line:
                            lines.append(json.loads(line))
                        if len(lines) == 3:
                            server.appliance.request_shutdown()
            # the running_appliance block returns only once the service stopped
    assert lines[-1] == {"error": "server is shutting down"}
    assert all("response" in line for line in lines[:-1])
