"""packaging/nginx-fleet.conf in a real nginx in front of two real appliances on loopback ports.

Conventions: nginx runs as in tests/test_nginx.py (tests/nginxproc.py), with the shipped file after
replacing only its listen address and the two upstream addresses. Each box is a real appliance
(HTTP layer, scheduler, queue bound) with `num_parallel=1, max_queue=2`: it runs one request and
holds two waiting, and answers the next with 503. For the burst tests the boxes run the backend
double behind a gate (decoding waits until the test opens it), so "the burst arrives while the
first requests still run" holds by construction, not by speed. The stopped-box test runs two
`llm-appliance serve` processes with the tiny real model (OLLAMA_NUM_PARALLEL=1,
OLLAMA_MAX_QUEUE=2) and kills one. Every test is bounded by fail_after. Skipped without nginx.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from fakes import FakeBackend, FakeLoader
from helpers import Running, add_model, running_appliance
from nginxproc import NGINX, NGINX_MISSING, nginx_check, running_nginx, write_nginx_conf
from serverproc import (
    clean_env,
    free_port,
    hide_reference_model,
    register_tiny_model,
    run_server,
    wait_until_answers,
)

pytestmark = pytest.mark.skipif(NGINX is None, reason=NGINX_MISSING)

REPO = Path(__file__).resolve().parents[1]
FLEET = REPO / "packaging/nginx-fleet.conf"
LIMIT = 60
QUEUE = 2  # per box: one running + QUEUE waiting
BURST = 2 * (1 + QUEUE)  # what two boxes hold, twice what one holds
BUSY_TEXT = "server busy, please try again.  maximum pending requests exceeded"
GENERATE = {"model": "tiny", "prompt": "x", "options": {"num_predict": 3}}
_UPSTREAM = re.compile(r"^(\s*server )10\.0\.0\.1[12]:11434( .*;)$", re.M)


def render_fleet(ports: list[int], listen_port: int) -> str:
    """The shipped file with its two upstream boxes at `ports` and nginx on `listen_port`."""
    text = FLEET.read_text()
    assert len(_UPSTREAM.findall(text)) == 2 and text.count("listen 80;") == 1
    params = _UPSTREAM.search(text).group(2)  # type: ignore[union-attr]
    lines = "\n".join(f"    server 127.0.0.1:{port}{params}" for port in ports)
    text = _UPSTREAM.sub("", text, count=1)
    text = _UPSTREAM.sub(lines, text, count=1)
    return text.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")


@dataclass(eq=False)
class GatedBackend(FakeBackend):
    """The backend double; every decode step first waits for the gate to open."""

    gate: trio.Event = field(default_factory=trio.Event)

    async def step(self, admits, releases):  # type: ignore[no-untyped-def]
        await self.gate.wait()
        return await super().step(admits, releases)


class GatedLoader:
    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate

    async def __call__(self, spec):  # type: ignore[no-untyped-def]
        return GatedBackend(spec, step_seconds=0.001, gate=self.gate)


@asynccontextmanager
async def box(tmp: Path, tiny_gguf: Path, gate: trio.Event) -> AsyncIterator[Running]:
    """One appliance holding 1 + QUEUE requests, its model loaded (a load-only request)."""
    add_model(tmp / "models", "tiny", tiny_gguf)
    async with running_appliance(
        tmp / "models", num_parallel=1, max_queue=QUEUE, loader=GatedLoader(gate)
    ) as running:
        async with running.client() as client:
            assert (await client.post("/api/generate", json={"model": "tiny"})).status_code == 200
        yield running


@asynccontextmanager
async def fleet(tmp: Path, ports: list[int], *, balance: str = "least_conn;") -> AsyncIterator[str]:
    """nginx with the shipped fleet file in front of `ports`; `balance` replaces `least_conn;`."""
    nginx_dir = tmp / "nginx"
    nginx_dir.mkdir()
    listen_port = free_port()
    site = render_fleet(ports, listen_port).replace("least_conn;", balance)
    async with running_nginx(nginx_dir, site, listen_port) as url:
        yield url


def port_of(running: Running) -> int:
    return int(running.url.rsplit(":", 1)[1])


def queued(*boxes: Running) -> int:
    return sum(b.appliance.services.scheduler.queued for b in boxes)  # type: ignore[union-attr]


@dataclass
class Outcome:
    status: int = 0
    lines: list[dict[str, Any]] = field(default_factory=list)


async def stream_generate(client: httpx.AsyncClient, url: str, outcome: Outcome) -> None:
    async with client.stream("POST", url + "/api/generate", json=GENERATE) as response:
        outcome.status = response.status_code
        async for line in response.aiter_lines():
            if line.strip():
                outcome.lines.append(json.loads(line))


async def burst(url: str, admitted: Any) -> list[Outcome]:
    """BURST concurrent streams to `url`; the gate opens (by `admitted`) once all are placed."""
    outcomes = [Outcome() for _ in range(BURST)]
    limits = httpx.Limits(max_connections=BURST * 2)
    async with httpx.AsyncClient(trust_env=False, timeout=LIMIT, limits=limits) as client:
        async with trio.open_nursery() as nursery:
            for outcome in outcomes:
                nursery.start_soon(stream_generate, client, url, outcome)
            await admitted(outcomes)
    return outcomes


def answered(metrics: httpx.Response, status: int) -> float:
    """How many generate requests a box answered with `status`, from its /metrics."""
    line = f'ollama_http_requests_total{{method="POST",route="/api/generate",status="{status}"}} '
    match = re.search(re.escape(line) + r"(\S+)", metrics.text)
    return float(match.group(1)) if match else 0.0


def completed(outcome: Outcome) -> bool:
    return outcome.status == 200 and outcome.lines[-1].get("done") is True


async def test_a_burst_past_one_box_is_served_by_the_fleet_without_503s(tmp_path, tiny_gguf):
    gate = trio.Event()
    with trio.fail_after(LIMIT):
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(box(tmp_path / "a", tiny_gguf, gate))
            b = await stack.enter_async_context(box(tmp_path / "b", tiny_gguf, gate))
            url = await stack.enter_async_context(fleet(tmp_path, [port_of(a), port_of(b)]))

            async def admitted(outcomes: list[Outcome]) -> None:
                # Both boxes full (one running and QUEUE waiting each), or a client got an
                # answer that is not a stream: then stop waiting and let the asserts speak.
                while queued(a, b) < 2 * QUEUE and not any(o.status > 200 for o in outcomes):
                    await trio.sleep(0.01)
                gate.set()

            outcomes = await burst(url, admitted)
    assert [o.status for o in outcomes] == [200] * BURST
    assert all(completed(o) for o in outcomes)


async def test_the_same_burst_to_one_box_alone_gets_503s(tmp_path, tiny_gguf):
    gate = trio.Event()
    with trio.fail_after(LIMIT):
        async with box(tmp_path / "a", tiny_gguf, gate) as a:

            async def admitted(outcomes: list[Outcome]) -> None:
                while sum(o.status == 503 for o in outcomes) < BURST - 1 - QUEUE:
                    await trio.sleep(0.01)
                gate.set()

            outcomes = await burst(a.url, admitted)
    assert sorted(o.status for o in outcomes) == [200] * (1 + QUEUE) + [503] * (BURST - 1 - QUEUE)
    assert all(completed(o) for o in outcomes if o.status == 200)
    busy = [o.lines for o in outcomes if o.status == 503]
    assert all(lines == [{"error": BUSY_TEXT}] for lines in busy)


async def test_a_503_from_a_full_box_is_retried_on_the_other(tmp_path, tiny_gguf):
    closed, opened = trio.Event(), trio.Event()
    opened.set()
    with trio.fail_after(LIMIT):
        async with AsyncExitStack() as stack:
            full = await stack.enter_async_context(box(tmp_path / "a", tiny_gguf, closed))
            free = await stack.enter_async_context(box(tmp_path / "b", tiny_gguf, opened))
            url = await stack.enter_async_context(fleet(tmp_path, [port_of(full), port_of(free)]))
            direct = await stack.enter_async_context(full.client())
            nursery = await stack.enter_async_context(trio.open_nursery())
            for _ in range(1 + QUEUE):  # fill the box behind nginx's back
                nursery.start_soon(
                    partial(direct.post, "/api/generate", json=GENERATE | {"stream": False})
                )
            while queued(full) < QUEUE:
                await trio.sleep(0.01)
            statuses, shed = [], 0.0
            async with httpx.AsyncClient(trust_env=False, timeout=LIMIT) as client:
                while shed == 0 and len(statuses) < 20:  # until nginx has tried the full box
                    r = await client.post(url + "/api/generate", json=GENERATE | {"stream": False})
                    statuses.append((r.status_code, r.json().get("done")))
                    shed = answered(await direct.get("/metrics"), 503)
            closed.set()
            nursery.cancel_scope.cancel()
    assert shed >= 1  # the full box answered nginx with 503s ...
    assert set(statuses) == {(200, True)}  # ... and every client got its answer from the other


async def test_store_changes_through_the_balancer_are_refused(tmp_path, tiny_gguf):
    gate = trio.Event()
    gate.set()
    with trio.fail_after(LIMIT):
        async with box(tmp_path / "a", tiny_gguf, gate) as a, fleet(tmp_path, [port_of(a)]) as url:
            async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=LIMIT) as client:
                pull = await client.post("/api/pull", json={"model": "tiny"})
                delete = await client.request("DELETE", "/api//delete", json={"model": "tiny"})
                blob = await client.head("/api/blobs/sha256:" + "0" * 64)
                tags = await client.get("/api/tags")
    assert (pull.status_code, delete.status_code, blob.status_code) == (403, 403, 403)
    assert "on each box directly" in pull.json()["error"]
    assert [m["name"] for m in tags.json()["models"]] == ["tiny:latest"]


async def test_the_503_is_answered_before_any_model_is_loaded(tmp_path, tiny_gguf):
    """What makes the retry safe: a request the queue bound turns away has not started."""
    add_model(tmp_path / "models", "tiny", tiny_gguf)
    loader = FakeLoader(load_seconds=0)
    with trio.fail_after(LIMIT):
        async with running_appliance(tmp_path / "models", max_queue=0, loader=loader) as a:
            async with a.client() as client:
                r = await client.post("/api/generate", json=GENERATE)
                ps = await client.get("/api/ps")
    assert (r.status_code, r.json()) == (503, {"error": BUSY_TEXT})
    assert loader.loads == [] and ps.json()["models"] == []


async def test_a_stopped_box_is_routed_around(tmp_path: Path):
    body = GENERATE | {"stream": False, "options": {"num_predict": 4, "seed": 1}}
    with trio.fail_after(LIMIT * 2):
        async with AsyncExitStack() as stack:
            servers = []
            for name in ("a", "b"):
                models = tmp_path / name / "models"
                register_tiny_model(models)
                port = free_port()
                shim = hide_reference_model(tmp_path / name / "shim")
                env = clean_env(port, models, {"PYTHONPATH": f"{shim}:{REPO}",
                                               "OLLAMA_NUM_PARALLEL": "1",
                                               "OLLAMA_MAX_QUEUE": str(QUEUE)})  # fmt: skip
                command = [sys.executable, "-m", "appliance", "serve"]
                log = tmp_path / name / "server.log"
                servers.append(
                    await stack.enter_async_context(run_server(command, env, tmp_path / name, log))
                )
            for server in servers:
                await wait_until_answers(server)
            ports = [int(s.base_url.rsplit(":", 1)[1]) for s in servers]
            url = await stack.enter_async_context(fleet(tmp_path, ports))
            client = await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, trust_env=False, timeout=LIMIT)
            )
            before = [(await client.post("/api/generate", json=body)).status_code for _ in range(2)]
            servers[0].signal_group(signal.SIGKILL)
            await servers[0].wait()
            after = []
            for _ in range(6):
                r = await client.post("/api/generate", json=body)
                after.append((r.status_code, r.json().get("done")))
    assert before == [200, 200]
    assert after == [(200, True)] * 6


async def test_hashing_on_a_model_header_keeps_a_model_on_one_box(tmp_path, tiny_gguf):
    """The README's affinity recipe: `hash $http_x_model consistent;` instead of least_conn."""
    gate = trio.Event()
    gate.set()
    with trio.fail_after(LIMIT):
        async with AsyncExitStack() as stack:
            boxes = [
                await stack.enter_async_context(box(tmp_path / name, tiny_gguf, gate))
                for name in ("a", "b")
            ]
            url = await stack.enter_async_context(
                fleet(
                    tmp_path, [port_of(b) for b in boxes], balance="hash $http_x_model consistent;"
                )
            )
            async with httpx.AsyncClient(trust_env=False, timeout=LIMIT) as client:
                for _ in range(6):
                    r = await client.post(
                        url + "/api/generate",
                        json=GENERATE | {"stream": False},
                        headers={"X-Model": "tiny"},
                    )
                    assert r.status_code == 200
                served = []
                for b in boxes:
                    served.append(answered(await client.get(b.url + "/metrics"), 200) - 1)
    assert sorted(served) == [0, 6]  # (the 1 is each box's warm-up load)


