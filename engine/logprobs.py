"""Log-probabilities of a sampled token and its most likely alternatives, from one logits row.

Computed only when a request asks (`logprobs`), from the raw logits of the position the token was
sampled at (a log-softmax over the whole vocabulary, as llama-server reports them to Ollama):
penalties, temperature and truncation samplers do not change what is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    """One token's text, raw bytes and log-probability."""

    token: str
    logprob: float
    bytes: bytes


@dataclass(frozen=True)
class Logprob(TokenLogprob):
    """A generated token with up to `top_logprobs` alternatives, most likely first."""

    top: tuple[TokenLogprob, ...] = field(default=())


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log(softmax(logits)) in float64, stable for large logits; -inf logits stay -inf."""
    row = np.asarray(logits, dtype=np.float64)
    finite = row[np.isfinite(row)]
    peak = float(finite.max()) if finite.size else 0.0
    shifted = row - peak
    return shifted - np.log(np.exp(shifted).sum())


def token_logprob(
    logits: np.ndarray, token: int, top: int, piece: Callable[[int], bytes]
) -> Logprob:
    """The entry for `token` sampled from `logits`; `piece(id)` gives a token's bytes."""
    logp = log_softmax(logits)
    alternatives: tuple[TokenLogprob, ...] = ()
    top = max(0, min(top, MAX_TOP_LOGPROBS, logp.size))
    if top:
        ids = np.argpartition(-logp, top - 1)[:top]
        ids = ids[np.argsort(-logp[ids], kind="stable")]
        alternatives = tuple(_entry(int(i), float(logp[i]), piece) for i in ids)
    chosen = _entry(token, float(logp[token]), piece)
    return Logprob(chosen.token, chosen.logprob, chosen.bytes, alternatives)


def _entry(token: int, logprob: float, piece: Callable[[int], bytes]) -> TokenLogprob:
    raw = piece(token)
    return TokenLogprob(raw.decode("utf-8", "replace"), logprob, raw)
