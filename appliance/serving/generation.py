"""From a request's tokens and options to a running sequence: sampling, grammar, relaying.

Shared by the native and the OpenAI routes, so both travel one path.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from appliance.errors import ApplianceError, BadRequest
from appliance.options import bounded_for_context
from appliance.serving.format_bounds import check_format_bounds
from engine.batch import Chunk, SequenceRequest
from engine.sampling import SamplingParams, format_grammar

if TYPE_CHECKING:
    from appliance.options import Options
    from appliance.serving.scheduler import Lease


@dataclass
class Timing:
    """Durations Ollama reports, in nanoseconds, measured from the handler's start."""

    start_ns: int = field(default_factory=time.perf_counter_ns)
    loaded_ns: int | None = None

    def mark_loaded(self) -> None:
        self.loaded_ns = time.perf_counter_ns()

    def load_duration(self) -> int:
        return (self.loaded_ns or time.perf_counter_ns()) - self.start_ns

    def total_duration(self) -> int:
        return time.perf_counter_ns() - self.start_ns


def grammar_for(format_value: Any) -> str | None:
    """GBNF for the request's `format` ("json" or a JSON schema); 400 when it is neither."""
    if format_value in (None, "", b""):
        return None
    if format_value != "json" and not isinstance(format_value, dict):
        raise BadRequest(
            f'invalid format: {format_value!r}; expected "json" or a valid JSON schema'
        )
    check_format_bounds(format_value)  # before the converter writes every repetition out
    try:
        return format_grammar(format_value)
    except ValueError as exc:
        raise BadRequest(f"invalid JSON schema in format: {exc}") from None


def sequence_request(
    tokens: list[int], options: Options, *, grammar: str | None, num_ctx: int, truncate: bool = True
) -> SequenceRequest:
    """The engine request; `num_ctx` is the request's own context limit (truncation, the edge)."""
    options = bounded_for_context(options, num_ctx)  # num_predict, num_keep, repeat_last_n
    num_predict = options.num_predict
    sampling = SamplingParams(
        temperature=options.temperature,
        top_k=options.top_k,
        top_p=options.top_p,
        min_p=options.min_p,
        typical_p=options.typical_p,
        repeat_last_n=options.repeat_last_n,
        repeat_penalty=options.repeat_penalty,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        seed=options.seed,
        grammar=grammar,
    )
    return SequenceRequest(
        tokens=tokens,
        sampling=sampling,
        num_predict=num_predict,
        stop=list(options.stop or []),
        num_keep=options.num_keep if options.num_keep is not None else 4,
        truncate=truncate,
        num_ctx=num_ctx,
    )


async def run_sequence(lease: Lease, request: SequenceRequest) -> AsyncIterator[Chunk]:
    """Chunks of one sequence. The slot is given back as soon as the sequence ends in the engine
    (the chunks wait in the channel for this reader), or when the iterator is closed.

    The `finally` is synchronous: it runs even when the client's disconnect cancels the handler,
    and the sequence leaves the batch at the next decode step.
    """
    receive = lease.submit(request)
    try:
        async for item in receive:
            if isinstance(item, ApplianceError):
                raise item
            yield item
    finally:
        receive.close()
        lease.release()


def nonzero(**fields: int | None) -> dict[str, int]:
    """Ollama's metrics are `omitempty`: zero values disappear."""
    return {k: v for k, v in fields.items() if v}


async def primed(chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """Wait for the first chunk before answering, so an early failure (a prompt that does not fit)
    still gets its own HTTP status instead of a 200 with an error line, as with Ollama."""
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await chunks.aclose()
        raise
    return _chain(first, chunks)


async def _chain(first: Chunk | None, rest: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    try:
        if first is not None:
            yield first
            async for chunk in rest:
                yield chunk
    finally:
        await rest.aclose()
