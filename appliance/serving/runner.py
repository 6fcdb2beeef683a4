"""One loaded model: its nursery, its sequences, its keep_alive scope and its batch loop.

A runner lives exactly as long as `run()`: loading happens inside it (in a worker thread), the batch
loop runs in its nursery, and unloading is cancelling its scope. The scope's deadline is the
keep_alive timer: set when the runner goes idle, lifted (infinite) while any request holds a claim.

The runner alone owns its engine sequence ids. The scheduler only counts claims (at most `n_seq`);
a claimed request submits its prompt and gets a ticket, a number never used twice. The ticket is
placed on the free sequence whose cache shares the longest prefix with the prompt (the prompt
cache), every engine chunk carries it, and a chunk whose ticket is no longer live (its client hung
up while a step was in flight) is dropped. A sequence id is free again only once the engine has
really let it go: its done chunk arrived, or a step processed its release.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

from appliance.errors import ApplianceError, ModelLoadError
from appliance.serving.backend import Admit, Backend, Loader, LoadSpec, Rejected, Release
from engine.batch import MIN_REUSE, Chunk, SequenceRequest

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


#: A cached prefix shorter than the engine's MIN_REUSE, or than this share of the prompt, is not
#: worth a sequence's cache: the prompt goes to the least recently used free sequence instead
#: (llama-server's slot similarity rule, 0.1).
MIN_USEFUL_SHARE = 0.1


@dataclass(eq=False)
class _Job:
    """One submitted sequence, from its ticket to its last chunk."""

    ticket: int
    request: SequenceRequest
    send: trio.MemorySendChannel[Item]
    on_end: Callable[[], None] | None
    seq: int | None = None  # the engine sequence, once placed
    stepped: bool = False  # its admission went to a step: stopping it early needs a release


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
        self.expired = False  # unload as soon as idle; never handed out again
        self.expires_at: float = math.inf  # wall-clock seconds, for /api/ps
        self._claims = 0
        self._loader = loader
        self._on_ready = on_ready
        self._on_exit = on_exit
        self._observer = observer
        self._scope = trio.CancelScope()
        self._tickets = itertools.count(1)
        self._jobs: dict[int, _Job] = {}  # live tickets
        self._waiting: deque[_Job] = deque()  # submitted, waiting for a free sequence
        self._free: set[int] = set(range(spec.n_seq))  # sequence ids the engine has let go
        self._last_used = [0] * spec.n_seq  # a use counter per sequence, for LRU
        self._uses = itertools.count(1)
        self._admits: list[_Job] = []
        self._releases: list[Release] = []
        self._wake = trio.Event()
        self.steps = 0
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
                if self._observer is not None:
                    self._observer.model_loaded(self, time.monotonic() - started)
                self._on_ready(self)  # hands out claims to the requests that waited for the load
                self.set_idle_if_unused()
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.backend.serve)  # the model's compute thread
                    nursery.start_soon(self._batch_loop)
        finally:
            self.state = "gone"
            self._fail_jobs(ApplianceError("model unloaded while generating"))
            if self.backend is not None:
                with trio.CancelScope(shield=True):
                    await self.backend.aclose()
            self._on_exit(self)
            self.exited.set()

    def unload(self) -> None:
        """Unload now (cancels the lifetime scope); in-flight requests get an error line."""
        self.expired = True
        self._scope.cancel()

    def expire(self, keep_alive: float | None = None) -> None:
        """Unload as soon as no request holds the runner (Ollama's expireRunner); a keep_alive
        given (0 for an unload request) is the runner's from now on, as a claim's is."""
        if keep_alive is not None:
            self.keep_alive = keep_alive
        self.expired = True
        if self._claims == 0 and self.state != "loading":
            self.unload()

    # ---- claims (counted by the scheduler) and keep_alive ---------------------------------------

    @property
    def ref_count(self) -> int:
        """Requests holding a claim on this runner (a slot each)."""
        return self._claims

    @property
    def free_sequences(self) -> list[int]:
        """Engine sequence ids free now (released by the engine, not merely given back)."""
        return sorted(self._free)

    @property
    def capacity(self) -> int:
        """How many more claims this runner can hand out now."""
        if self.state != "ready" or self.expired:
            return 0
        return self.spec.n_seq - self._claims

    def claim(self, keep_alive: float | None) -> None:
        """A request takes one of the `n_seq` slots; a keep_alive it names sticks (§4.5)."""
        if self.capacity <= 0:
            raise RuntimeError("runner has no free slot")
        self._claims += 1
        if keep_alive is not None:
            self.keep_alive = keep_alive
        self.set_busy()

    def unclaim(self) -> None:
        """A request gives its slot back (its sequence ended, or it never ran one)."""
        self._claims -= 1
        if self.state == "ready":
            self.set_idle_if_unused()

    def set_busy(self) -> None:
        self._scope.deadline = math.inf

    def set_idle_if_unused(self) -> None:
        """Start the keep_alive timer when no request holds a slot."""
        if self._claims:
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

    def submit(
        self, request: SequenceRequest, on_end: Callable[[], None] | None = None
    ) -> tuple[int, trio.MemoryReceiveChannel[Item]]:
        """Queue `request`; returns its ticket and the channel its chunks arrive on.

        `on_end` is called (on the trio thread) the moment the sequence leaves the engine: its
        done chunk or error is in the channel, whether or not anyone reads it yet.
        """
        if self.state != "ready":
            raise ApplianceError("model is not loaded")
        send, receive = trio.open_memory_channel[Item](math.inf)
        job = _Job(next(self._tickets), request, send, on_end)
        self._jobs[job.ticket] = job
        self._waiting.append(job)
        self._place()
        self._wake.set()
        return job.ticket, receive

    def cancel(self, ticket: int) -> None:
        """Drop the sequence of `ticket` (its client went away); a no-op once it has ended.

        It leaves the batch at the next step; chunks of a step already in flight are dropped.
        """
        job = self._jobs.get(ticket)
        if job is None:
            return
        self._end(job, None)

    def _end(self, job: _Job, last: Item | None, *, engine_done: bool = False) -> None:
        """Retire a live job: send its last item, free or release its sequence, call on_end.

        `engine_done`: the engine holds nothing of it any more (it finished, or refused it).
        """
        del self._jobs[job.ticket]
        if last is not None:
            try:
                job.send.send_nowait(last)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        job.send.close()
        if job.seq is None:
            self._waiting.remove(job)
        elif not job.stepped:
            self._admits.remove(job)
            self._free.add(job.seq)  # it never reached the engine
        elif engine_done:
            self._free.add(job.seq)
        else:
            self._releases.append(Release(job.seq, job.ticket))  # free once a step has run it
        self._wake.set()
        if job.on_end is not None:
            job.on_end()

    def _place(self) -> None:
        """Give waiting jobs, in arrival order, the free sequence that suits each best."""
        while self._waiting and self._free:
            job = self._waiting.popleft()
            job.seq = self._pick(job.request.tokens)
            self._free.discard(job.seq)
            self._last_used[job.seq] = next(self._uses)
            self._admits.append(job)

    def _pick(self, tokens: list[int]) -> int:
        """The free sequence holding the longest useful cached prefix of `tokens`, else the least
        recently used one (its cache is the least likely to be continued)."""
        free = sorted(self._free)
        lru = min(free, key=lambda seq: self._last_used[seq])
        backend = self.backend
        if backend is None or len(free) == 1:
            return lru
        best, best_len = lru, 0
        for seq in free:
            n = backend.cached_prefix(seq, tokens)
            if n > best_len:
                best, best_len = seq, n
        if best_len < len(tokens) and best_len < max(MIN_REUSE, MIN_USEFUL_SHARE * len(tokens)):
            return lru
        return best

    def _fail_jobs(self, error: ApplianceError) -> None:
        for job in list(self._jobs.values()):
            self._end(job, error)

    def abort_all(self, error: ApplianceError) -> None:
        """End every in-flight sequence with `error` (shutdown); their sequences are released."""
        self._fail_jobs(error)

    async def _batch_loop(self) -> None:
        assert self.backend is not None
        backend = self.backend
        while True:
            self._place()
            if not (self._admits or self._releases or self._jobs):
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            jobs, self._admits = self._admits, []
            releases, self._releases = self._releases, []
            admits = []
            for job in jobs:
                assert job.seq is not None
                job.stepped = True
                admits.append(Admit(job.seq, job.ticket, job.request))
            if not admits and not releases and not any(j.stepped for j in self._jobs.values()):
                # Only jobs waiting for a sequence that a later release frees: nothing to step.
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            try:
                chunks = await backend.step(admits, releases)
            except Exception as exc:
                log.exception("decode step failed")
                self._free.update(r.seq for r in releases)
                self._fail_jobs(ApplianceError(f"decode failed: {exc}"))
                continue
            self._free.update(r.seq for r in releases)  # the engine has let them go
            self.steps += 1
            if self._observer is not None:
                self._observer.decode_step(self)
            for chunk in chunks:
                self._deliver(chunk)

    def _deliver(self, chunk: Chunk | Rejected) -> None:
        if self._observer is not None and isinstance(chunk, Chunk) and chunk.done:
            self._observer.sequence_done(self, chunk)  # the work was done, read or not
        job = self._jobs.get(chunk.ticket)
        if job is None or job.seq != chunk.seq:
            return  # a late chunk of a sequence whose client left: its release is queued
        if isinstance(chunk, Rejected):
            self._end(job, chunk.error, engine_done=True)
            return
        if chunk.done:
            self._end(job, chunk, engine_done=True)
            return
        try:
            job.send.send_nowait(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._end(job, None)  # the client went away between steps: free the sequence now

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
