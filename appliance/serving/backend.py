"""What a runner needs from a loaded model, as a small async protocol.

The real implementation (`appliance.serving.llama_backend`) runs the synchronous engine in one
worker thread per model; scheduler and runner tests use a pure-trio double, so time-based rules
can be tested under `trio.testing.MockClock` (real threads and a mock clock do not mix).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from appliance.errors import ApplianceError
from appliance.options import LoadKey
from engine.batch import Chunk, SequenceRequest


@dataclass(frozen=True)
class Rejected:
    """A sequence the engine refused at admission (e.g. a prompt too long); others go on."""

    seq: int
    error: ApplianceError
    ticket: int = 0


@dataclass(frozen=True)
class Admit:
    """Start `request` on engine sequence `seq`; every chunk it yields carries `ticket`."""

    seq: int
    ticket: int
    request: SequenceRequest


@dataclass(frozen=True)
class Release:
    """Stop the sequence admitted as `ticket` on `seq` (a no-op once it has finished)."""

    seq: int
    ticket: int


@dataclass(frozen=True)
class LoadSpec:
    """Everything that decides how a model is loaded; two equal specs can share a runner."""

    key: str  # the model blob path, as Ollama keys its runners
    model_path: Path | None
    num_ctx: int  # per slot
    n_seq: int
    num_batch: int = 512
    num_thread: int = 0
    use_mmap: bool | None = None
    num_gpu: int = -1
    adapters: tuple[str, ...] = ()
    embedding_only: bool = False
    memory_bytes: int = 0  # estimated need, checked against the budget before loading
    flash_attn: bool | None = field(default=None, compare=False)  # None: llama.cpp decides
    kv_type: str = field(default="f16", compare=False)  # the K and V cache type

    options_key: LoadKey | None = field(default=None, compare=False, hash=False)

    def reload_key(self) -> LoadKey:
        """The load-time options this spec stands for: the planner's, else (a spec built by
        hand, as test doubles do) its own fields with every automatic option unset."""
        if self.options_key is not None:
            return self.options_key
        return LoadKey(
            num_ctx=self.num_ctx,
            num_batch=self.num_batch,
            num_gpu=self.num_gpu,
            main_gpu=0,
            use_mmap=self.use_mmap,
            num_thread=self.num_thread,
        )

    def can_serve(self, requested: LoadSpec) -> bool:
        """Whether a runner loaded with this spec serves `requested` without a reload (Ollama's
        needsReload, with `options.LoadKey.differences` as the one rule for the options: a runner
        whose context is at least the request's serves it, so no reload ping-pong)."""
        return not self.reload_reasons(requested)

    def reload_reasons(self, requested: LoadSpec) -> list[str]:
        """Why a runner loaded with this spec cannot serve `requested`: `option old -> new`."""
        reasons = []
        if self.adapters != requested.adapters:
            reasons.append(f"adapters {list(self.adapters)} -> {list(requested.adapters)}")
        if self.embedding_only != requested.embedding_only:
            reasons.append(f"embedding_only {self.embedding_only} -> {requested.embedding_only}")
        reasons.extend(requested.reload_key().differences(self.reload_key()))
        return reasons


class Backend(Protocol):
    """A loaded model with `n_seq` sequences; every method may block a worker thread, not trio."""

    n_seq: int
    n_ctx: int  # per sequence
    size: int  # bytes in memory
    chat_template: str | None
    bos_text: str
    eos_text: str

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]: ...

    def tokenize_blocking(self, text: str, *, add_special: bool = True) -> list[int]:
        """Tokenize on the calling thread; safe beside a running decode (vocabulary only)."""
        ...

    async def detokenize(self, tokens: list[int]) -> str: ...

    def cached_prefix(self, seq: int, tokens: list[int]) -> int:
        """How many leading `tokens` sequence `seq` holds in its KV cache. Called on the trio
        thread, only for a sequence the runner holds free (no step reads or writes its cache)."""
        ...

    async def step(self, admits: list[Admit], releases: list[Release]) -> list[Chunk | Rejected]:
        """One decode step: releases first, then admissions, then one batch for all."""
        ...

    async def embed(
        self, texts: list[str], *, truncate: bool, normalize: bool, dimensions: int | None
    ) -> tuple[list[list[float]], int]: ...

    async def aclose(self) -> None: ...

    async def serve(self, *, task_status: Any = ...) -> None:
        """Run what computes for the model (its compute thread) until cancelled; the runner
        starts it in its nursery once loaded, and closes the backend after it has ended."""
        ...


Loader = Callable[[LoadSpec], Awaitable[Backend]]