def test_fleet_file_passes_nginx_syntax_check(tmp_path: Path):
    conf = write_nginx_conf(tmp_path, render_fleet([11434, 11435], free_port()))
    result = nginx_check(tmp_path, conf)
    assert result.returncode == 0, result.stderr


def test_fleet_file_balances_by_load_retries_503s_and_streams_unbuffered():
    text = FLEET.read_text()
    for directive in (
        "least_conn;",
        "max_fails=3 fail_timeout=10s;",
        "proxy_next_upstream error timeout http_503 non_idempotent;",
        "proxy_buffering off;",
        "proxy_read_timeout 1h;",
        "proxy_http_version 1.1;",
        "keepalive 32;",
        "error_page 502 504 = @no_box;",
    ):
        assert directive in text, directive
    assert "proxy_request_buffering off" not in text  # a retry needs the buffered body
    assert "never started" in text and "appliance/serving/scheduler.py" in text


async def test_when_every_box_is_full_clients_get_503_with_retry_after(tmp_path, tiny_gguf):
    gate = trio.Event()
    with trio.fail_after(LIMIT):
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(box(tmp_path / "a", tiny_gguf, gate))
            b = await stack.enter_async_context(box(tmp_path / "b", tiny_gguf, gate))
            url = await stack.enter_async_context(fleet(tmp_path, [port_of(a), port_of(b)]))
            client = await stack.enter_async_context(
                httpx.AsyncClient(trust_env=False, timeout=LIMIT,
                                  limits=httpx.Limits(max_connections=BURST * 3))
            )  # fmt: skip
            nursery = await stack.enter_async_context(trio.open_nursery())
            fill = [Outcome() for _ in range(BURST)]
            for outcome in fill:
                nursery.start_soon(stream_generate, client, url, outcome)
            while queued(a, b) < 2 * QUEUE:
                await trio.sleep(0.01)
            shed = []
            for _ in range(8):
                r = await client.post(url + "/api/generate", json=GENERATE)
                shed.append((r.status_code, r.headers.get("retry-after"), r.text))
            gate.set()
    assert all(completed(o) for o in fill)
    assert [s[:2] for s in shed] == [(503, "1")] * 8  # never nginx's own 502
    assert all(json.loads(s[2])["error"].startswith("server busy, please try again.") for s in shed)


