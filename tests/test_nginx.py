"""packaging/nginx.conf in a real nginx on loopback: streams relayed line by line, Host rewritten.

Conventions: nginx (Debian's nginx-light, started by tests/nginxproc.py) runs in the
foreground with `master_process off`, its prefix, temp paths, pid and logs in tmp_path, on a free
127.0.0.1 port, with the shipped file included after replacing only its listen and upstream ports.
Line by line is proven by order, not by time: the upstream sends the next chunk only after the
client has received the previous one through nginx, so holding a chunk back deadlocks into the
`fail_after`. (nginx 1.22 relays that even with proxy_buffering on, so the directives that keep
it so under load are pinned by a separate test.)
Skipped, with the reason, when nginx is not installed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from helpers import add_model, running_appliance
from nginxproc import NGINX, NGINX_MISSING, nginx_check, running_nginx, write_nginx_conf
from serverproc import free_port

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "packaging/nginx.conf"
pytestmark = pytest.mark.skipif(NGINX is None, reason=NGINX_MISSING)


def render_site(upstream_port: int, listen_port: int) -> str:
    text = SITE.read_text()
    assert text.count("server 127.0.0.1:11434;") == 1 and text.count("listen 80;") == 1
    text = text.replace("server 127.0.0.1:11434;", f"server 127.0.0.1:{upstream_port};")
    return text.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")


def write_site_conf(tmp: Path, upstream_port: int, listen_port: int) -> Path:
    return write_nginx_conf(tmp, render_site(upstream_port, listen_port))


@asynccontextmanager
async def running_site(tmp: Path, upstream_port: int) -> AsyncIterator[str]:
    """nginx with the shipped site in front of `upstream_port`; yields its base URL."""
    listen_port = free_port()
    async with running_nginx(tmp, render_site(upstream_port, listen_port), listen_port) as base:
        yield base


class LockstepUpstream:
    """An HTTP/1.1 upstream that streams each chunk only once the client got the one before."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.received = [trio.Event() for _ in chunks]
        self.request_head = b""

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some()
                if not chunk:
                    return
                data += chunk
            self.request_head = data.split(b"\r\n\r\n", 1)[0]
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for chunk, received in zip(self.chunks, self.received):
                await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await received.wait()
            await stream.send_all(b"0\r\n\r\n")

    def host_header(self) -> str:
        for line in self.request_head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"host":
                return value.strip().decode()
        return ""


async def test_nginx_config_passes_syntax_check(tmp_path: Path):
    conf = write_site_conf(tmp_path, 11434, free_port())
    result = nginx_check(tmp_path, conf)
    assert result.returncode == 0, result.stderr


async def test_stream_passes_through_chunk_by_chunk_with_host_rewritten(tmp_path: Path):
    lines = [
        json.dumps({"response": word, "done": False}).encode() + b"\n"
        for word in ("one", "two", "three")
    ]
    upstream = LockstepUpstream(lines)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, upstream.handle, 0, host="127.0.0.1")
            )
            upstream_port = listeners[0].socket.getsockname()[1]
            async with running_site(tmp_path, upstream_port) as base:
                got = []
                async with httpx.AsyncClient(trust_env=False, timeout=None) as client:
                    async with client.stream(
                        "POST",
                        base + "/api/generate",
                        content=b"{}",
                        headers={"Host": "appliance.example.com"},
                    ) as resp:
                        assert resp.status_code == 200
                        async for line in resp.aiter_lines():
                            got.append(json.loads(line)["response"])
                            upstream.received[len(got) - 1].set()
            nursery.cancel_scope.cancel()
    assert got == ["one", "two", "three"]
    assert upstream.host_header() == "localhost:11434"


def test_site_turns_off_buffering_and_keeps_long_reads():
    """nginx 1.22 happened to relay the lockstep stream even with buffering on; pin the intent."""
    text = SITE.read_text()
    for directive in (
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "proxy_http_version 1.1;",
        "proxy_set_header Host localhost:11434;",
        "proxy_read_timeout 1h;",
        "gzip off;",
        "client_max_body_size 0;",
    ):
        assert directive in text, directive


async def test_generate_streams_through_nginx_from_the_real_server(tmp_path: Path, tiny_gguf):
    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf)
    with trio.fail_after(120):
        async with running_appliance(models) as server:
            port = int(server.url.rsplit(":", 1)[1])
            nginx_dir = tmp_path / "nginx"
            nginx_dir.mkdir()
            async with running_site(nginx_dir, port) as base:
                async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
                    body = {
                        "model": "tiny",
                        "prompt": "hello",
                        "options": {"num_predict": 8, "seed": 1},
                    }
                    parts = []
                    async with client.stream(
                        "POST",
                        base + "/api/generate",
                        json=body,
                        headers={"Host": "llm.example.com"},
                    ) as resp:
                        assert resp.status_code == 200, await resp.aread()
                        assert resp.headers["content-type"].startswith("application/x-ndjson")
                        async for line in resp.aiter_lines():
                            if line:
                                parts.append(json.loads(line))
    assert parts[-1]["done"] is True
    assert len(parts) >= 2, parts
    assert all(part["done"] is False for part in parts[:-1])
