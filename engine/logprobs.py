"""Log-probabilities of a sampled token and its most likely alternatives, from one logits row.

Computed only when a request asks (`logprobs`), from the raw logits of the position the token was
sampled at (a log-softmax over the whole vocabulary, as llama-server reports them to Ollama):
penalties, temperature and truncation samplers do not change what is reported.
"""

from __future__ import annotations

import math
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
    """log(softmax(logits)) for a whole row (float64); -inf logits stay -inf."""
    row = np.asarray(logits, dtype=np.float64)
    return row - logsumexp(row)


def logsumexp(logits: np.ndarray) -> float:
    """log(sum(exp(logits))), stable for large logits; one pass of exp over the row."""
    row = np.asarray(logits)
    peak = float(row.max())
    if not math.isfinite(peak):
        finite = row[np.isfinite(row)]
        peak = float(finite.max()) if finite.size else 0.0
    return peak + math.log(float(np.exp(row - peak).sum(dtype=np.float64)))


def token_logprob(
    logits: np.ndarray, token: int, top: int, piece: Callable[[int], bytes]
) -> Logprob:
    """The entry for `token` sampled from `logits`; `piece(id)` gives a token's bytes.

    Only the normaliser is computed over the whole row (no log-probability array), so a 262k
    vocabulary costs one exp pass, plus a partial sort when alternatives are asked for.
    """
    row = np.asarray(logits)
    norm = logsumexp(row)
    alternatives: tuple[TokenLogprob, ...] = ()
    top = max(0, min(top, MAX_TOP_LOGPROBS, row.size))
    if top:
        ids = np.argpartition(row, row.size - top)[row.size - top :]
        ids = ids[np.argsort(-row[ids], kind="stable")]
        alternatives = tuple(_entry(int(i), float(row[i]) - norm, piece) for i in ids)
    chosen = _entry(token, float(row[token]) - norm, piece)
    return Logprob(chosen.token, chosen.logprob, chosen.bytes, alternatives)


def _entry(token: int, logprob: float, piece: Callable[[int], bytes]) -> TokenLogprob:
    raw = piece(token)
    return TokenLogprob(raw.decode("utf-8", "replace"), logprob, raw)
