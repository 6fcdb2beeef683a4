"""A client that stops reading is dropped after the write timeout, on every route.

The real appliance runs in the test's trio run on 127.0.0.1; the stalled clients are raw sockets
with a tiny receive buffer that never call recv. Streams of any length come from the backend
double (tests/fakes.py) behind the real HTTP layer; large non-stream answers from a tiny GGUF
padded with metadata. Nothing here asserts a time: each wait is a poll bounded by fail_after.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from fakes import FakeBackend
from helpers import Running, add_model, running_appliance

DROPPED = re.compile(
    r'^llm_appliance_connections_dropped_total\{reason="write_timeout"\} (\S+)$', re.M
)


class FastLoader:
    """The backend double streaming without end (until num_predict), a step every `step` s."""

    def __init__(self, step: float = 0.001) -> None:
        self.step = step

    async def __call__(self, spec):  # type: ignore[no-untyped-def]
        return FakeBackend(spec, step_seconds=self.step, default_tokens=10**6)


# A stream without end (the double's), and a short answer in one piece.
ENDLESS = {"model": "tiny", "prompt": "x", "options": {"num_predict": 10**6}}


def short(tokens: int) -> dict[str, Any]:
    """A greedy answer of `tokens` tokens (sampled, the random tiny model may end early)."""
    options = {"num_predict": tokens, "temperature": 0}
    return {"model": "tiny", "prompt": "y", "stream": False, "options": options}


@asynccontextmanager
async def streaming_appliance(
    tmp_path: Path, tiny_gguf: Path, **settings: Any
) -> AsyncIterator[Running]:
    """The real appliance with `tiny` stored, its streams from the double (FastLoader)."""
    add_model(tmp_path / "m", "tiny", tiny_gguf)
    async with running_appliance(tmp_path / "m", loader=FastLoader(), **settings) as server:
        yield server


async def stalled_request(
    url: str, method: str, path: str, body: dict | None
) -> trio.socket.SocketType:
    """Send one request from a socket with a 2 KiB receive buffer that will never be read."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    await sock.connect((host, int(port)))
    data = json.dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    await sock.send(head.encode() + data)
    return sock


async def stalled_streams(server: Running, count: int) -> list[trio.socket.SocketType]:
    """`count` endless /api/generate streams, each from a socket that will never be read, each
    streaming (its first byte arrived, peeked, not read) before the next is sent or the test goes
    on: so each holds its slot before any later request can take it."""
    socks = []
    for _ in range(count):
        sock = await stalled_request(server.url, "POST", "/api/generate", ENDLESS)
        await sock.recv(1, socket.MSG_PEEK)
        socks.append(sock)
    return socks


async def dropped_count(client) -> float:  # type: ignore[no-untyped-def]
    r = await client.get("/metrics")
    m = DROPPED.search(r.text)
    return float(m.group(1)) if m else 0.0


async def wait_dropped(client, at_least: float) -> None:  # type: ignore[no-untyped-def]
    while await dropped_count(client) < at_least:
        await trio.sleep(0.05)


async def closed_by_server(sock: trio.socket.SocketType) -> bool:
    """Read everything; True once the server's end is gone (EOF or reset)."""
    try:
        while await sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


async def test_a_stream_nobody_reads_is_dropped_and_counted(tmp_path, tiny_gguf):
    with trio.fail_after(60):
        async with streaming_appliance(tmp_path, tiny_gguf, write_timeout=0.5) as server:
            stalled = await stalled_streams(server, 2)
            async with server.client() as client:
                await wait_dropped(client, 2)
            for sock in stalled:
                assert await closed_by_server(sock)
                sock.close()


async def test_a_dropped_stream_frees_its_slot_for_the_next_request(tmp_path, tiny_gguf):
    with trio.fail_after(60):
        async with streaming_appliance(
            tmp_path, tiny_gguf, write_timeout=0.5, num_parallel=1
        ) as server:
            (sock,) = await stalled_streams(server, 1)
            async with server.client() as client:
                r = await client.post("/api/generate", json=short(3))
                assert r.status_code == 200 and r.json()["eval_count"] == 3
                assert await dropped_count(client) >= 1
            sock.close()


async def test_other_requests_are_served_while_clients_stall(tmp_path, tiny_gguf):
    with trio.fail_after(60):
        async with streaming_appliance(
            tmp_path, tiny_gguf, write_timeout=3600, num_parallel=3
        ) as server:
            stalled = await stalled_streams(server, 2)
            async with server.client() as client:
                for _ in range(3):
                    r = await client.post("/api/generate", json=short(2))
                    assert r.status_code == 200
                    assert (await client.get("/api/tags")).status_code == 200
                assert await dropped_count(client) == 0
            for sock in stalled:
                sock.close()


async def test_a_large_answer_nobody_reads_is_dropped(tmp_path, tiny_gguf_factory):
    big = tiny_gguf_factory(extra_bytes=4_000_000)
    add_model(tmp_path / "m", "big", big)
    with trio.fail_after(60):
        async with running_appliance(tmp_path / "m", write_timeout=0.5) as server:
            async with server.client() as client:
                r = await client.post("/api/show", json={"model": "big"})
                assert r.status_code == 200 and len(r.content) > 4_000_000
                sock = await stalled_request(server.url, "POST", "/api/show", {"model": "big"})
                await wait_dropped(client, 1)
            assert await closed_by_server(sock)
            sock.close()


def test_the_write_timeout_is_a_setting_with_a_default_and_zero_means_never(tmp_path):
    from appliance.gocompat.durations import FOREVER
    from appliance.settings.config import DEFAULT_WRITE_TIMEOUT, load_settings

    no_file = tmp_path / "absent.toml"

    def load(env, path=None):  # type: ignore[no-untyped-def]
        return load_settings(env, path, default_config_path=no_file)

    assert load({}).write_timeout == DEFAULT_WRITE_TIMEOUT == 60.0
    assert load({"LLM_APPLIANCE_WRITE_TIMEOUT": "90s"}).write_timeout == 90.0
    assert load({"LLM_APPLIANCE_WRITE_TIMEOUT": "0"}).write_timeout == FOREVER
    toml = tmp_path / "config.toml"
    toml.write_text('write_timeout = "2m"\n')
    assert load({}, toml).write_timeout == 120.0
    assert load({}).as_log_map()["LLM_APPLIANCE_WRITE_TIMEOUT"] == "1m0s"
