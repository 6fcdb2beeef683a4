"""The routes this wave added (/v1/messages, /v1/messages/count_tokens, /v1/responses) against
hostile bodies and clients that hang up: the same bounded decoder as every route (a 400 in the
route's own error shape, a 413 before the body is read), and a stream whose client leaves frees
its slot. Real server on loopback (the `server` fixture, tiny model, 2 slots)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

ROUTES = ["/v1/messages", "/v1/messages/count_tokens", "/v1/responses"]
HOSTILE = {
    "deep": "[" * 100_000 + "]" * 100_000,
    "huge number": '{"model": "tiny", "max_tokens": ' + "9" * 5000 + "}",
    "nan": '{"model": "tiny", "temperature": NaN}',
    "not an object": "[1, 2, 3]",
}


async def _still_serving(server: Any) -> None:
    async with server.client() as client:
        body = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        r = await client.post("/v1/messages", json=body)
    assert r.status_code == 200, r.text


def _error_text(path: str, answer: dict[str, Any]) -> str:
    if path.startswith("/v1/messages"):
        assert answer["type"] == "error"  # Anthropic's envelope
    return answer["error"]["message"]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_a_hostile_body_is_a_400_in_the_routes_shape(server, path: str, kind: str) -> None:
    async with server.client() as client:
        r = await client.post(path, content=HOSTILE[kind].encode())
    assert r.status_code == 400, r.text
    assert _error_text(path, r.json())
    await _still_serving(server)


@pytest.mark.parametrize("path", ROUTES)
async def test_a_body_over_the_limit_is_413_before_it_is_sent(server, path: str) -> None:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream(host, int(port))
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {1 << 40}\r\n\r\n"
        )
        await stream.send_all(head.encode())
        answer = await stream.receive_some(65536)
        await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
    await _still_serving(server)


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/responses"])
async def test_a_stream_whose_client_hangs_up_frees_its_slot(server, path: str) -> None:
    body = (
        {"model": "tiny", "max_tokens": 400, "stream": True,
         "messages": [{"role": "user", "content": "hi"}]}
        if path == "/v1/messages"
        else {"model": "tiny", "max_output_tokens": 400, "stream": True, "input": "hi"}
    )  # fmt: skip
    with trio.fail_after(120):
        for _ in range(4):  # more hang-ups than the server has slots
            async with server.client() as client:
                async with client.stream("POST", path, json=body) as r:
                    assert r.status_code == 200
                    async for _line in r.aiter_lines():
                        break  # hang up after the first event
        await _still_serving(server)


async def test_a_stream_whose_client_never_reads_does_not_keep_the_slots(server) -> None:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    payload = (
        b'{"model": "tiny", "max_tokens": 300, "stream": true,'
        b' "messages": [{"role": "user", "content": "hi"}]}'
    )
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    sockets = []
    try:
        for _ in range(2):  # both slots
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
            sock.connect((host, int(port)))
            sock.sendall(head + payload)
            sockets.append(sock)  # never read
        with trio.fail_after(180):
            await _still_serving(server)  # served once the two answers are generated
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize(
    "arguments",
    ["[" * 5000 + "]" * 5000, '{"a": NaN}', '{"a": ' + "9" * 5000 + "}"],
    ids=["deep", "nan", "huge number"],
)
async def test_hostile_function_call_arguments_in_responses_input_are_a_400(
    server, arguments: str
) -> None:
    """The arguments of a replayed function call are JSON text a client wrote: they go through
    the boundary's decoder (depth, numbers, NaN), never a bare json.loads."""
    item = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": arguments}
    body = {"model": "tiny", "max_output_tokens": 2, "input": [item]}
    async with server.client() as client:
        r = await client.post("/v1/responses", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith("failed to parse function call arguments")
    await _still_serving(server)
