"""Per-sequence sampling with llama.cpp's native sampler chain, built from Ollama's options.

Every token is sampled in C (`llama_sampler_sample`), so the per-token Python cost is one call.
Samplers whose settings make them a no-op (top_p 1, min_p 0, penalty 1...) are left out.

A grammar (for `format`) is not part of the chain: checking every one of a 262k-token vocabulary
against a grammar costs tens of milliseconds. As llama.cpp's own common sampler does, the chain
picks a token first and the grammar only vets that one; the whole vocabulary goes through the
grammar only when the pick is rejected.
"""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

# llama_token_data {id, logit, p}, laid out as the C struct.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


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
        self._grammar: llama_cpp.llama_sampler_p | None = None
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        # Plain greedy is an argmax: numpy does it in a tenth of the time the native greedy
        # sampler needs to build its 262k-entry candidate array.
        self._argmax = (
            params.temperature <= 0 and not params.grammar and not _penalised(params, n_ctx)
        )
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
        if _penalised(p, n_ctx):
            self._add(
                llama_cpp.llama_sampler_init_penalties(
                    llama_cpp.llama_vocab_n_tokens(vocab),
                    last_n,
                    p.repeat_penalty,
                    p.frequency_penalty,
                    p.presence_penalty,
                )
            )
        if p.grammar:
            grammar = llama_cpp.llama_sampler_init_grammar(vocab, p.grammar.encode(), b"root")
            if not grammar:
                raise ValueError("invalid grammar for format")
            self._grammar = grammar
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
        """Sample for batch position `idx` of the last decode; the samplers accept the token."""
        if self._grammar is None and not self._argmax:
            return llama_cpp.llama_sampler_sample(self._chain, ctx, idx)
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(ctx, idx), shape=(self._n_vocab,)
        )
        return self.sample_logits(logits)

    def sample_logits(self, logits: np.ndarray) -> int:
        """Sample from a logits row (the context's, or one kept for a prompt served whole from the
        cache); the samplers accept the token."""
        if self._argmax:
            return int(logits.argmax())
        token = self._pick(logits, with_grammar=False)
        if self._grammar is not None:
            if not self._grammar_allows(token, float(logits[token])):
                token = self._pick(logits, with_grammar=True)
            llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def _pick(self, logits: np.ndarray, *, with_grammar: bool) -> int:
        cur = np.empty(self._n_vocab, dtype=TOKEN_DATA)
        cur["id"] = np.arange(self._n_vocab, dtype=np.int32)
        cur["logit"] = logits
        cur["p"] = 0.0
        arr = llama_cpp.llama_token_data_array(
            data=cur.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=self._n_vocab,
            selected=-1,
            sorted=False,
        )
        if with_grammar:
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(arr))
        if arr.selected < 0:
            raise RuntimeError("sampler chain selected no token")
        return int(arr.data[arr.selected].id)

    def _grammar_allows(self, token: int, logit: float) -> bool:
        one = np.array([(token, logit, 0.0)], dtype=TOKEN_DATA)
        arr = llama_cpp.llama_token_data_array(
            data=one.ctypes.data_as(llama_cpp.llama_token_data_p), size=1, selected=-1, sorted=False
        )
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        return bool(np.isfinite(one["logit"][0]))

    def close(self) -> None:
        chain, self._chain = self._chain, None
        if chain:
            llama_cpp.llama_sampler_free(chain)
        grammar, self._grammar = self._grammar, None
        if grammar:
            llama_cpp.llama_sampler_free(grammar)


def _penalised(p: SamplingParams, n_ctx: int) -> bool:
    last_n = n_ctx if p.repeat_last_n < 0 else p.repeat_last_n
    return last_n != 0 and (
        p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
    )


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
        # The converter reports unsupported schemas with assert statements, hence AssertionError.
        try:
            return json_schema_to_gbnf(json.dumps(fmt), order)
        except (
            AssertionError,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            IndexError,
            RecursionError,
        ) as exc:
            raise ValueError(f"invalid JSON schema in format: {exc}") from exc
    raise ValueError('invalid format: expected "json" or a JSON schema object')
