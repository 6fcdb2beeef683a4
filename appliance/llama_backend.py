"""The real backend: the synchronous engine behind one worker thread per model.

Every call that touches the model's llama context goes through this backend's
`CapacityLimiter(1)`, so exactly one thread uses a context at a time and the event loop never blocks
on llama.cpp. Tokenizing reads only the vocabulary, which llama.cpp allows from any thread.
"""

from __future__ import annotations

import logging
import os
from functools import partial

import trio

from appliance.backend import Admit, LoadSpec, Rejected, Release
from appliance.errors import ApplianceError, BadRequest, ModelLoadError
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

    async def _run(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self._limiter)

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
            raise ApplianceError("this model does not support generate", status=400)
        return await self._run(_step, self.batch, admits, releases)

    async def embed(
        self, texts: list[str], *, truncate: bool, normalize: bool, dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        return await self._run(self._embed, texts, truncate, normalize, dimensions)

    def _embed(
        self, texts: list[str], truncate: bool, normalize: bool, dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        if self._embedder is None:
            self._embedder = Embedder(self.model, n_ctx=self.n_ctx, n_threads=self._n_threads)
        try:
            return self._embedder.embed(
                texts, truncate=truncate, normalize=normalize, dimensions=dimensions
            )
        except InputTooLong as exc:
            raise BadRequest(str(exc)) from None

    async def aclose(self) -> None:
        await self._run(self._close)

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


def _load_sync(spec: LoadSpec, n_threads: int, prompt_cache: bool) -> LlamaBackend:
    assert spec.model_path is not None
    model = Model.load(
        spec.model_path, use_mmap=spec.use_mmap is not False, n_gpu_layers=max(spec.num_gpu, 0)
    )
    try:
        batch = None
        if not spec.embedding_only:
            batch = BatchEngine(
                model,
                n_seq=spec.n_seq,
                n_ctx=spec.num_ctx,
                n_batch=spec.num_batch,
                n_threads=n_threads,
                reuse_prefix=prompt_cache,
            )
        return LlamaBackend(spec, model, batch, n_threads)
    except BaseException:
        model.close()
        raise


def make_loader(  # type: ignore[no-untyped-def]
    default_threads: int | None = None, *, prompt_cache: bool = True
):
    """A `Loader` that loads GGUF models with llama.cpp in a worker thread; `prompt_cache`
    keeps each sequence's KV for the next prompt that shares its prefix."""

    async def load(spec: LoadSpec) -> LlamaBackend:
        n_threads = spec.num_thread or default_threads or os.cpu_count() or 1
        try:
            return await trio.to_thread.run_sync(_load_sync, spec, n_threads, prompt_cache)
        except ModelLoadFailed as exc:
            raise ModelLoadError(f"llama runner process has terminated: {exc}") from None
        except FileNotFoundError:
            raise ApplianceError(
                f'model "{spec.model_path}" not found, try pulling it first', status=404
            ) from None

    return load