def readme_affinity_block() -> str:
    """The ```nginx block of the README's model-affinity recipe."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", readme, re.S)
    assert len(blocks) == 1
    return blocks[0]


async def test_the_readmes_per_model_upstream_sends_a_model_to_its_own_boxes(tmp_path, tiny_gguf):
    gate = trio.Event()
    gate.set()
    with trio.fail_after(LIMIT):
        async with AsyncExitStack() as stack:
            general = await stack.enter_async_context(box(tmp_path / "a", tiny_gguf, gate))
            llama = await stack.enter_async_context(box(tmp_path / "b", tiny_gguf, gate))
            listen_port = free_port()
            block = readme_affinity_block()
            assert block.count("server 10.0.0.2") == 2
            block = re.sub(
                r"server 10\.0\.0\.21:11434", f"server 127.0.0.1:{port_of(llama)}", block
            )
            block = re.sub(r"\s*server 10\.0\.0\.22:11434[^;]*;", "", block)
            site = render_fleet([port_of(general)], listen_port) + block
            assert site.count("proxy_pass http://llm_fleet;") == 1
            site = site.replace("proxy_pass http://llm_fleet;", "proxy_pass http://$llm_pool;")
            nginx_dir = tmp_path / "nginx"
            nginx_dir.mkdir()
            url = await stack.enter_async_context(running_nginx(nginx_dir, site, listen_port))
            client = await stack.enter_async_context(
                httpx.AsyncClient(trust_env=False, timeout=LIMIT)
            )
            body = GENERATE | {"stream": False}
            for model in ("llama3.2", "llama3.1", "gemma3", None):
                headers = {"X-Model": model} if model else {}
                r = await client.post(url + "/api/generate", json=body, headers=headers)
                assert r.status_code == 200
            served = [
                answered(await client.get(b.url + "/metrics"), 200) - 1 for b in (general, llama)
            ]
    assert served == [2, 2]  # gemma3 and no header to the fleet, llama3.x to its own box
