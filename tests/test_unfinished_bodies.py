"""Request bodies that never arrive whole: a client that sends half a body and stalls, or hangs up
half-way. The typed bodies are parsed only once the body is whole, so such a client holds no slot
and loads nothing; the bytes it declared go back to the server's body budget when it leaves or
when the body timeout ends it with a 408.

Real server on loopback (the `server` fixture: tiny model, 2 slots), raw sockets as the clients.
Nothing asserts a time: each wait is a poll bounded by fail_after.
"""

from __future__ import annotations

import json
from typing import Any

import trio
from helpers import read_response

DECLARED = 4096
HALF = b'{"model": "tiny", "stream": false, "messages": [{"role": "user", "content": "'


def _head(path: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {DECLARED}\r\n\r\n"
    ).encode()


async def _half_body(server: Any, path: str = "/api/chat") -> trio.SocketStream:
    """A connection that has sent its headers and half its body, and sends nothing more."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(_head(path) + HALF)
    return stream


async def _until_held(server: Any, n_bytes: int) -> None:
    while server.appliance.app.body_budget.used != n_bytes:
        await trio.sleep(0.01)


async def _chat(server: Any) -> Any:
    async with server.client() as client:
        return await client.post(
            "/api/chat",
            json={
                "model": "tiny",
                "stream": False,
                "messages": [{"role": "user", "content": "hi"}],
                "options": {"num_predict": 2},
            },
        )


async def test_bodies_that_never_finish_hold_no_slot_and_load_nothing(server) -> None:
    with trio.fail_after(60):
        stalled = [await _half_body(server) for _ in range(3)]  # more than the server's slots
        try:
            await _until_held(server, 3 * DECLARED)  # all three are inside the body read
            async with server.client() as client:
                loaded = (await client.get("/api/ps")).json()["models"]
            r = await _chat(server)
        finally:
            for stream in stalled:
                await stream.aclose()
    assert loaded == []
    assert r.status_code == 200, r.text


async def test_a_client_that_hangs_up_mid_body_gives_its_bytes_back(server) -> None:
    budget = server.appliance.app.body_budget
    budget.limit = 2 * DECLARED  # a leak of two hang-ups would refuse every later body
    with trio.fail_after(60):
        for _ in range(4):
            stream = await _half_body(server)
            await _until_held(server, DECLARED)
            await stream.aclose()
            await _until_held(server, 0)
        r = await _chat(server)
    assert budget.used == 0
    assert r.status_code == 200, r.text


async def test_a_body_that_never_finishes_is_408_and_gives_its_bytes_back(server) -> None:
    server.appliance.app.config["BODY_TIMEOUT"] = 1  # Quart's default is 60 s
    with trio.fail_after(60):
        stream = await _half_body(server)
        async with stream:
            status, body = await read_response(stream)
        r = await _chat(server)
    assert (status, json.loads(body)) == (408, {"error": "timed out reading the request body"})
    assert server.appliance.app.body_budget.used == 0
    assert r.status_code == 200, r.text
