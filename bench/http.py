"""Throughput through the server over HTTP, as a client sees it.

The server runs as its own process (`python -m appliance serve`), so client and server do not share
an interpreter; N clients stream `/api/generate` at once with greedy sampling and a fixed token
count, and the aggregate is the generated tokens over the wall time from the first request to the
last final chunk (prompt processing included, as in the in-process figures).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import trio

from bench.inprocess import PROMPT

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(
    models: Path, *, num_parallel: int | None, threads: int = 2
) -> Iterator[tuple[str, int]]:
    """A server process on a free port; yields (base URL, pid)."""
    port = _free_port()
    env = dict(os.environ)
    env.update(
        {
            "OLLAMA_HOST": f"127.0.0.1:{port}",
            "OLLAMA_MODELS": str(models),
            "LLM_APPLIANCE_NUM_THREADS": str(threads),
            "OLLAMA_KEEP_ALIVE": "-1",
            "PYTHONPATH": str(REPO),
        }
    )
    env.pop("OLLAMA_NUM_PARALLEL", None)
    if num_parallel is not None:
        env["OLLAMA_NUM_PARALLEL"] = str(num_parallel)
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError("server did not start")
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


async def _one(client: httpx.AsyncClient, model: str, i: int, n_tokens: int) -> int:
    body = {
        "model": model,
        "prompt": f"{PROMPT} ({i})",
        "raw": True,
        "options": {"temperature": 0, "num_predict": n_tokens},
    }
    async with client.stream("POST", "/api/generate", json=body) as response:
        final = {}
        async for line in response.aiter_lines():
            if line:
                final = json.loads(line)
    return int(final.get("eval_count", 0))


async def concurrent_streams(
    stream: Callable[[int], Awaitable[int]], n_streams: int
) -> dict[str, float]:
    """Streams 0..n_streams-1 at once (`stream(i)` returns the tokens it generated): the
    aggregate tokens over the wall time from the first request to the last token."""
    counts: list[int] = []

    async def run(i: int) -> None:
        counts.append(await stream(i))

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n_streams):
            nursery.start_soon(run, i)
    wall = time.perf_counter() - started
    return {
        "streams": n_streams,
        "tokens": sum(counts),
        "wall_s": round(wall, 3),
        "tok_per_s": round(sum(counts) / wall, 2),
    }


async def _streams(url: str, model: str, n_streams: int, n_tokens: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await _one(client, model, -1, 4)  # load + warm up
        return await concurrent_streams(lambda i: _one(client, model, i, n_tokens), n_streams)


def bench_http(url: str, model: str, n_streams: int, n_tokens: int) -> dict[str, float]:
    return trio.run(_streams, url, model, n_streams, n_tokens)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc (the pages of mmapped weights in use count)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def fresh_store() -> Path:
    return Path(tempfile.mkdtemp(prefix="llm-appliance-bench-")) / "models"
