"""What clients show to people: status lines with reason phrases, one log line per request, and
`llm-appliance --version`, on the real server (raw sockets for the status line, as curl sees it).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import pytest
import trio

from appliance.cli import main

LIMIT = 60


async def _status_line(url: str, request: bytes) -> bytes:
    parts = urlsplit(url)
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        await stream.send_all(request)
        data = b""
        while b"\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


def _get(path: str, *headers: bytes) -> bytes:
    lines = [b"GET " + path.encode() + b" HTTP/1.1", b"Host: 127.0.0.1", *headers]
    return b"\r\n".join([*lines, b"Connection: close", b"", b""])


@pytest.mark.parametrize(
    ("request_bytes", "line"),
    [
        (_get("/api/version"), b"HTTP/1.1 200 OK"),
        (_get("/api/nope"), b"HTTP/1.1 404 Not Found"),
        (_get("/api/tags", b"Origin: http://evil.example"), b"HTTP/1.1 403 Forbidden"),
        (
            b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n"
            b"Connection: close\r\n\r\n{",
            b"HTTP/1.1 400 Bad Request",
        ),
    ],
)
async def test_status_lines_carry_the_reason_phrase(server, request_bytes, line):
    with trio.fail_after(LIMIT):
        assert await _status_line(server.url, request_bytes) == line


async def test_httpx_errors_name_the_status(server):
    async with server.client() as client:
        r = await client.post("/api/generate", json={"model": "tiny", "top_logprobs": 99})
    assert r.reason_phrase == "Bad Request"


async def test_a_rejected_request_leaves_one_log_line_with_status_path_and_model(server, caplog):
    caplog.set_level(logging.INFO, logger="appliance.access")
    async with server.client() as client:
        await client.post("/api/chat", json={"model": "tiny", "messages": [], "think": 7})

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "appliance.access"]

    with trio.fail_after(LIMIT):  # written once the answer is complete, maybe after the read
        while not logged():
            await trio.sleep(0.01)
    await trio.sleep(0.1)
    lines = logged()
    assert len(lines) == 1
    assert "| 400 |" in lines[0] and '"/api/chat"' in lines[0] and "POST" in lines[0]
    assert lines[0].endswith("model=tiny")


async def test_version_flag_prints_server_and_client_versions(server, monkeypatch, capsys):
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    rc = await trio.to_thread.run_sync(main, ["--version"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and out == ["llm-appliance version is 0.1.0"]


def test_short_version_flag_without_a_server_warns_and_prints_the_client(monkeypatch, capsys):
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")  # discard port: nothing listens
    assert main(["-v"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Warning: could not connect to a running llm-appliance instance",
        "Warning: client version is 0.1.0",
    ]
