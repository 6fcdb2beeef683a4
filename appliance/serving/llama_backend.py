"""The real backend: the synchronous engine behind one compute thread per model.

Every call that computes on the model's llama contexts (decode steps, embedding pieces) takes its
turn through this backend's `CapacityLimiter(1)` and runs on the model's one `ComputeThread`, so
one OpenMP team does all of the model's work and the event loop never blocks on llama.cpp.
Tokenizing reads only the vocabulary, which llama.cpp allows from any thread.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from functools import partial
from typing import Any

import trio

from appliance.errors import ApplianceError, BadRequest, ModelLoadError, NotFound
from appliance.serving.backend import Admit, LoadSpec, Rejected, Release
from appliance.serving.compute_thread import ComputeThread
from engine.batch import BatchEngine, Chunk, PromptTooLong
from engine.embed import Embedder, InputTooLong
from engine.model import Model, ModelLoadFailed

log = logging.getLogger(__name__)


class LlamaBackend:
    def __init__(
        self, spec: LoadSpec, model: Model, batch: BatchEngine | None, n_threads: int
    ) -> None:
        self.spec = spec
        self.model = model
        self.batch = batch
        self.n_seq = spec.n_seq
        self.n_ctx = spec.num_ctx
        self.size = spec.memory_bytes
        self.chat_template = model.chat_template
        self.bos_text = model.bos_text
        self.eos_text = model.eos_text
        self._n_threads = n_threads
        self._embedder: Embedder | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._compute = ComputeThread()
        self._embed_lock = trio.Lock()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the model's compute thread; a task in the runner's nursery, ended by its cancel."""
        await self._compute.serve(task_status=task_status)

    async def _run(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        """`fn` on the compute thread, taking turns with the model's other pieces. A free turn is
        taken without a schedule point (`async with` on the limiter yields even then), so the
        next decode step reaches the thread before the routes format the last step's tokens:
        their work overlaps the compute instead of delaying it (~5 % of one stream's speed)."""
        try:
            self._limiter.acquire_nowait()
        except trio.WouldBlock:
            await self._limiter.acquire()
        try:
            return await self._compute.run(partial(fn, *args, **kwargs))
        finally:
            self._limiter.release()

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return await trio.to_thread.run_sync(
            partial(self.model.tokenize, text, add_special=add_special, parse_special=True)
        )

    def tokenize_blocking(self, text: str, *, add_special: bool = True) -> list[int]:
        return self.model.tokenize(text, add_special=add_special, parse_special=True)

    async def detokenize(self, tokens: list[int]) -> str:
        n_vocab = self.model.n_vocab
        if any(not 0 <= t < n_vocab for t in tokens):
            raise BadRequest(f"invalid context: token ids must be between 0 and {n_vocab - 1}")
        return await trio.to_thread.run_sync(self.model.detokenize, tokens)

    def cached_prefix(self, seq: int, tokens: list[int]) -> int:
        # Reads a list the worker thread does not touch while the runner holds `seq` free.
        if self.batch is None:
            return 0
        return self.batch.cached_prefix(seq, tokens)

    async def step(self, admits: list[Admit], releases: list[Release]) -> list[Chunk | Rejected]:
        if self.batch is None:
            raise BadRequest("this model does not support generate")
        return await self._run(_step, self.batch, admits, releases)

    async def embed(
        self, texts: list[str], *, truncate: bool, normalize: bool, dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        """Vectors for `texts`, one decode piece per worker-thread call through the limiter the
        decode steps use: a stream on this model goes on while a long embedding runs, and a
        cancelled request (its client left) stops between two pieces."""
        async with self._embed_lock:
            if self._embedder is None:
                self._embedder = await self._run(
                    Embedder, self.model, n_ctx=self.n_ctx, n_threads=self._n_threads
                )
        embedder = self._embedder
        fitted: list[list[int]] = []
        for text in texts:  # tokenizing reads only the vocabulary: no limiter
            try:
                fitted.append(await trio.to_thread.run_sync(embedder.fit, text, truncate))
            except InputTooLong as exc:
                raise BadRequest(str(exc)) from None
        vectors: list[list[float]] = []
        for tokens in fitted:
            async with self._embed_lock:  # one input at a time owns the embedding context
                job = embedder.begin(tokens)
                done = False
                while not done:
                    done = await self._run(embedder.advance, job)
            try:
                vectors.append(job.result(normalize=normalize, dimensions=dimensions))
            except ValueError as exc:  # NaN or Inf in the vector: the input's fault, a 400
                raise BadRequest(str(exc)) from None
        return vectors, sum(len(t) for t in fitted)

    async def aclose(self) -> None:
        # After the compute thread has ended; the limiter waits out an embedding's last piece.
        await trio.to_thread.run_sync(self._close, limiter=self._limiter)

    def _close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
        if self.batch is not None:
            self.batch.close()
        self.model.close()


def _step(
    batch: BatchEngine, admits: list[Admit], releases: list[Release]
) -> list[Chunk | Rejected]:
    out: list[Chunk | Rejected] = []
    for release in releases:
        batch.release(release.seq, release.ticket)
    for admit in admits:
        try:
            batch.admit(admit.seq, admit.request, admit.ticket)
        except PromptTooLong as exc:
            out.append(Rejected(admit.seq, BadRequest(str(exc)), admit.ticket))
        except ValueError as exc:
            out.append(Rejected(admit.seq, ApplianceError(str(exc)), admit.ticket))
    if batch.has_work():
        out.extend(batch.step())
    return out


def _load_sync(
    spec: LoadSpec, n_threads: int, prompt_cache: bool = True, cache_ram: int = 0
) -> LlamaBackend:
    assert spec.model_path is not None
    model = Model.load(spec.model_path, use_mmap=spec.use_mmap, n_gpu_layers=max(spec.num_gpu, 0))
    try:
        batch = None
        if not spec.embedding_only:
            batch = BatchEngine(
                model,
                n_seq=spec.n_seq,
                n_ctx=spec.num_ctx,
                n_batch=spec.num_batch,
                n_threads=n_threads,
                flash_attn=spec.flash_attn,
                type_k=spec.kv_type,
                type_v=spec.kv_type,
                reuse_prefix=prompt_cache,
                cache_ram=cache_ram,
            )
        return LlamaBackend(spec, model, batch, n_threads)
    except BaseException:
        model.close()
        raise


class _Handover:
    """A load's result, handed to the waiter, or freed by the worker when the waiter gave up.

    A llama.cpp load cannot be interrupted; after OLLAMA_LOAD_TIMEOUT the waiter stops waiting
    (the thread is abandoned) and the worker frees whatever it loads once it is done.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self.kept: LlamaBackend | None = None

    def keep(self, backend: LlamaBackend) -> bool:
        with self._lock:
            if not self._abandoned:
                self.kept = backend
                return True
        return False

    def abandon(self) -> LlamaBackend | None:
        """Give up; returns a result that arrived too late for the waiter (to be freed)."""
        with self._lock:
            self._abandoned = True
            late, self.kept = self.kept, None
        return late


def make_loader(  # type: ignore[no-untyped-def]
    default_threads: int | None = None,
    *,
    load_timeout: float = math.inf,
    load_sync=None,
    prompt_cache: bool = True,
    cache_ram: int = 0,
):
    """A `Loader` that loads GGUF models with llama.cpp in a worker thread.

    A load still running after `load_timeout` seconds (OLLAMA_LOAD_TIMEOUT) fails with Ollama's
    message; `load_sync(spec, n_threads)` replaces the blocking load in tests. `prompt_cache`
    keeps each sequence's KV for the next prompt that shares its prefix; `cache_ram` bytes per
    model keep the states of reused sequences in host RAM.
    """
    load_blocking = load_sync or partial(_load_sync, prompt_cache=prompt_cache, cache_ram=cache_ram)

    async def load(spec: LoadSpec) -> LlamaBackend:
        n_threads = spec.num_thread or default_threads or os.cpu_count() or 1
        handover = _Handover()

        def work() -> LlamaBackend | None:
            backend = load_blocking(spec, n_threads)
            if handover.keep(backend):
                return backend
            backend._close()  # the waiter timed out: free what it no longer wants
            return None

        try:
            # Shielded as before (a load is not cancelled half-way), but with its own deadline.
            with trio.CancelScope(shield=True) as scope:
                if math.isfinite(load_timeout):
                    scope.deadline = trio.current_time() + load_timeout
                backend = await trio.to_thread.run_sync(work, abandon_on_cancel=True)
        except ModelLoadFailed as exc:
            raise ModelLoadError(f"llama runner process has terminated: {exc}") from None
        except FileNotFoundError:
            raise NotFound(f'model "{spec.model_path}" not found, try pulling it first') from None
        if scope.cancelled_caught or backend is None:
            late = handover.abandon()
            if late is not None:
                await trio.to_thread.run_sync(late._close)
            log.warning("loading %s timed out after %.0fs", spec.model_path, load_timeout)
            raise ModelLoadError("timed out waiting for llama runner to start - progress 0.00 - ")
        return backend

    return load
