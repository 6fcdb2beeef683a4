"""Scheduler rules, one a test, on a pure-trio backend double.

Conventions: every test runs under trio's autojump MockClock (the `autojump_clock` fixture), so
keep_alive timers and queue waits take no real time; loads take 1 s and decode steps 10 ms of trio
time (tests/fakes.py). Nothing here touches llama.cpp; the real engine has its own tests.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from appliance.errors import ApplianceError, ModelLoadError, ServerBusy
from appliance.serving.generation import run_sequence
from appliance.serving.scheduler import Limits, Scheduler
from engine.batch import SequenceRequest
from tests.fakes import FakeLoader, FakeModel, FakePlanner

BUSY = "server busy, please try again.  maximum pending requests exceeded"


@asynccontextmanager
async def running(
    *,
    n_seq: int = 1,
    max_queue: int = 512,
    max_loaded: int = 3,
    budget: int = 0,
    keep_alive: float = 300.0,
    loader: FakeLoader | None = None,
) -> AsyncIterator[tuple[Scheduler, FakeLoader]]:
    loader = loader or FakeLoader()
    limits = Limits(
        max_queue=max_queue,
        max_loaded_models=max_loaded,
        memory_budget=budget,
        default_keep_alive=keep_alive,
    )
    scheduler = Scheduler(limits=limits, loader=loader, planner=FakePlanner(n_seq))
    # Under the autojump clock a hang would block forever; a deadline turns it into a failure.
    with trio.fail_after(24 * 3600 * 365 * 20):
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            try:
                yield scheduler, loader
            finally:
                nursery.cancel_scope.cancel()


async def generate(
    scheduler: Scheduler,
    model: FakeModel,
    *,
    tokens: int = 3,
    keep_alive: float | None = None,
    options: dict | None = None,
    prompt: int = 2,
    log: list | None = None,
    tag: object = None,
) -> str:
    lease = await scheduler.acquire(model, options or {}, keep_alive)
    if log is not None:
        log.append(tag)
    text = ""
    async for chunk in run_sequence(
        lease, SequenceRequest(tokens=[1] * prompt, num_predict=tokens)
    ):
        text += chunk.text
    return text


async def test_requests_for_one_slot_are_served_in_arrival_order(autojump_clock):
    model = FakeModel("a")
    order: list[int] = []
    async with running() as (scheduler, _):
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(lambda i=i: generate(scheduler, model, log=order, tag=i))
                await trio.sleep(0.001)
    assert order == list(range(6))


async def test_full_queue_answers_503_for_a_loaded_model(autojump_clock):
    model = FakeModel("a")
    async with running(max_queue=2) as (scheduler, _):
        await generate(scheduler, model)  # loaded now
        results: list[object] = []

        async def one() -> None:
            try:
                results.append(await generate(scheduler, model, tokens=50))
            except ServerBusy as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
                await trio.testing.wait_all_tasks_blocked()
    busy = [r for r in results if isinstance(r, ServerBusy)]
    assert len(busy) == 2  # one runs, two wait, two are refused
    assert all(r.message == BUSY and r.status == 503 for r in busy)
    assert len([r for r in results if r == "t" * 50]) == 3


async def test_full_queue_answers_503_while_a_model_loads(autojump_clock):
    async with running(max_queue=1) as (scheduler, _):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(generate, scheduler, FakeModel("a"))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(ServerBusy):
                await generate(scheduler, FakeModel("b"))


async def test_a_waiting_client_that_disconnects_leaves_the_queue_and_never_runs(autojump_clock):
    model = FakeModel("a")
    started: list[str] = []
    async with running(max_queue=1) as (scheduler, _):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: generate(scheduler, model, tokens=1000, log=started, tag="first")
            )
            await trio.sleep(2)
            waiter = trio.CancelScope()

            async def doomed() -> None:
                with waiter:
                    await generate(scheduler, model, log=started, tag="doomed")

            nursery.start_soon(doomed)
            await trio.testing.wait_all_tasks_blocked()
            assert scheduler.queued == 1
            waiter.cancel()  # the client goes away
            await trio.testing.wait_all_tasks_blocked()
            assert scheduler.queued == 0
            nursery.start_soon(lambda: generate(scheduler, model, log=started, tag="next"))
    assert started == ["first", "next"]


async def test_one_model_loads_at_a_time_and_waiters_reuse_the_load(autojump_clock):
    async with running() as (scheduler, loader):
        async with trio.open_nursery() as nursery:
            for name in ["a", "a", "b", "a"]:
                nursery.start_soon(generate, scheduler, FakeModel(name))
                await trio.sleep(0.001)
    assert loader.loads == ["/models/a", "/models/b"]
    assert loader.max_concurrent == 1


async def test_idle_runner_with_shortest_keep_alive_is_evicted_first(autojump_clock):
    async with running(max_loaded=2) as (scheduler, loader):
        await generate(scheduler, FakeModel("long"), keep_alive=3600)
        await generate(scheduler, FakeModel("short"), keep_alive=60)
        await generate(scheduler, FakeModel("new"))
        loaded = sorted(r.spec.key for r in scheduler.runners)
    assert loaded == ["/models/long", "/models/new"]


async def test_forever_keep_alive_sorts_last_for_eviction(autojump_clock):
    async with running(max_loaded=2) as (scheduler, _):
        await generate(scheduler, FakeModel("pinned"), keep_alive=math.inf)
        await generate(scheduler, FakeModel("hour"), keep_alive=3600)
        await generate(scheduler, FakeModel("new"))
        loaded = sorted(r.spec.key for r in scheduler.runners)
    assert loaded == ["/models/new", "/models/pinned"]


async def test_a_request_waits_for_a_busy_runner_to_be_evicted(autojump_clock):
    async with running(max_loaded=1) as (scheduler, loader):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: generate(scheduler, FakeModel("a"), tokens=100))
            await trio.sleep(1.5)
            before = trio.current_time()
            await generate(scheduler, FakeModel("b"))
            # b could only load once a's 100 steps were done
            assert trio.current_time() - before >= 0.9
        assert [r.spec.key for r in scheduler.runners] == ["/models/b"]


async def test_keep_alive_timer_runs_only_while_idle(autojump_clock):
    async with running() as (scheduler, _):
        model = FakeModel("a")
        # A long request (1000 steps = 10 s) with keep_alive 5 s: the runner must survive it.
        await generate(scheduler, model, tokens=1000, keep_alive=5)
        assert len(scheduler.runners) == 1
        await trio.sleep(4.9)
        assert len(scheduler.runners) == 1
        await trio.sleep(0.2)
        assert scheduler.runners == []


async def test_keep_alive_sticks_to_the_runner_when_a_request_has_none(autojump_clock):
    async with running(keep_alive=300) as (scheduler, _):
        model = FakeModel("a")
        await generate(scheduler, model, keep_alive=30)
        await generate(scheduler, model)  # no keep_alive: keeps 30 s, not the 300 s default
        (runner,) = scheduler.runners
        assert runner.keep_alive == 30
        await trio.sleep(31)
        assert scheduler.runners == []


async def test_keep_alive_zero_unloads_right_after_the_request(autojump_clock):
    async with running() as (scheduler, loader):
        await generate(scheduler, FakeModel("a"), keep_alive=0)
        await trio.testing.wait_all_tasks_blocked()
        assert scheduler.runners == []
        assert loader.backends[0].closed


async def test_negative_keep_alive_never_expires(autojump_clock):
    async with running() as (scheduler, _):
        await generate(scheduler, FakeModel("a"), keep_alive=math.inf)
        await trio.sleep(10 * 365 * 86400)
        assert len(scheduler.runners) == 1


async def test_load_time_option_change_reloads_once_running_requests_end(autojump_clock):
    async with running() as (scheduler, loader):
        model = FakeModel("a")
        await generate(scheduler, model, options={"num_ctx": 2048})
        await generate(scheduler, model, options={"num_ctx": 4096})
        assert loader.loads == ["/models/a", "/models/a"]
        assert [r.spec.num_ctx for r in scheduler.runners] == [4096]


async def test_sampling_option_change_never_reloads(autojump_clock):
    async with running() as (scheduler, loader):
        model = FakeModel("a")
        await generate(scheduler, model, options={"temperature": 0.1})
        await generate(scheduler, model, options={"temperature": 0.9, "top_k": 3})
        assert loader.loads == ["/models/a"]


async def test_a_model_that_can_never_fit_is_refused_at_once(autojump_clock):
    async with running(budget=1000) as (scheduler, loader):
        with pytest.raises(ApplianceError, match="requires more system memory"):
            await generate(scheduler, FakeModel("huge", size=5000))
        assert loader.loads == []


async def test_models_load_side_by_side_while_they_fit_the_budget(autojump_clock):
    async with running(budget=1000) as (scheduler, _):
        await generate(scheduler, FakeModel("a", size=400))
        await generate(scheduler, FakeModel("b", size=400))
        assert len(scheduler.runners) == 2
        await generate(scheduler, FakeModel("c", size=400))
        assert sorted(r.spec.key for r in scheduler.runners)[-1] == "/models/c"
        assert len(scheduler.runners) == 2


async def test_a_failed_load_answers_every_waiter_and_leaves_no_runner(autojump_clock):
    loader = FakeLoader(failing={"/models/bad"})
    async with running(loader=loader) as (scheduler, _):
        errors: list[Exception] = []

        async def one() -> None:
            try:
                await generate(scheduler, FakeModel("bad"))
            except ModelLoadError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(one)
        assert len(errors) == 3 or len(errors) >= 1
        assert scheduler.runners == []


async def test_parallel_slots_decode_together(autojump_clock):
    async with running(n_seq=4) as (scheduler, loader):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(lambda: generate(scheduler, FakeModel("a"), tokens=20))
        backend = loader.backends[0]
    assert max(len(s["active"]) for s in backend.steps) == 4


async def test_cancelled_request_leaves_the_batch_mid_prompt(autojump_clock):
    async with running() as (scheduler, loader):
        model = FakeModel("a")
        await generate(scheduler, model)  # load first
        backend = loader.backends[0]
        scope = trio.CancelScope()

        async def long_prompt() -> None:
            with scope:
                await generate(scheduler, model, prompt=400)  # 100 prefill steps

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_prompt)
            await trio.sleep(0.05)  # a few prefill steps in
            steps_before = len(backend.steps)
            scope.cancel()
        await trio.sleep(0.1)  # let the batch loop take its next steps
        # The release rides on the next decode step (at most the one already in flight
        # finishes first), and the sequence is gone from every step after it.
        release_at = next(i for i, step in enumerate(backend.steps) if 0 in step["releases"])
        assert release_at - steps_before <= 1
        assert all(step["active"] == [] for step in backend.steps[release_at:])


async def test_unload_expires_a_busy_runner_after_its_last_request(autojump_clock):
    async with running() as (scheduler, _):
        model = FakeModel("a")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: generate(scheduler, model, tokens=100))
            await trio.sleep(1.5)
            assert scheduler.unload(str(model.model_path))
            assert len(scheduler.runners) == 1  # still busy
        await trio.testing.wait_all_tasks_blocked()
        assert scheduler.runners == []


async def test_shutdown_ends_streams_with_an_error_after_the_grace_period(autojump_clock):
    async with running() as (scheduler, _):
        model = FakeModel("a")
        outcome: list[object] = []

        async def forever() -> None:
            try:
                await generate(scheduler, model, tokens=10**6)
            except ApplianceError as exc:
                outcome.append(exc.message)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forever)
            await trio.sleep(2)
            await scheduler.shutdown(grace=5)
        assert outcome == ["server is shutting down"]
        assert scheduler.runners == []


# ---- sequence identity, slots released at the end, the prompt cache, reloads ---------------------


def request(first: str, *, n: int = 3, prompt: list[int] | None = None) -> SequenceRequest:
    return SequenceRequest(tokens=prompt or [ord(first)], num_predict=n)


async def test_a_late_chunk_of_a_hung_up_sequence_never_reaches_the_next_holder(autojump_clock):
    # One slot: A hangs up after its first chunk while the next step (with A's next chunk) is in
    # flight; B, already waiting, takes the slot at once. Every chunk B sees must be its own.
    async with running(loader=FakeLoader(echo=True)) as (scheduler, _):
        model = FakeModel("a")
        texts: list[str] = []

        async def b() -> None:
            lease = await scheduler.acquire(model, {}, None)
            texts.append("".join([c.text async for c in run_sequence(lease, request("b"))]))

        a = await scheduler.acquire(model, {}, None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b)
            chunks = run_sequence(a, request("a", n=50))
            assert (await chunks.__anext__()).text == "a"
            await chunks.aclose()
    assert texts == ["bbb"]


async def test_a_sequence_id_is_reused_only_after_a_step_released_it(autojump_clock):
    async with running(loader=FakeLoader(echo=True)) as (scheduler, loader):
        model = FakeModel("a")
        a = await scheduler.acquire(model, {}, None)
        chunks = run_sequence(a, request("a", n=50))
        await chunks.__anext__()
        await chunks.aclose()  # the lease is back at once; the sequence is not, yet
        b = await scheduler.acquire(model, {}, None)
        assert await generate_on(b, request("b")) == "bbb"
        steps = loader.backends[0].steps
    release_at = next(i for i, step in enumerate(steps) if step["releases"] == [0])
    admit_b = [i for i, step in enumerate(steps) if step["admits"] == [0]][1]
    assert admit_b > release_at


async def generate_on(lease, req: SequenceRequest) -> str:  # type: ignore[no-untyped-def]
    return "".join([c.text async for c in run_sequence(lease, req)])


async def test_a_finished_sequence_gives_its_slot_back_before_it_is_read(autojump_clock):
    async with running() as (scheduler, _):
        model = FakeModel("a")
        lease = await scheduler.acquire(model, {}, None)
        unread = run_sequence(lease, request("a", n=5))
        with trio.fail_after(5):
            # The first iteration submits; nothing is read after it.
            await unread.__anext__()
            second = await scheduler.acquire(model, {}, None)  # one slot: free once A is done
        assert await generate_on(second, request("b")) == "ttt"
        rest = [c async for c in unread]  # A's chunks waited for their reader
        assert rest[-1].done and len(rest) == 5


async def test_a_follow_up_goes_to_the_sequence_that_holds_its_prefix(autojump_clock):
    async with running(n_seq=3) as (scheduler, loader):
        model = FakeModel("a")
        convo_x, convo_y = list(range(100, 140)), list(range(200, 240))
        async with trio.open_nursery() as nursery:
            for prompt in (convo_x, convo_y):
                nursery.start_soon(run_prompt, scheduler, model, prompt)
        backend = loader.backends[0]
        seq_of = {tuple(t[:2]): s for s, t in backend.cached.items()}
        await run_prompt(scheduler, model, convo_y + [7, 8, 9])
        await run_prompt(scheduler, model, convo_x + [7, 8, 9])
        admits = [a for step in backend.steps for a in step["admits"]]
    assert admits[-2:] == [seq_of[(200, 201)], seq_of[(100, 101)]]


async def run_prompt(scheduler: Scheduler, model: FakeModel, prompt: list[int]) -> None:
    lease = await scheduler.acquire(model, {}, None)
    await generate_on(lease, SequenceRequest(tokens=prompt, num_predict=2))


async def test_a_new_prompt_takes_the_least_recently_used_free_sequence(autojump_clock):
    async with running(n_seq=3) as (scheduler, loader):
        model = FakeModel("a")
        for base in (100, 200, 300):  # one after another: sequences 0, 1, 2 in turn
            await run_prompt(scheduler, model, list(range(base, base + 40)))
        await run_prompt(scheduler, model, list(range(100, 140)) + [1])  # uses sequence 0 again
        await run_prompt(scheduler, model, list(range(500, 540)))  # no useful prefix anywhere
        admits = [a for step in loader.backends[0].steps for a in step["admits"]]
    assert admits == [0, 1, 2, 0, 1]


async def test_a_smaller_num_ctx_is_served_by_a_larger_runner_without_a_reload(autojump_clock):
    async with running() as (scheduler, loader):
        model = FakeModel("a")
        # Open WebUI: num_ctx on the chat, none on its follow-up task, and so on.
        for options in ({"num_ctx": 8192}, {}, {"num_ctx": 8192}, {}, {"num_ctx": 4096}):
            await generate(scheduler, model, options=options)
        assert len(loader.loads) == 1
        await generate(scheduler, model, options={"num_ctx": 16384})  # more: reload once
        await generate(scheduler, model, options={"num_ctx": 8192})
        await generate(scheduler, model, options={})
        assert len(loader.loads) == 2
        (runner,) = scheduler.runners
        assert runner.spec.num_ctx == 16384


async def test_a_request_keeps_its_own_num_ctx_on_a_larger_runner(autojump_clock):
    async with running() as (scheduler, loader):
        model = FakeModel("a")
        await generate(scheduler, model, options={"num_ctx": 8192})
        lease = await scheduler.acquire(model, {}, None)  # the planner's default: 2048
        req = SequenceRequest(tokens=[1], num_predict=1)
        await generate_on(lease, req)
        assert lease.num_ctx == 2048 and req.num_ctx == 2048
