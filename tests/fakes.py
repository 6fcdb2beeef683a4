"""A pure-trio backend double for scheduler and runner tests under `trio.testing.MockClock`.

Real threads and a mock clock do not mix (a task waiting on a worker thread looks blocked, so the
clock jumps mid-decode); this double "decodes" by sleeping `step_seconds` of trio time, so keep_alive
and queue rules run in milliseconds and deterministically. The real engine has its own tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from appliance.errors import BadRequest, ModelLoadError
from appliance.serving.backend import Admit, LoadSpec, Rejected, Release
from appliance.store.names import parse_model_name
from engine.batch import Chunk, SequenceRequest, common_prefix


@dataclass
class _Seq:
    request: SequenceRequest
    ticket: int
    prompt_left: int
    generated: int = 0


@dataclass
class FakeBackend:
    spec: LoadSpec
    step_seconds: float = 0.01
    prompt_chunk: int = 4  # prompt tokens fed per step, like n_batch
    default_tokens: int = 5  # tokens to generate when num_predict is -1
    echo: bool = False  # every chunk's text is the prompt's first token, chr()'d: who it belongs to
    chat_template: str | None = None
    bos_text: str = ""
    eos_text: str = ""
    closed: bool = False
    steps: list[dict[str, Any]] = field(default_factory=list)
    cached: dict[int, list[int]] = field(default_factory=dict)  # a finished sequence's "KV"
    _seqs: dict[int, _Seq] = field(default_factory=dict)

    @property
    def n_seq(self) -> int:
        return self.spec.n_seq

    @property
    def n_ctx(self) -> int:
        return self.spec.num_ctx

    @property
    def size(self) -> int:
        return self.spec.memory_bytes

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def tokenize_blocking(self, text: str, *, add_special: bool = True) -> list[int]:
        return [ord(c) for c in text]

    async def detokenize(self, tokens: list[int]) -> str:
        return "".join(chr(t) for t in tokens)

    def cached_prefix(self, seq: int, tokens: list[int]) -> int:
        return common_prefix(self.cached.get(seq, []), tokens)

    async def step(self, admits: list[Admit], releases: list[Release]) -> list[Chunk | Rejected]:
        out: list[Chunk | Rejected] = []
        for release in releases:
            state = self._seqs.get(release.seq)
            if state is not None and state.ticket == release.ticket:
                del self._seqs[release.seq]
                self.cached.pop(release.seq, None)
        for admit in admits:
            seq, request = admit.seq, admit.request
            if seq in self._seqs:
                raise AssertionError(f"sequence {seq} admitted while busy")
            limit = request.num_ctx or self.spec.num_ctx
            if len(request.tokens) > limit and not request.truncate:
                out.append(
                    Rejected(seq, BadRequest("the prompt is longer than the context"), admit.ticket)
                )
                continue
            self._seqs[seq] = _Seq(request, admit.ticket, prompt_left=len(request.tokens))
        self.steps.append(
            {
                "releases": [r.seq for r in releases],
                "admits": [a.seq for a in admits],
                "active": sorted(self._seqs),
            }
        )
        await trio.sleep(self.step_seconds)
        budget = self.prompt_chunk
        for seq, state in list(self._seqs.items()):
            if state.prompt_left:
                fed = min(budget, state.prompt_left)
                budget -= fed
                state.prompt_left -= fed
                if state.prompt_left:
                    continue
            state.generated += 1
            limit = (
                state.request.num_predict if state.request.num_predict > 0 else self.default_tokens
            )
            done = state.generated >= limit
            text = chr(state.request.tokens[0]) if self.echo else "t"
            out.append(Chunk(seq, text, done=False, ticket=state.ticket))
            if done:
                del self._seqs[seq]
                self.cached[seq] = list(state.request.tokens)
                out.append(
                    Chunk(
                        seq,
                        "",
                        done=True,
                        done_reason="length",
                        prompt_eval_count=len(state.request.tokens),
                        eval_count=state.generated,
                        tokens=[116] * state.generated,
                        ticket=state.ticket,
                    )
                )
        return out

    async def embed(
        self, texts: list[str], *, truncate: bool, normalize: bool, dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        await trio.sleep(self.step_seconds)
        return [[1.0, 0.0] for _ in texts], sum(len(t) for t in texts)

    async def aclose(self) -> None:
        self.closed = True

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()  # no compute thread: steps run on the trio thread
        await trio.sleep_forever()


@dataclass
class FakeLoader:
    """Loads FakeBackends after `load_seconds`; paths listed in `failing` fail to load."""

    load_seconds: float = 1.0
    echo: bool = False  # passed to every FakeBackend
    failing: set[str] = field(default_factory=set)
    loads: list[str] = field(default_factory=list)
    backends: list[FakeBackend] = field(default_factory=list)
    concurrent: int = 0
    max_concurrent: int = 0

    async def __call__(self, spec: LoadSpec) -> FakeBackend:
        self.loads.append(spec.key)
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            await trio.sleep(self.load_seconds)
        finally:
            self.concurrent -= 1
        if spec.key in self.failing:
            raise ModelLoadError("llama runner process has terminated: error loading model")
        backend = FakeBackend(spec, echo=self.echo)
        self.backends.append(backend)
        return backend


@dataclass
class FakeModel:
    """Just what the scheduler and runner read of a store's LocalModel."""

    name_text: str
    size: int = 100
    model_path: Path | None = None
    digest: str = "0" * 64
    adapters: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.name = parse_model_name(self.name_text)
        if self.model_path is None:
            self.model_path = Path("/models") / self.name_text


class FakePlanner:
    """Plans a LoadSpec from a FakeModel and an options dict (num_ctx, num_batch)."""

    def __init__(self, n_seq: int = 1) -> None:
        self.n_seq = n_seq

    async def __call__(self, model: FakeModel, options: dict[str, Any]) -> LoadSpec:
        return LoadSpec(
            key=str(model.model_path),
            model_path=model.model_path,
            num_ctx=options.get("num_ctx", 2048),
            n_seq=self.n_seq,
            num_batch=options.get("num_batch", 512),
            memory_bytes=model.size,
        )
