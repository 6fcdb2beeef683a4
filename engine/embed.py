"""Embeddings: one pooled, L2-normalised vector per input text, on a context of its own.

Two ways, chosen by what the model declares:

- An embedding model (`<arch>.pooling_type` set) pools in llama.cpp with its own pooling; the whole
  input goes in one ubatch, which non-causal encoders require.
- A completion model (Ollama lets them embed too) has no pooling and an LM head. Pooling in
  llama.cpp would make every token an output of the LM head: the context would reserve
  `n_ctx x n_vocab` floats (4 GiB for gemma3 at 4096 tokens). Instead the input is decoded causally
  in chunks of CHUNK tokens with pooling NONE, and the per-token hidden states (after the final
  norm, what llama.cpp's MEAN pooling averages) are averaged here.

The work comes in pieces, one decode each (`Embedding.advance`): the caller runs each piece as its
own worker-thread call, so decode steps of other requests interleave with a long embedding and a
client that leaves stops it between pieces. One input's pieces share the context's memory: finish
(or abandon) one input before starting the next.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

from engine.batch import _default_threads
from engine.context import free_context, open_context, put_tokens
from engine.model import Model

CHUNK = 16  # tokens per decode for completion models: bounds the logits scratch to 16 rows, and
# one piece of work to about the time of a few decode steps (the LM head runs on every row)


class InputTooLong(ValueError):
    """An input exceeds the context and truncation was not allowed."""

    def __init__(self, message: str = "the input length exceeds the context length") -> None:
        super().__init__(message)


class Embedder:
    """Embeds texts with `model`; inputs are limited to min(n_ctx, n_ctx_train) tokens."""

    def __init__(self, model: Model, *, n_ctx: int, n_threads: int | None = None) -> None:
        self.model = model
        self.n_ctx = max(8, min(n_ctx, model.n_ctx_train) if model.n_ctx_train > 0 else n_ctx)
        declared = model.pooling_type
        self.pools_natively = declared is not None and declared != llama_cpp.LLAMA_POOLING_TYPE_NONE
        self._n_batch = self.n_ctx if self.pools_natively else min(CHUNK, self.n_ctx)
        threads = n_threads or _default_threads()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.n_ctx
        params.n_batch = self._n_batch
        params.n_ubatch = self._n_batch
        params.n_seq_max = 1
        params.n_threads = threads
        params.n_threads_batch = threads
        params.embeddings = True
        params.no_perf = True
        params.pooling_type = (
            llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED  # the model's own
            if self.pools_natively
            else llama_cpp.LLAMA_POOLING_TYPE_NONE
        )
        ctx, self._batch = open_context(
            model, params, self._n_batch, "llama.cpp could not create the embedding context"
        )
        self._ctx: llama_cpp.llama_context_p | None = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._n_embd = llama_cpp.llama_model_n_embd_out(model.handle) or model.n_embd

    def fit(self, text: str, truncate: bool = True) -> list[int]:
        """The tokens `text` is embedded from (reads only the vocabulary: any thread may call it).

        Raises InputTooLong when the text exceeds the context and `truncate` is off.
        """
        model = self.model
        tokens = model.tokenize(text, add_special=False, parse_special=True)
        specials = int(model.add_bos) + int(model.add_eos)
        room = self.n_ctx - specials
        if len(tokens) > room:
            if not truncate:
                raise InputTooLong()
            tokens = tokens[:room]
        if model.add_bos:
            tokens = [model.bos, *tokens]
        if model.add_eos:
            tokens = [*tokens, model.eos]
        return tokens

    def _decode(self, tokens: list[int], start: int) -> None:
        batch = self._batch
        batch.n_tokens = put_tokens(batch, 0, tokens, start, 0, True)
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")

    def begin(self, tokens: list[int]) -> Embedding:
        """An input's embedding, not computed yet: call `advance` until it returns True."""
        piece = len(tokens) if self.pools_natively else self._n_batch
        return Embedding(tokens, piece=max(1, piece))

    def advance(self, job: Embedding) -> bool:
        """Decode the next piece of `job` (one llama_decode); True once its vector is ready."""
        if self._ctx is None:
            raise RuntimeError("embedder is closed")
        if job.vector is not None:
            return True
        if not job.tokens:  # nothing to pool: no vector, as the mean of no rows (NaN) says
            job.vector = np.full(self._n_embd, np.nan)
            return True
        start = job.done
        if start == 0:
            llama_cpp.llama_memory_clear(self._mem, True)
            job.total = np.zeros(self._n_embd, dtype=np.float64)
        chunk = job.tokens[start : start + job.piece]
        self._decode(chunk, start)
        if self.pools_natively:
            ptr = llama_cpp.llama_get_embeddings_seq(self._ctx, 0)
            if not ptr:
                raise RuntimeError("llama.cpp returned no pooled embedding")
            job.vector = np.ctypeslib.as_array(ptr, shape=(self._n_embd,)).astype(np.float64)
            job.done = len(job.tokens)
            return True
        ptr = llama_cpp.llama_get_embeddings(self._ctx)
        if not ptr:
            raise RuntimeError("llama.cpp returned no embeddings")
        rows = np.ctypeslib.as_array(ptr, shape=(len(chunk), self._n_embd))
        job.total += rows.sum(axis=0, dtype=np.float64)
        job.done = start + len(chunk)
        if job.done >= len(job.tokens):
            job.vector = job.total / len(job.tokens)
            return True
        return False

    def embed(
        self,
        texts: list[str],
        *,
        truncate: bool = True,
        normalize: bool = True,
        dimensions: int | None = None,
    ) -> tuple[list[list[float]], int]:
        """Vectors for `texts` and the total number of input tokens, all in this thread.

        Raises InputTooLong (truncate=False and an input is too long) and ValueError (the model
        produced NaN or Inf).
        """
        fitted = [self.fit(text, truncate) for text in texts]
        vectors: list[list[float]] = []
        for tokens in fitted:
            job = self.begin(tokens)
            while not self.advance(job):
                pass
            vectors.append(job.result(normalize=normalize, dimensions=dimensions))
        return vectors, sum(len(t) for t in fitted)

    def close(self) -> None:
        """Free the batch and context (not the model). Idempotent."""
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            free_context(ctx, self._batch)

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(eq=False)
class Embedding:
    """One input on its way to a vector: `piece` tokens per decode, `done` decoded so far."""

    tokens: list[int]
    piece: int
    done: int = 0
    total: np.ndarray | None = field(default=None, repr=False)
    vector: np.ndarray | None = field(default=None, repr=False)

    def result(self, *, normalize: bool = True, dimensions: int | None = None) -> list[float]:
        """The finished vector, cut to `dimensions` (then always normalised) or normalised.

        Raises ValueError when the model produced NaN or Inf.
        """
        vec = self.vector
        if vec is None:
            raise RuntimeError("the embedding is not finished")
        if not np.all(np.isfinite(vec)):
            raise ValueError("embedding contains NaN or Inf values")
        if dimensions is not None and 0 < dimensions < len(vec):
            vec = _l2(vec[:dimensions])
        elif normalize:
            vec = _l2(vec)
        return vec.tolist()


def _l2(vec: np.ndarray) -> np.ndarray:
    norm = math.sqrt(float(np.dot(vec, vec)))
    return vec / norm if norm > 0 else vec
