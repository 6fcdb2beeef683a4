"""Bodies over the limit are refused as they arrive, not after being read whole (issue 8, item 6).

Real sockets on loopback: a raw HTTP/1.1 exchange shows that a `Content-Length` over the limit is
answered before any of the body is sent, and that a chunked body is cut at the limit. The memory
check runs the server as its own process and reads its peak RSS (`VmHWM`) from /proc.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio
from helpers import read_response
from serverproc import clean_env, free_port, register_tiny_model, run_server, wait_until_answers

from appliance.api.requests import MAX_BODY_BYTES

REPO = Path(__file__).resolve().parents[1]
CHUNK = 1024 * 1024


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def _head(path: str, extra: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}\r\n"
    ).encode()


async def _declared_but_unsent(url: str, path: str, length: int) -> tuple[int, bytes]:
    """Send only the headers of a request declaring `length` body bytes; read the answer."""
    host, port = _address(url)
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(_head(path, f"Content-Length: {length}\r\n"))
            return await read_response(stream)


async def _chunked(url: str, path: str, total: int) -> tuple[int, bytes, int]:
    """Stream `total` bytes chunked while reading the answer; returns status, body, bytes sent."""
    host, port = _address(url)
    sent = 0
    result: tuple[int, bytes] | None = None
    with trio.fail_after(120):
        stream = await trio.open_tcp_stream(host, port)
        async with stream, trio.open_nursery() as nursery:

            async def write() -> None:
                nonlocal sent
                await stream.send_all(_head(path, "Transfer-Encoding: chunked\r\n"))
                block = b"%x\r\n" % CHUNK + b" " * CHUNK + b"\r\n"
                try:
                    while sent < total:
                        await stream.send_all(block)
                        sent += CHUNK
                    await stream.send_all(b"0\r\n\r\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the server answered and closed: expected

            async def read() -> None:
                nonlocal result
                result = await read_response(stream)
                nursery.cancel_scope.cancel()

            nursery.start_soon(write)
            nursery.start_soon(read)
    assert result is not None
    return result[0], result[1], sent


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


async def _still_serving(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        r = await client.post("/api/show", json={"model": "tiny"})
    assert r.status_code == 200, r.text


async def test_a_content_length_over_the_limit_is_413_before_the_body_is_sent(server) -> None:
    status, body = await _declared_but_unsent(server.url, "/api/generate", 10 * 1024**3)
    assert (status, json.loads(body)) == (413, {"error": "request body too large"})
    await _still_serving(server.url)


async def test_a_content_length_over_the_limit_on_v1_is_413_in_openai_shape(server) -> None:
    status, body = await _declared_but_unsent(server.url, "/v1/chat/completions", 10 * 1024**3)
    assert status == 413
    assert json.loads(body)["error"]["message"] == "request body too large"
    await _still_serving(server.url)


async def test_a_chunked_body_under_the_limit_is_read(server) -> None:
    async def body():  # type: ignore[no-untyped-def]
        yield b'{"model": '
        yield b'"tiny"}'

    async with server.client() as client:
        r = await client.post("/api/show", content=body())
    assert r.status_code == 200, r.text


async def test_a_blob_upload_streams_past_the_json_limit(server) -> None:
    data = os.urandom(1024) * ((MAX_BODY_BYTES + 4 * CHUNK) // 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with server.client(timeout=300) as client:
        r = await client.post(f"/api/blobs/{digest}", content=data)
    assert r.status_code == 201, r.text


async def test_a_chunked_body_past_the_limit_is_413_without_holding_it(tmp_path: Path) -> None:
    models = tmp_path / "models"
    register_tiny_model(models)
    env = clean_env(
        free_port(), models, {"PYTHONPATH": str(REPO), "LLM_APPLIANCE_IMPORT_REFERENCE": "0"}
    )
    total = 4 * MAX_BODY_BYTES
    with trio.fail_after(300):
        async with run_server(
            [sys.executable, "-m", "appliance", "serve"], env, tmp_path, tmp_path / "log"
        ) as server:
            await wait_until_answers(server)
            before = _peak_rss(server.process.pid)
            status, body, sent = await _chunked(server.base_url, "/api/chat", total)
            grown = _peak_rss(server.process.pid) - before
            await _still_serving(server.base_url)
    assert (status, json.loads(body)) == (413, {"error": "request body too large"})
    # The body is dropped at the limit: the peak grows by about one limit, not by what was sent.
    assert grown < total // 2, f"peak RSS grew by {grown >> 20} MiB for {sent >> 20} MiB sent"


async def test_bodies_held_at_once_are_bounded_across_requests(server) -> None:
    budget = server.appliance.app.body_budget
    budget.limit = 2 * CHUNK
    declared = CHUNK + CHUNK // 2
    body = b'{"model": "tiny"}'.ljust(declared)
    host, port = _address(server.url)
    with trio.fail_after(60):
        first = await trio.open_tcp_stream(host, port)
        async with first:
            await first.send_all(_head("/api/show", f"Content-Length: {declared}\r\n"))
            while budget.used == 0:  # the first request now holds its declared length
                await trio.sleep(0.01)
            status, refused = await _declared_but_unsent(server.url, "/api/show", declared)
            await first.send_all(body)
            first_status, _ = await read_response(first)
    assert status == 503, refused
    assert json.loads(refused)["error"].startswith("server busy")
    assert first_status == 200
    assert budget.used == 0
    await _still_serving(server.url)


async def test_an_upload_to_a_slow_disk_waits_in_tcp_not_in_memory(server, monkeypatch) -> None:
    """A disk slower than the client: the unread body in memory stays near the high-water mark."""
    import time

    from quart_trio.wrappers.request import TrioBody

    from appliance.api.middleware.asgi import BODY_HIGH_WATER
    from appliance.store.store import BlobWriter

    write = BlobWriter.write

    def slow_write(self: BlobWriter, data: bytes) -> None:
        time.sleep(0.05)  # about 80 MB/s for 4 MiB flushes: slower than loopback
        write(self, data)

    most = 0
    append = TrioBody.append

    def spying_append(self: TrioBody, data: bytes) -> None:
        nonlocal most
        append(self, data)
        most = max(most, len(self._data))

    monkeypatch.setattr(BlobWriter, "write", slow_write)
    monkeypatch.setattr(TrioBody, "append", spying_append)
    block = os.urandom(CHUNK)
    blocks = 160
    digest = "sha256:" + hashlib.sha256(block * blocks).hexdigest()

    async def body():  # type: ignore[no-untyped-def]
        for _ in range(blocks):
            yield block

    async with server.client(timeout=300) as client:
        r = await client.post(f"/api/blobs/{digest}", content=body())
    assert r.status_code == 201, r.text
    assert most < BODY_HIGH_WATER + 2 * CHUNK, f"{most >> 20} MiB waited in memory"
