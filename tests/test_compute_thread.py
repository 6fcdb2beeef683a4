"""Every llama.cpp compute of one model runs on one OS thread (issue 9): one OpenMP team, so an
idle team never spins against the busy one; what is queued when the model unloads ends, never hangs.

Real server on loopback with the tiny model; the threads are recorded in the server's own process.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import add_model, running_appliance

from appliance.errors import ApplianceError
from appliance.serving.compute_thread import ComputeThread

LIMIT = 120


@pytest.fixture
def models(tmp_path: Path, tiny_gguf: Path) -> Path:
    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf)
    return models


class ThreadLog:
    """The OS thread of every decode step and embedding piece."""

    def __init__(self) -> None:
        self.threads: list[tuple[str, int]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from engine.batch import BatchEngine
        from engine.embed import Embedder

        real_advance, real_step = Embedder.advance, BatchEngine.step

        def advance(embedder: Embedder, job: Any) -> bool:
            self.threads.append(("piece", threading.get_ident()))
            return real_advance(embedder, job)

        def step(engine: BatchEngine) -> Any:
            self.threads.append(("step", threading.get_ident()))
            return real_step(engine)

        monkeypatch.setattr(Embedder, "advance", advance)
        monkeypatch.setattr(BatchEngine, "step", step)


async def test_decode_steps_and_embedding_pieces_of_a_model_run_on_one_thread(models, monkeypatch):
    log = ThreadLog()
    log.install(monkeypatch)
    generate = {
        "model": "tiny",
        "prompt": "a",
        "raw": True,
        "stream": False,
        "options": {"num_ctx": 512, "num_predict": 24},
    }
    embed = {"model": "tiny", "input": ["hello world " * 100] * 3, "options": {"num_ctx": 512}}
    with trio.fail_after(LIMIT):
        async with running_appliance(models, num_parallel=2) as server, server.client() as client:
            answers: list[int] = []

            async def post(path: str, body: dict[str, Any]) -> None:
                answers.append((await client.post(path, json=body)).status_code)

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(post, "/api/generate", generate)
                    nursery.start_soon(post, "/api/embed", embed)
    assert answers == [200] * 6
    kinds = {kind for kind, _ in log.threads}
    assert kinds == {"step", "piece"}
    assert len({ident for _, ident in log.threads}) == 1, log.threads


async def test_work_queued_when_the_thread_stops_runs_and_later_work_fails() -> None:
    compute = ComputeThread()
    gate, entered = threading.Event(), threading.Event()
    ran: list[str] = []

    def first() -> str:
        entered.set()
        gate.wait(LIMIT)
        ran.append("first")
        return "first"

    results: list[Any] = []
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as owner:
                await owner.start(compute.serve)

                async def call(fn: Any) -> None:
                    results.append(await compute.run(fn))

                outer.start_soon(call, first)
                await trio.to_thread.run_sync(entered.wait, LIMIT)
                outer.start_soon(call, lambda: ran.append("queued") or "queued")
                await trio.sleep(0.05)  # the second call is queued behind the first
                owner.cancel_scope.cancel()  # the owner stops the thread: queued work still runs
                gate.set()
    assert sorted(results) == ["first", "queued"]  # both answered; the waiters wake in any order
    with pytest.raises(ApplianceError, match="unloaded"):
        await compute.run(lambda: ran.append("late"))
    assert ran == ["first", "queued"]


async def test_work_queued_before_a_thread_that_never_started_fails() -> None:
    compute = ComputeThread()
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            failed: list[BaseException] = []

            async def call() -> None:
                try:
                    await compute.run(lambda: "never")
                except ApplianceError as exc:
                    failed.append(exc)

            nursery.start_soon(call)
            await trio.sleep(0.05)
            with trio.CancelScope() as scope:
                scope.cancel()
                await compute.serve()  # cancelled before its thread starts
    assert len(failed) == 1


async def test_a_call_that_raises_reaches_its_caller_and_the_thread_takes_the_next() -> None:
    compute = ComputeThread()

    def fails() -> None:
        raise RuntimeError("llama_decode failed")

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as owner:
            await owner.start(compute.serve)
            with pytest.raises(RuntimeError, match="llama_decode failed"):
                await compute.run(fails)
            after = await compute.run(threading.get_ident)
            owner.cancel_scope.cancel()
    assert after != threading.get_ident()  # still the compute thread, not the caller's
