"""One OS thread per model for every llama.cpp compute (decode steps, embedding pieces).

ggml's CPU backend runs a graph in an OpenMP team that belongs to the calling OS thread. Work
handed to `trio.to_thread.run_sync` lands on whichever cached worker is idle, so one model's
steps and pieces ran in several teams, whose idle workers spun on the cores the busy team needed
(hence OMP_WAIT_POLICY=PASSIVE, which makes every barrier inside a graph sleep and wake). On one
thread there is one team: its barriers may spin, and nothing spins against it.

The thread lives exactly as long as `serve()`, a task in the runner's nursery: cancelling it lets
the piece in progress and those already queued finish (each is bounded), then the thread ends;
work submitted after that fails at once.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

import trio

from appliance.errors import ApplianceError


class _Job:
    def __init__(self, fn: Callable[[], Any], token: trio.lowlevel.TrioToken) -> None:
        self.fn = fn
        self.token = token
        self.done = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        """On the compute thread: run, then wake the waiter on the trio thread."""
        try:
            self.value = self.fn()
        except BaseException as exc:  # handed to the waiter, raised there
            self.error = exc
        self.token.run_sync_soon(self.done.set)

    def fail(self, error: BaseException) -> None:
        """On the trio thread, for a job the thread never took."""
        self.error = error
        self.done.set()

    def unwrap(self) -> Any:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.value


class ComputeThread:
    """Runs blocking calls, one at a time and in order, on one dedicated thread."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the thread until cancelled; returns once it has ended."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_when_cancelled)
                task_status.started()
                # Not abandoned on cancel: this returns once the thread has ended.
                await trio.to_thread.run_sync(self._loop)
                nursery.cancel_scope.cancel()
        finally:
            self._closed = True
            self._fail_leftovers()

    async def _stop_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._closed = True
            self._jobs.put(None)  # after every job queued so far

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.run()

    def _fail_leftovers(self) -> None:
        """Jobs queued where no thread reads them (it never started): fail, never hang."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.fail(ApplianceError("model unloaded while computing", status=500))

    async def run(self, fn: Callable[[], Any]) -> Any:
        """`fn()` on the compute thread. Like `trio.to_thread.run_sync`, a call that has begun is
        not cancelled: it is one bounded piece, and its caller needs to know what it did."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise ApplianceError("model unloaded while computing", status=500)
        job = _Job(fn, trio.lowlevel.current_trio_token())
        self._jobs.put(job)
        with trio.CancelScope(shield=True):
            await job.done.wait()
        return job.unwrap()
