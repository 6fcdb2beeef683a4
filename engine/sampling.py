"""Per-sequence sampling with llama.cpp's native sampler chain, built from Ollama's options.

Every token is sampled in C (`llama_sampler_sample`), so the per-token Python cost is one call.
Samplers whose settings make them a no-op (top_p 1, min_p 0, penalty 1...) are left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf


@dataclass(frozen=True)
class SamplingParams:
    """Ollama's sampling options with Ollama's defaults."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 64
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    grammar: str | None = None


class SamplerChain:
    """An owned `llama_sampler` chain; `sample(ctx, idx)` samples and accepts one token."""

    def __init__(self, params: SamplingParams, vocab: llama_cpp.llama_vocab_p, n_ctx: int) -> None:
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self._chain: llama_cpp.llama_sampler_p | None = llama_cpp.llama_sampler_chain_init(
            chain_params
        )
        try:
            self._build(params, vocab, n_ctx)
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: llama_cpp.llama_sampler_p | None) -> None:
        if not sampler:
            raise ValueError("llama.cpp could not create a sampler")
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)  # the chain owns it now

    def _build(self, p: SamplingParams, vocab: llama_cpp.llama_vocab_p, n_ctx: int) -> None:
        last_n = n_ctx if p.repeat_last_n < 0 else p.repeat_last_n
        if last_n != 0 and (
            p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
        ):
            self._add(
                llama_cpp.llama_sampler_init_penalties(
                    llama_cpp.llama_vocab_n_tokens(vocab), last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
                )
            )
        if p.grammar:
            grammar = llama_cpp.llama_sampler_init_grammar(vocab, p.grammar.encode(), b"root")
            if not grammar:
                raise ValueError("invalid grammar for format")
            self._add(grammar)
        if p.temperature <= 0:
            self._add(llama_cpp.llama_sampler_init_greedy())
            return
        if p.top_k > 0:
            self._add(llama_cpp.llama_sampler_init_top_k(p.top_k))
        if 0.0 < p.typical_p < 1.0:
            self._add(llama_cpp.llama_sampler_init_typical(p.typical_p, 1))
        if 0.0 < p.top_p < 1.0:
            self._add(llama_cpp.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            self._add(llama_cpp.llama_sampler_init_min_p(p.min_p, 1))
        self._add(llama_cpp.llama_sampler_init_temp(p.temperature))
        seed = llama_cpp.LLAMA_DEFAULT_SEED if p.seed < 0 else p.seed & 0xFFFFFFFF
        self._add(llama_cpp.llama_sampler_init_dist(seed))

    def sample(self, ctx: llama_cpp.llama_context_p, idx: int) -> int:
        """Sample from the `idx`-th output row of the last decode; the chain accepts the token."""
        return llama_cpp.llama_sampler_sample(self._chain, ctx, idx)

    def close(self) -> None:
        chain, self._chain = self._chain, None
        if chain:
            llama_cpp.llama_sampler_free(chain)


def format_grammar(fmt: Any) -> str | None:
    """GBNF for Ollama's `format`: "json", a JSON schema object, or nothing ("" / None).

    Raises ValueError with a message a client can act on when the format cannot be used.
    """
    if fmt is None or fmt == "":
        return None
    if isinstance(fmt, str):
        if fmt == "json":
            return JSON_GBNF
        raise ValueError(f'invalid format: "{fmt}"; expected "json" or a JSON schema object')
    if isinstance(fmt, dict):
        props = fmt.get("properties")
        order = list(props) if isinstance(props, dict) else []
        try:
            return json_schema_to_gbnf(json.dumps(fmt), order)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ValueError(f"invalid JSON schema in format: {exc}") from exc
    raise ValueError("invalid format: expected \"json\" or a JSON schema object")
