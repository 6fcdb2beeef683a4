"""Admission, the bounded queue, loads, eviction and the memory budget.

Every request for a model, loaded or not, waits in one bounded FIFO (`OLLAMA_MAX_QUEUE`): Ollama
lets requests for a loaded model bypass its bound (ollama#7758); here the bound holds on every
path. A waiter leaves the queue the moment its client goes away and is never run (llama.cpp#13262).

Requests for one model are served strictly in arrival order; a waiter for one model does not block
another model's free slots. Only one model loads at a time, in arrival order. All state changes
happen on the trio thread, and `_dispatch()` (synchronous) is run after each one.

The scheduler counts slots, it does not own them: a granted request holds a claim on a runner
(`Runner.capacity`, `claim`, `unclaim`); which engine sequence runs it is the runner's choice.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from appliance.errors import ApplianceError, ServerBusy, ShuttingDown
from appliance.serving.backend import Loader, LoadSpec
from appliance.serving.runner import Item, Runner, RunnerObserver
from appliance.settings.platform import format_gib
from engine.batch import SequenceRequest

if TYPE_CHECKING:
    from appliance.store.store import LocalModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """The scheduler's knobs, resolved from settings and platform defaults."""

    max_queue: int = 512
    max_loaded_models: int = 3
    memory_budget: int = 0  # bytes; 0 means unlimited
    default_keep_alive: float = 300.0


