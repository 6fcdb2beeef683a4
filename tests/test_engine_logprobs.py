"""engine/logprobs.py and the engine's context shift, on numbers and a real tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.batch import BatchEngine, SequenceRequest
from engine.logprobs import log_softmax, token_logprob
from engine.model import Model
from engine.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0)


def test_log_softmax_is_normalised_and_stable_for_large_logits() -> None:
    logits = np.array([1000.0, 999.0, -np.inf, 0.0], dtype=np.float32)
    logp = log_softmax(logits)
    assert math.isclose(float(np.exp(logp).sum()), 1.0, rel_tol=1e-9)
    assert logp[2] == -np.inf and logp[0] == pytest.approx(-math.log1p(math.exp(-1)))


def test_token_logprob_lists_the_most_likely_alternatives_first() -> None:
    logits = np.array([0.1, 3.0, 2.0, -1.0], dtype=np.float32)
    entry = token_logprob(logits, 2, 3, lambda t: f"t{t}".encode())
    assert (entry.token, entry.bytes) == ("t2", b"t2")
    assert [t.token for t in entry.top] == ["t1", "t2", "t0"]
    assert entry.top[1].logprob == entry.logprob < 0


def test_top_logprobs_is_capped_at_twenty_and_the_vocabulary() -> None:
    logits = np.zeros(8, dtype=np.float32)
    assert len(token_logprob(logits, 0, 99, lambda t: b"x").top) == 8
    assert len(token_logprob(np.zeros(50), 0, 99, lambda t: b"x").top) == 20


def _run(model: Model, request: SequenceRequest, n_ctx: int):  # type: ignore[no-untyped-def]
    with BatchEngine(model, n_threads=1, n_seq=1, n_ctx=n_ctx) as engine:
        engine.admit(0, request)
        chunks = []
        while engine.has_work():
            chunks += engine.step()
    return chunks


def test_shift_goes_on_past_the_context_and_keeps_logprobs(tiny_gguf_factory) -> None:
    model = Model.load(tiny_gguf_factory(seed=1))  # never says EOS after "hello"
    try:
        prompt = model.tokenize("hello")
        shifted = _run(model, SequenceRequest(prompt, GREEDY, num_predict=100, shift=True,
                                              logprobs=True), 32)  # fmt: skip
        edge = _run(model, SequenceRequest(prompt, GREEDY, num_predict=100), 32)
    finally:
        model.close()
    assert (shifted[-1].done_reason, shifted[-1].eval_count) == ("length", 100)
    assert sum(len(c.logprobs or []) for c in shifted) == 100
    assert edge[-1].done_reason == "length" and edge[-1].eval_count < 32
    assert all(c.logprobs is None for c in edge)
