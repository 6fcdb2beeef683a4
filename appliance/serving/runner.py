"""One loaded model: its nursery, its slots, its keep_alive scope and its batch loop.

A runner lives exactly as long as `run()`: loading happens inside it (in a worker thread), the batch
loop runs in its nursery, and unloading is cancelling its scope. The scope's deadline is the
keep_alive timer: set when the runner goes idle, lifted (infinite) while any request holds a slot.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from appliance.errors import ApplianceError, ModelLoadError
from appliance.serving.backend import Backend, Loader, LoadSpec, Rejected
from engine.batch import Chunk, SequenceRequest

if TYPE_CHECKING:
    from appliance.store.store import LocalModel

log = logging.getLogger(__name__)

MAX_INT64_SECONDS = (2**63 - 1) / 1e9  # Go's "forever" duration

#: What a generation channel carries: engine chunks, or the error that ended the sequence.
Item = Chunk | ApplianceError


class RunnerObserver(Protocol):
    """What a runner reports as it works (metrics); called on the trio thread, must not block."""

    def model_loaded(self, runner: Runner, seconds: float) -> None: ...

    def decode_step(self, runner: Runner) -> None: ...

    def sequence_done(self, runner: Runner, chunk: Chunk) -> None: ...


@dataclass(eq=False)
class _Job:
    send: trio.MemorySendChannel[Item]
    admitted: bool = False


class Runner:
    """A loaded (or loading) model; owned by the scheduler's nursery."""

    def __init__(
        self,
        spec: LoadSpec,
        model: LocalModel,
        *,
        loader: Loader,
        keep_alive: float,
        on_ready: Callable[[Runner], None],
        on_exit: Callable[[Runner], None],
        observer: RunnerObserver | None = None,
    ) -> None:
        self.spec = spec
        self.model = model
        self.keep_alive = keep_alive
        self.backend: Backend | None = None
        self.state = "loading"  # loading -> ready -> gone
        self.load_error: ApplianceError | None = None
        self.ref_count = 0
        self.expired = False  # unload as soon as idle; never handed out again
        self.free_slots: list[int] = list(range(spec.n_seq))
        self.expires_at: float = math.inf  # wall-clock seconds, for /api/ps
        self.loaded_at: float | None = None
        self._loader = loader
        self._on_ready = on_ready
        self._on_exit = on_exit
        self._observer = observer
        self._scope = trio.CancelScope()
        self._jobs: dict[int, _Job] = {}
        self._admits: list[tuple[int, SequenceRequest]] = []
        self._releases: list[int] = []
        self._wake = trio.Event()
        self.steps = 0
        self.prompt_template: Any = None  # parsed once, by the routes, on first use
        self.exited = trio.Event()  # set once the model is freed and the scheduler forgot it

    # ---- lifetime -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Load, serve until unloaded, then free the model; never raises."""
        try:
            with self._scope:
                started = time.monotonic()
                try:
                    self.backend = await self._loader(self.spec)
                except ApplianceError as exc:
                    self.load_error = exc
                    return
                except Exception as exc:
                    log.warning("loading %s failed: %s", self.spec.model_path, exc)
                    self.load_error = ModelLoadError(f"llama runner process has terminated: {exc}")
                    return
                self.state = "ready"
                self.loaded_at = time.time()
                if self._observer is not None:
                    self._observer.model_loaded(self, time.monotonic() - started)
                self._on_ready(self)  # hands out slots to the requests that waited for the load
                self.set_idle_if_unused()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._batch_loop)
        finally:
            self.state = "gone"
            self._fail_jobs(ApplianceError("model unloaded while generating", status=500))
            if self.backend is not None:
                with trio.CancelScope(shield=True):
                    await self.backend.aclose()
            self._on_exit(self)
            self.exited.set()

    def unload(self) -> None:
        """Unload now (cancels the lifetime scope); in-flight requests get an error line."""
        self.expired = True
        self._scope.cancel()

    def expire(self) -> None:
        """Unload as soon as no request holds the runner (Ollama's expireRunner)."""
        self.expired = True
        if self.ref_count == 0 and self.state != "loading":
            self.unload()

    # ---- keep_alive -----------------------------------------------------------------------------

    def set_busy(self) -> None:
        self._scope.deadline = math.inf

    def set_idle_if_unused(self) -> None:
        """Start the keep_alive timer when no request holds a slot."""
        if self.ref_count:
            return
        if self.expired or self.keep_alive <= 0:
            self.unload()
            return
        self._scope.deadline = trio.current_time() + self.keep_alive
        self.expires_at = (
            time.time() + self.keep_alive if math.isfinite(self.keep_alive) else math.inf
        )

    def expires_at_wall(self, now: float) -> float:
        """When the model unloads, for /api/ps: set when it went idle; while it loads or before
        its first idle moment, now + keep_alive; "forever" is now + MaxInt64 ns, as in Ollama."""
        expires = self.expires_at
        if not math.isfinite(expires) and math.isfinite(self.keep_alive):
            expires = now + self.keep_alive
        return min(expires, now + MAX_INT64_SECONDS)

    # ---- generation -----------------------------------------------------------------------------

    def submit(self, slot: int, request: SequenceRequest) -> trio.MemoryReceiveChannel[Item]:
        """Join the running batch on `slot`; chunks arrive on the returned channel."""
        if self.state != "ready":
            raise ApplianceError("model is not loaded", status=500)
        send, receive = trio.open_memory_channel[Item](math.inf)
        self._jobs[slot] = _Job(send)
        self._admits.append((slot, request))
        self._wake.set()
        return receive

    def cancel(self, slot: int) -> None:
        """Drop the sequence on `slot`; it leaves the batch before the next decode step."""
        job = self._jobs.pop(slot, None)
        if job is None:
            return
        job.send.close()
        pending = [a for a in self._admits if a[0] == slot]
        if pending:
            self._admits = [a for a in self._admits if a[0] != slot]
        else:
            self._releases.append(slot)
        self._wake.set()

    def _fail_jobs(self, error: ApplianceError) -> None:
        for job in self._jobs.values():
            try:
                job.send.send_nowait(error)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            job.send.close()
        self._jobs.clear()
        self._admits.clear()

    def abort_all(self, error: ApplianceError) -> None:
        """End every in-flight sequence with `error` (shutdown); their slots are released."""
        slots = list(self._jobs)
        self._fail_jobs(error)
        self._releases.extend(slots)
        self._wake.set()

    async def _batch_loop(self) -> None:
        assert self.backend is not None
        backend = self.backend
        while True:
            if not (self._admits or self._releases or self._jobs):
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            admits, self._admits = self._admits, []
            releases, self._releases = self._releases, []
            for slot, _ in admits:
                job = self._jobs.get(slot)
                if job is not None:
                    job.admitted = True
            try:
                chunks = await backend.step(admits, releases)
            except Exception as exc:
                log.exception("decode step failed")
                slots = list(self._jobs)
                self._fail_jobs(ApplianceError(f"decode failed: {exc}", status=500))
                self._releases.extend(slots)
                continue
            self.steps += 1
            if self._observer is not None:
                self._observer.decode_step(self)
            for chunk in chunks:
                self._deliver(chunk)

    def _deliver(self, chunk: Chunk | Rejected) -> None:
        if self._observer is not None and isinstance(chunk, Chunk) and chunk.done:
            self._observer.sequence_done(self, chunk)  # the work was done, read or not
        job = self._jobs.get(chunk.seq)
        if job is None:
            return
        if isinstance(chunk, Rejected):
            self._jobs.pop(chunk.seq, None)
            try:
                job.send.send_nowait(chunk.error)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            job.send.close()
            return
        try:
            job.send.send_nowait(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The client went away between steps: free the sequence now.
            self._jobs.pop(chunk.seq, None)
            if not chunk.done:
                self._releases.append(chunk.seq)
            return
        if chunk.done:
            self._jobs.pop(chunk.seq, None)
            job.send.close()

    # ---- other work on the model ---------------------------------------------------------------

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        assert self.backend is not None
        return await self.backend.tokenize(text, add_special=add_special)

    async def embed(
        self, texts: list[str], *, truncate: bool, normalize: bool, dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        assert self.backend is not None
        return await self.backend.embed(
            texts, truncate=truncate, normalize=normalize, dimensions=dimensions
        )
