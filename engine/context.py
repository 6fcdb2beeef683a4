"""A llama.cpp context and its token batch, made and freed together (generation and embedding)."""

from __future__ import annotations

import llama_cpp

from engine.model import Model


def open_context(
    model: Model, params: llama_cpp.llama_context_params, n_batch: int, failure: str
) -> tuple[llama_cpp.llama_context_p, llama_cpp.llama_batch]:
    """A context of `model` and a batch of `n_batch` tokens; MemoryError(`failure`) if none."""
    ctx = llama_cpp.llama_init_from_model(model.handle, params)
    if not ctx:
        raise MemoryError(failure)
    return ctx, llama_cpp.llama_batch_init(n_batch, 0, 1)


def free_context(ctx: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch) -> None:
    """Free what `open_context` made (not the model)."""
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)


def put_tokens(
    batch: llama_cpp.llama_batch, n: int, tokens: list[int], pos: int, seq: int, logits: bool
) -> int:
    """Write `tokens` into `batch` from row `n` (positions from `pos`, all of sequence `seq`, each
    asking for logits or not); returns the next free row. The batch's arrays are read once, not
    per token (a third of the per-token cost of a prefill's fill)."""
    token, position, n_seq_id, seq_id, want = (
        batch.token,
        batch.pos,
        batch.n_seq_id,
        batch.seq_id,
        batch.logits,
    )
    for i, tok in enumerate(tokens):
        row = n + i
        token[row] = tok
        position[row] = pos + i
        n_seq_id[row] = 1
        seq_id[row][0] = seq
        want[row] = logits
    return n + len(tokens)