@dataclass(eq=False)
class Lease:
    """One request's claim on a runner: at most one sequence, then `release()` (idempotent).

    Routes talk to the lease, not to the runner's backend. `spec` is what the request asked for:
    a runner loaded with a larger context may serve it, and the request keeps its own `num_ctx`.
    The claim is given back the moment the sequence leaves the engine (done, refused or failed),
    not when the client has read its answer; a client that never reads holds no slot.
    """

    runner: Runner
    scheduler: Scheduler
    spec: LoadSpec
    acquired_at: float = field(default_factory=time.monotonic)
    ticket: int | None = None
    released: bool = False

    @property
    def num_ctx(self) -> int:
        """The request's own context limit (never more than the runner's)."""
        return min(self.spec.num_ctx, self.runner.spec.num_ctx)

    @property
    def backend(self) -> Any:
        assert self.runner.backend is not None
        return self.runner.backend

    @property
    def bos_text(self) -> str:
        return self.backend.bos_text or ""

    @property
    def eos_text(self) -> str:
        return self.backend.eos_text or ""

    @property
    def chat_template(self) -> str | None:
        return self.backend.chat_template

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return await self.runner.tokenize(text, add_special=add_special)

    def tokenize_blocking(self, text: str, *, add_special: bool = True) -> list[int]:
        """Tokenize on the calling (worker) thread; safe beside a running decode."""
        return self.backend.tokenize_blocking(text, add_special=add_special)

    async def detokenize(self, tokens: list[int]) -> str:
        return await self.backend.detokenize(tokens)

    async def embed(
        self, texts: list[str], *, truncate: bool, normalize: bool, dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        return await self.runner.embed(
            texts, truncate=truncate, normalize=normalize, dimensions=dimensions
        )

    def submit(self, request: SequenceRequest) -> trio.MemoryReceiveChannel[Item]:
        """Start this lease's one sequence; the lease is released when the sequence ends."""
        if self.released or self.ticket is not None:
            raise RuntimeError("a lease runs one sequence")
        if request.num_ctx <= 0 or request.num_ctx > self.num_ctx:
            request.num_ctx = self.num_ctx
        self.ticket, receive = self.runner.submit(request, on_end=self.release)
        return receive

    def release(self) -> None:
        if not self.released:
            self.released = True
            if self.ticket is not None:
                self.runner.cancel(self.ticket)
            self.scheduler._release(self)


@dataclass(eq=False)
class _Waiter:
    spec: LoadSpec
    model: LocalModel
    keep_alive: float | None
    event: trio.Event = field(default_factory=trio.Event)
    result: Lease | ApplianceError | None = None


SpecPlanner = Callable[["LocalModel", Any], Awaitable[LoadSpec]]


class Scheduler:
    def __init__(
        self,
        *,
        limits: Limits,
        loader: Loader,
        planner: SpecPlanner,
        observer: RunnerObserver | None = None,
    ) -> None:
        self.limits = limits
        self.observer = observer  # handed to every runner (metrics)
        self._loader = loader
        self._planner = planner
        self._pending: deque[_Waiter] = deque()
        self._runners: dict[str, Runner] = {}
        self._loading: Runner | None = None
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._changed = trio.Event()

    # ---- lifetime -------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Scheduler] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own every runner; cancelling this task unloads them all."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await trio.sleep_forever()

    async def shutdown(self, grace: float) -> None:
        """Stop admitting, let streams finish for `grace` seconds, then end them and unload all."""
        self._closing = True
        for waiter in list(self._pending):
            self._fail(waiter, ShuttingDown())
        with trio.move_on_after(grace):
            while any(r.ref_count for r in self._runners.values()):
                await self._wait_changed()
        for runner in list(self._runners.values()):
            runner.abort_all(ShuttingDown("server is shutting down"))
            runner.unload()
        while self._runners:
            await self._wait_changed()

    async def _wait_changed(self) -> None:
        self._changed = trio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()

    # ---- the public face ------------------------------------------------------------------------

    @property
    def runners(self) -> list[Runner]:
        return list(self._runners.values())

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def acquire(self, model: LocalModel, options: Any, keep_alive: float | None) -> Lease:
        """A slot on a runner for `model`, loading it if needed; waits in the bounded FIFO."""
        if self._closing:
            raise ShuttingDown()
        spec = await self._planner(model, options)
        if len(self._pending) >= self.limits.max_queue:
            raise ServerBusy()
        waiter = _Waiter(spec, model, keep_alive)
        self._pending.append(waiter)
        self._dispatch()
        try:
            await waiter.event.wait()
        except BaseException:
            # The client went away (or the server stops): leave the queue, or give the slot back.
            if waiter in self._pending:
                self._pending.remove(waiter)
            elif isinstance(waiter.result, Lease):
                waiter.result.release()
            self._dispatch()
            raise
        result = waiter.result
        if isinstance(result, ApplianceError):
            raise result
        assert isinstance(result, Lease)
        return result

    def unload(self, key: str) -> bool:
        """Expire the runner of `key` without loading anything (keep_alive 0 with no prompt)."""
        runner = self._runners.get(key)
        if runner is None:
            return False
        runner.expire(keep_alive=0)
        return True

    def forget_name(self, deleted: Any, remaining: list[LocalModel]) -> None:
        """A loaded model must not keep showing a deleted name (in /api/ps and /metrics labels):
        it goes on under another name for the same weights, or unloads once idle."""
        for runner in self._runners.values():
            if runner.model.name != deleted:
                continue
            same = [m for m in remaining if m.model_path == runner.model.model_path]
            if same:
                runner.model = same[0]
            else:
                runner.expire()

    async def unload_idle(self, key: str) -> None:
        """`unload`, and wait until an idle runner is gone, so a client that lists /api/ps right
        after (Open WebUI's eject) no longer sees it. A runner still generating for others goes
        when they finish; that is not waited for."""
        runner = self._runners.get(key)
        if runner is None:
            return
        runner.expire(keep_alive=0)
        if runner.ref_count == 0 and runner.state != "loading":
            await runner.exited.wait()

    # ---- dispatch -------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        blocked: set[str] = set()
        load_waiting = False  # loads start in arrival order: one waiting load blocks later ones
        for waiter in list(self._pending):
            key = waiter.spec.key
            if key in blocked:
                continue
            blocked.add(key)
            runner = self._runners.get(key)
            if runner is not None:
                if runner.state == "ready" and not runner.expired:
                    reasons = runner.spec.reload_reasons(waiter.spec)
                    if reasons:
                        log.info("reloading %s: %s", waiter.model.name, ", ".join(reasons))
                        runner.expire()
                    elif runner.capacity > 0:
                        self._grant(waiter, runner)
                        blocked.discard(key)  # the next waiter for it may take another slot
                continue  # loading, expiring or full: wait for it
            if self._loading is not None or load_waiting:
                continue
            verdict = self._make_room(waiter.spec)
            if verdict == "fits":
                self._start_load(waiter)
            elif verdict == "never":
                self._fail(waiter, self._never_fits(waiter))
                blocked.discard(key)
            else:
                load_waiting = True
        self._notify()

    def _grant(self, waiter: _Waiter, runner: Runner) -> None:
        runner.claim(waiter.keep_alive)
        self._pending.remove(waiter)
        waiter.result = Lease(runner, self, waiter.spec)
        waiter.event.set()

    def _fail(self, waiter: _Waiter, error: ApplianceError) -> None:
        if waiter in self._pending:
            self._pending.remove(waiter)
        waiter.result = error
        waiter.event.set()

    def _release(self, lease: Lease) -> None:
        lease.runner.unclaim()
        self._dispatch()

    # ---- loading and eviction -------------------------------------------------------------------

    def _start_load(self, waiter: _Waiter) -> None:
        assert self._nursery is not None, "Scheduler.run() is not running"
        keep_alive = waiter.keep_alive
        if keep_alive is None:
            keep_alive = self.limits.default_keep_alive
        runner = Runner(
            waiter.spec,
            waiter.model,
            loader=self._loader,
            keep_alive=keep_alive,
            on_ready=self._on_ready,
            on_exit=self._on_exit,
            observer=self.observer,
        )
        log.info(
            "loading %s (%d slots x %d ctx, ~%d MiB)",
            waiter.model.name,
            waiter.spec.n_seq,
            waiter.spec.num_ctx,
            waiter.spec.memory_bytes >> 20,
        )
        self._runners[waiter.spec.key] = runner
        self._loading = runner
        self._nursery.start_soon(runner.run)

    def _on_ready(self, runner: Runner) -> None:
        if self._loading is runner:
            self._loading = None
        self._dispatch()

    def _on_exit(self, runner: Runner) -> None:
        if self._runners.get(runner.spec.key) is runner:
            del self._runners[runner.spec.key]
        if self._loading is runner:
            self._loading = None
        if runner.load_error is not None:
            for waiter in [w for w in self._pending if w.spec.key == runner.spec.key]:
                self._fail(waiter, runner.load_error)
        self._dispatch()

    def _make_room(self, spec: LoadSpec) -> str:
        """'fits', 'never', or 'evicting' (a victim was told to unload; wait for it)."""
        budget = self.limits.memory_budget
        if budget and spec.memory_bytes > budget:
            return "never"
        loaded = list(self._runners.values())
        used = sum(r.spec.memory_bytes for r in loaded)
        too_many = 0 < self.limits.max_loaded_models <= len(loaded)
        too_big = bool(budget) and used + spec.memory_bytes > budget
        if not (too_many or too_big):
            return "fits"
        victim = self._choose_victim(loaded)
        if victim is not None:
            log.info("unloading %s to make room for %s", victim.model.name, spec.model_path)
            victim.expire()
        return "evicting"

    @staticmethod
    def _choose_victim(loaded: list[Runner]) -> Runner | None:
        """Shortest keep_alive first, idle before busy, ties by path (reference §4.4)."""
        candidates = sorted(
            (r for r in loaded if r.state == "ready"),
            key=lambda r: (r.keep_alive if r.keep_alive >= 0 else math.inf, r.spec.key),
        )
        if not candidates:
            return None
        for runner in candidates:
            if runner.ref_count == 0:
                return runner
        return candidates[0]

    def _never_fits(self, waiter: _Waiter) -> ApplianceError:
        need = waiter.spec.memory_bytes
        return ApplianceError(
            f"model requires more system memory ({format_gib(need)}) than is available "
            f"({format_gib(self.limits.memory_budget)})"
        )
