"""Continuous batching: N sequences share one llama context and one `llama_decode` per step.

Each `step()` packs the next token of every generating sequence and the next prompt chunk of
every prefilling sequence into a single batch (at most `n_batch` tokens), decodes it once, then
samples each sequence whose logits are ready with its own native sampler chain. Sequences join
and leave between steps without disturbing the others. Not thread-safe: one thread drives an
engine (the runner's worker thread).
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

from engine.context import free_context, open_context, put_tokens
from engine.logprobs import Logprob, token_logprob
from engine.model import Model
from engine.prompt_store import PromptStore, SavedPrompt
from engine.sampling import SamplerChain, SamplingParams
from engine.text import StopMatcher, Utf8Stream

PROMPT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; shorten "
    "the prompt, adjust the context length in settings, or use a model with a longer context "
    "length"
)

#: A cached prefix shorter than this is not reused (unless it is the whole prompt): it would save
#: next to nothing, and a cold prefill keeps the answer equal to a cold run's. Every chat prompt
#: shares its template's first few tokens with every other.
MIN_REUSE = 16

KV_TYPES = {
    "f32": llama_cpp.GGML_TYPE_F32,
    "f16": llama_cpp.GGML_TYPE_F16,
    "bf16": 30,  # GGML_TYPE_BF16
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q5_1": llama_cpp.GGML_TYPE_Q5_1,
    "q5_0": llama_cpp.GGML_TYPE_Q5_0,
    "q4_1": llama_cpp.GGML_TYPE_Q4_1,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
    "iq4_nl": llama_cpp.GGML_TYPE_IQ4_NL,
}


class PromptTooLong(ValueError):
    """The prompt does not fit the context and truncation was not allowed."""


@dataclass
class SequenceRequest:
    """One generation: prompt tokens, sampling, and when to stop."""

    tokens: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    num_predict: int = -1
    stop: list[str] = field(default_factory=list)
    num_keep: int = 4
    truncate: bool = True
    logprobs: bool = False  # report each generated token's log-probability
    top_logprobs: int = 0  # and this many most likely alternatives (0..20)
    # At the end of the context, drop half of it and go on (Ollama's `shift`); the API turns it
    # on unless a request says `shift: false`, as Ollama defaults it.
    shift: bool = False
    num_ctx: int = 0  # this request's own context limit; 0 (or above the engine's): the engine's


@dataclass
class Chunk:
    """Output of one sequence for one step. A done chunk has empty text and the totals.

    `ticket` names the admission the chunk belongs to (see `BatchEngine.admit`), so a caller that
    reuses a sequence id can tell a late chunk of the previous sequence from the current one's.
    """

    seq: int
    text: str
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int = 0  # prompt tokens decoded (not those served from the cache)
    prompt_eval_ns: int = 0
    eval_count: int = 0
    eval_ns: int = 0
    tokens: list[int] | None = None
    logprobs: list[Logprob] | None = None  # of the token sampled in this step, when asked
    ticket: int = 0
    prompt_cached: int = 0  # prompt tokens whose KV was reused from the sequence's cache
    prompt_restored: int = 0  # of those, the ones restored from a state saved in host RAM


class _Slot:
    """State of one sequence id while it prefills or generates."""

    __slots__ = (
        "req",
        "sampler",
        "prompt",
        "fed",
        "n_past",
        "pending",
        "generated",
        "utf8",
        "stops",
        "prompt_eval_count",
        "prompt_eval_ns",
        "eval_ns",
        "out_row",
        "shifted",
        "ticket",
        "n_ctx",
        "reused",
        "preset",
        "prompt_logits",
        "restored",
    )

    def __init__(
        self,
        req: SequenceRequest,
        sampler: SamplerChain,
        prompt: list[int],
        reuse: int,
        *,
        ticket: int,
        n_ctx: int,
        preset: np.ndarray | None,
    ):
        self.req = req
        self.ticket = ticket
        self.n_ctx = n_ctx  # the request's own limit (at most the engine's)
        self.reused = reuse
        self.preset = preset  # kept logits of the last prompt position: sample without decoding
        self.prompt_logits: np.ndarray | None = preset
        self.sampler = sampler
        self.prompt = prompt
        self.fed = reuse  # prompt tokens already in the KV cache
        self.n_past = reuse  # next position of this sequence
        self.pending: int | None = None  # sampled token still to be decoded
        self.generated: list[int] = []
        self.utf8 = Utf8Stream()
        self.stops = StopMatcher(req.stop)
        self.prompt_eval_count = 0
        self.prompt_eval_ns = 0
        self.eval_ns = 0
        self.out_row = -1
        self.shifted = 0  # tokens dropped by context shifts; the KV no longer mirrors prompt
        self.restored = 0  # reused prompt tokens that came from the host-RAM store


def fit_prompt(
    tokens: list[int], n_ctx: int, num_keep: int, num_predict: int, truncate: bool
) -> list[int]:
    """The prompt as it will be decoded: unchanged when it fits, else truncated like Ollama.

    Truncation keeps the first `num_keep` tokens and the most recent ones, leaving room to
    generate (a quarter of the context, or `num_predict` if smaller).
    """
    if len(tokens) <= n_ctx - 1:
        return tokens
    if not truncate:
        if len(tokens) > n_ctx:
            raise PromptTooLong(PROMPT_TOO_LONG)
        return tokens
    room = max(1, n_ctx // 4)
    if num_predict > 0:
        room = max(1, min(room, num_predict))
    target = max(1, n_ctx - room)
    keep = max(0, min(num_keep, target - 1))
    return tokens[:keep] + tokens[len(tokens) - (target - keep) :]


@dataclass
class _Plan:
    """One step's batch as it is filled: its size, the rows whose logits are sampled, and the
    sequences that prefill (with how many tokens) or generate in it."""

    n: int = 0
    outputs: list[tuple[int, _Slot]] = field(default_factory=list)
    prefilling: list[tuple[_Slot, int]] = field(default_factory=list)
    generating: list[_Slot] = field(default_factory=list)


def _account(plan: _Plan, elapsed: int) -> None:
    """After the decode: advance every sequence in the batch and charge it the decode time."""
    for slot, take in plan.prefilling:
        slot.fed += take
        slot.prompt_eval_count += take
        slot.prompt_eval_ns += elapsed
        slot.n_past = slot.fed
    for slot in plan.generating:
        slot.eval_ns += elapsed
        slot.n_past += 1
        slot.generated.append(slot.pending)  # type: ignore[arg-type]
        slot.pending = None


class BatchEngine:
    """One llama context serving `n_seq` sequences of up to `n_ctx` tokens each."""

    def __init__(
        self,
        model: Model,
        *,
        n_seq: int,
        n_ctx: int,
        n_batch: int = 512,
        n_threads: int | None = None,
        flash_attn: bool | None = None,
        type_k: str = "f16",
        type_v: str = "f16",
        reuse_prefix: bool = True,
        min_reuse: int = MIN_REUSE,
        cache_ram: int = 0,
    ) -> None:
        """`reuse_prefix` (the prompt cache) keeps a finished sequence's KV and reuses its longest
        common prefix for the sequence's next prompt, so a chat's next turn prefills only its new
        tokens. The logits row of the last prompt position is kept too: the same prompt again is
        served whole from the cache and samples from the very logits of its first run, so a
        repeated request gives the same answer. A follow-up turn reuses KV that was computed in
        batches of other shapes, so its greedy output may differ in the last bits from a cold
        run. A partial prefix shorter than `min_reuse` tokens is prefilled again. `cache_ram`
        bytes (0: none) keep the states of sequences whose slot is reused (see prompt_store)."""
        if n_seq < 1 or n_ctx < 2:
            raise ValueError("need at least one sequence and a context of 2 tokens")
        self.model = model
        self.n_seq = n_seq
        self.n_ctx = n_ctx
        self.n_batch = max(n_batch, n_seq)
        self.reuse_prefix = reuse_prefix
        self.min_reuse = max(1, min_reuse)
        params = _context_params(
            n_seq, n_ctx, self.n_batch, n_threads or _default_threads(), flash_attn, type_k, type_v
        )
        ctx, self._batch = open_context(
            model, params, self.n_batch, "llama.cpp could not create the context (out of memory?)"
        )
        self._ctx: llama_cpp.llama_context_p | None = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._slots: list[_Slot | None] = [None] * n_seq
        self._cached: list[list[int]] = [[] for _ in range(n_seq)]  # tokens in each seq's KV
        # Per sequence: the logits after its last prompt and that prompt's length (see admit).
        self._logits: list[tuple[int, np.ndarray] | None] = [None] * n_seq
        self._n_vocab = model.n_vocab
        self._n_swa = llama_cpp.llama_model_n_swa(model.handle)
        self.store = PromptStore(cache_ram if reuse_prefix else 0)

    # -- admission -----------------------------------------------------------------------

    def admit(self, seq: int, req: SequenceRequest, ticket: int = 0) -> None:
        """Start `req` on sequence `seq` (a free slot); its chunks carry `ticket`.

        Raises PromptTooLong or ValueError, leaving the sequence and its cache as they were.
        """
        if not 0 <= seq < self.n_seq:
            raise ValueError(f"sequence {seq} out of range 0..{self.n_seq - 1}")
        if self._slots[seq] is not None:
            raise ValueError(f"sequence {seq} is busy")
        if not req.tokens:
            raise ValueError("empty prompt")
        n_ctx = min(req.num_ctx, self.n_ctx) if req.num_ctx > 0 else self.n_ctx
        prompt = fit_prompt(req.tokens, n_ctx, req.num_keep, req.num_predict, req.truncate)
        sampler = SamplerChain(req.sampling, self.model.vocab, n_ctx)
        restored = self._bring_best_prefix(seq, prompt)
        reuse, preset = self._reuse_prefix(seq, prompt)
        slot = _Slot(req, sampler, prompt, reuse, ticket=ticket, n_ctx=n_ctx, preset=preset)
        slot.restored = min(restored, reuse)
        self._slots[seq] = slot
        self._cached[seq] = prompt[:reuse]
        self._logits[seq] = None

    def _reuse_prefix(self, seq: int, prompt: list[int]) -> tuple[int, np.ndarray | None]:
        """Keep the KV of the longest prefix this sequence already holds.

        Returns how many prompt tokens are reused and, when the whole prompt is (the same prompt
        again), the kept logits of its last position to sample the first token from.
        """
        if self.reuse_prefix:
            pos_min = llama_cpp.llama_memory_seq_pos_min(self._mem, seq)
            common, preset = self._usable(self._cached[seq], self._logits[seq], pos_min, prompt)
            if common > 0 and llama_cpp.llama_memory_seq_rm(self._mem, seq, common, -1):
                return common, preset
        llama_cpp.llama_memory_seq_rm(self._mem, seq, -1, -1)
        return 0, None

    def _usable(
        self,
        cached: list[int],
        kept: tuple[int, np.ndarray] | None,
        pos_min: int,
        prompt: list[int],
    ) -> tuple[int, np.ndarray | None]:
        """How many leading `prompt` tokens a KV holding `cached` (from position `pos_min` on,
        with `kept` logits) can serve, and the logits to sample from when it serves them all."""
        common = common_prefix(cached, prompt)
        preset = None
        if common == len(prompt) and kept is not None and kept[0] == len(prompt):
            preset = kept[1]
        else:
            common = min(common, len(prompt) - 1)  # decode at least one token for its logits
            if common < self.min_reuse:
                return 0, None
        if common > 0 and self._window_intact(pos_min, common):
            return common, preset
        return 0, None

    def _window_intact(self, pos_min: int, common: int) -> bool:
        """Whether a KV whose first position is `pos_min` still holds every cell that decoding
        after `common` tokens attends to.

        A sliding-window cache that is not full-size drops cells older than the window; reuse then
        needs the window before `common` (llama-server's check); otherwise the sequence must be
        intact from position 0.
        """
        if pos_min == 0:
            return True
        return self._n_swa > 0 and 0 < pos_min <= common - self._n_swa

    # -- host-RAM prompt states -------------------------------------------------------------

    def _bring_best_prefix(self, seq: int, prompt: list[int]) -> int:
        """Before sequence `seq` takes `prompt`: when a saved state serves more of it than the
        sequence's own KV, save what the sequence holds and restore that state in its place;
        when the sequence is about to lose most of what it holds, save it first.

        Returns the prompt tokens the restored state serves (0: nothing restored).
        """
        if not self.store.limit:
            return 0
        cached = self._cached[seq]
        pos_min = llama_cpp.llama_memory_seq_pos_min(self._mem, seq)
        here = self._usable(cached, self._logits[seq], pos_min, prompt)[0]
        best, best_n = None, here
        for entry in self.store:
            n = self._usable(entry.tokens, entry.logits, entry.pos_min, prompt)[0]
            if n > best_n:
                best, best_n = entry, n
        if best is None:
            if 2 * here < len(cached):
                self._save(seq)
            return 0
        self._save(seq)
        return best_n if self._restore(seq, best) else 0

    def _save(self, seq: int) -> None:
        """Copy sequence `seq`'s KV state, tokens and kept logits into the store, if it holds a
        prefix worth keeping and the state fits."""
        tokens = self._cached[seq]
        if len(tokens) < self.min_reuse:
            return
        size = llama_cpp.llama_state_seq_get_size(self._ctx, seq)
        kept = self._logits[seq]
        if not self.store.fits(SavedPrompt.size(size, tokens, kept)):
            return
        state = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(self._ctx, state, size, seq) != size:
            return
        self.store.put(SavedPrompt(list(tokens), state, self._saved_pos_min(seq), kept))

    def _saved_pos_min(self, seq: int) -> int:
        """The first position a state saved from `seq` holds. llama.cpp's state writer leaves out
        the cells a sliding window no longer sees from the sequence's last position, even in a
        full-size cache: such a state can only be continued from its end (see README)."""
        pos_min = llama_cpp.llama_memory_seq_pos_min(self._mem, seq)
        if self._n_swa <= 0:
            return pos_min
        pos_max = llama_cpp.llama_memory_seq_pos_max(self._mem, seq)
        return max(pos_min, pos_max + 1 - self._n_swa)

    def _restore(self, seq: int, entry: SavedPrompt) -> bool:
        """Load `entry` into sequence `seq` (replacing its KV); False, leaving it empty, if
        llama.cpp cannot (no room for the cells)."""
        self.store.take(entry)
        if llama_cpp.llama_state_seq_set_data(self._ctx, entry.state, len(entry.state), seq) == 0:
            llama_cpp.llama_memory_seq_rm(self._mem, seq, -1, -1)
            self._cached[seq], self._logits[seq] = [], None
            return False
        self._cached[seq], self._logits[seq] = entry.tokens, entry.logits
        return True

    def cached_prefix(self, seq: int, tokens: list[int]) -> int:
        """How many leading `tokens` sequence `seq` already holds in its KV cache."""
        return common_prefix(self._cached[seq], tokens)

    def release(self, seq: int, ticket: int | None = None) -> None:
        """Stop sequence `seq` now and free its slot; safe if it is already done or free, and a
        no-op when `ticket` is given and the sequence now runs another admission.

        A sequence stopped mid-way loses its KV; a finished one keeps it for prefix reuse.
        """
        slot = self._slots[seq]
        if slot is None or (ticket is not None and slot.ticket != ticket):
            return
        self._slots[seq] = None
        slot.sampler.close()
        llama_cpp.llama_memory_seq_rm(self._mem, seq, -1, -1)
        self._cached[seq] = []
        self._logits[seq] = None

    def has_work(self) -> bool:
        return any(slot is not None for slot in self._slots)

    def active(self) -> list[int]:
        """Sequence ids that are prefilling or generating."""
        return [i for i, slot in enumerate(self._slots) if slot is not None]

    # -- the step ------------------------------------------------------------------------

    def step(self) -> list[Chunk]:
        """Decode one batch for all active sequences and sample those with logits ready."""
        if self._ctx is None:
            raise RuntimeError("engine is closed")
        chunks: list[Chunk] = []
        self._sample_presets(chunks)
        plan = _Plan()
        self._add_pending(plan)
        self._add_prompts(plan)
        if plan.n == 0:
            return chunks
        self._batch.n_tokens = plan.n
        started = time.perf_counter_ns()
        rc = llama_cpp.llama_decode(self._ctx, self._batch)
        if rc != 0:  # slots are untouched: the caller may release them and carry on
            raise RuntimeError(f"llama_decode failed ({rc})")
        _account(plan, time.perf_counter_ns() - started)
        self._sample_outputs(plan.outputs, chunks)
        return chunks

    def _sample_presets(self, chunks: list[Chunk]) -> None:
        """Sample the first token of each sequence whose whole prompt came from the cache: its
        kept logits need no decode."""
        for seq, slot in enumerate(self._slots):
            if slot is None or slot.preset is None:
                continue
            preset, slot.preset = slot.preset, None
            t0 = time.perf_counter_ns()
            tok = slot.sampler.sample_logits(preset)
            self._take(seq, slot, tok, preset, chunks, t0)

    def _add_pending(self, plan: _Plan) -> None:
        """Put the sampled token of every generating sequence in the batch, each with logits."""
        for seq, slot in enumerate(self._slots):
            if slot is None or slot.pending is None:
                continue
            slot.out_row = plan.n  # llama_get_logits_ith takes the batch position, not the row
            plan.n = put_tokens(self._batch, plan.n, [slot.pending], slot.n_past, seq, True)
            plan.outputs.append((seq, slot))
            plan.generating.append(slot)

    def _add_prompts(self, plan: _Plan) -> None:
        """Fill the rest of the batch with prompt chunks; a prompt's last token gets logits."""
        for seq, slot in enumerate(self._slots):
            if slot is None or slot.pending is not None or plan.n >= self.n_batch:
                continue
            take = min(len(slot.prompt) - slot.fed, self.n_batch - plan.n)
            start = slot.fed
            chunk = slot.prompt[start : start + take]
            plan.n = put_tokens(self._batch, plan.n, chunk, start, seq, False)
            plan.prefilling.append((slot, take))
            if start + take == len(slot.prompt):
                self._batch.logits[plan.n - 1] = 1
                slot.out_row = plan.n - 1
                plan.outputs.append((seq, slot))

    def _sample_outputs(self, outputs: list[tuple[int, _Slot]], chunks: list[Chunk]) -> None:
        """Sample every sequence that has a logits row in the batch just decoded."""
        for seq, slot in outputs:
            t0 = time.perf_counter_ns()
            if slot.pending is None and slot.fed == len(slot.prompt) and not slot.generated:
                # The prompt's last position: keep its logits, so the same prompt again can be
                # served whole from the cache and sample from the same numbers.
                slot.prompt_logits = self._row(slot.out_row).copy()
            tok = slot.sampler.sample(self._ctx, slot.out_row)
            self._take(seq, slot, tok, None, chunks, t0)

    def _take(
        self,
        seq: int,
        slot: _Slot,
        tok: int,
        logits: np.ndarray | None,
        chunks: list[Chunk],
        started: int,
    ) -> None:
        """Emit a sampled token (with its logprobs, from `logits` or else the batch row just
        decoded, when asked for) and charge the sampling since `started` to the sequence."""
        first = len(chunks)
        self._advance(seq, slot, tok, chunks)
        if slot.req.logprobs and not self.model.is_eog(tok) and len(chunks) > first:
            row = self._row(slot.out_row) if logits is None else logits
            top = slot.req.top_logprobs
            chunks[first].logprobs = [token_logprob(row, tok, top, self.model.token_to_piece)]
        slot.eval_ns += time.perf_counter_ns() - started

    def _advance(self, seq: int, slot: _Slot, tok: int, chunks: list[Chunk]) -> None:
        """Take a sampled token: emit its text, or finish the sequence."""
        model = self.model
        if model.is_eog(tok):
            self._finish(seq, slot, "", "stop", chunks)
            return
        text, stopped = slot.stops.feed(slot.utf8.feed(model.token_to_piece(tok)))
        if stopped:
            slot.generated.append(tok)
            self._finish(seq, slot, text, "stop", chunks)
            return
        n_generated = len(slot.generated) + 1
        if slot.req.num_predict >= 0 and n_generated >= slot.req.num_predict:
            slot.generated.append(tok)
            self._finish(seq, slot, text, "length", chunks)
            return
        if slot.n_past >= slot.n_ctx and not self._shift_context(seq, slot):
            slot.generated.append(tok)  # no cell left to decode this token
            self._finish(seq, slot, text, "length", chunks)
            return
        slot.pending = tok
        chunks.append(Chunk(seq, text, ticket=slot.ticket))

    def _finish(self, seq: int, slot: _Slot, text: str, reason: str, chunks: list[Chunk]) -> None:
        if slot.stops.matched is None:
            text += slot.stops.feed(slot.utf8.flush())[0]
            text += slot.stops.flush()
        if text:
            chunks.append(Chunk(seq, text, ticket=slot.ticket))
        chunks.append(
            Chunk(
                seq,
                "",
                done=True,
                done_reason=reason,
                prompt_eval_count=slot.prompt_eval_count,
                prompt_eval_ns=slot.prompt_eval_ns,
                eval_count=len(slot.generated),
                eval_ns=slot.eval_ns,
                tokens=list(slot.generated),
                ticket=slot.ticket,
                prompt_cached=slot.reused,
                prompt_restored=slot.restored,
            )
        )
        slot.sampler.close()
        self._slots[seq] = None
        # KV now holds the prompt and every generated token that was decoded (not the last).
        decoded = slot.generated[: slot.n_past - len(slot.prompt)]
        if slot.shifted:  # the KV no longer holds the prompt as it was
            self._cached[seq] = []
            self._logits[seq] = None
        else:
            self._cached[seq] = slot.prompt + decoded
            if slot.prompt_logits is not None and slot.n_past >= len(slot.prompt):
                self._logits[seq] = (len(slot.prompt), slot.prompt_logits)

    def _row(self, row: int) -> np.ndarray:
        """The logits of batch position `row` of the last decode (a view, valid until the next)."""
        return np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(self._ctx, row), shape=(self._n_vocab,)
        )

    def _shift_context(self, seq: int, slot: _Slot) -> bool:
        """Make room at the end of a full context as Ollama's runner does: keep the first
        `num_keep` tokens (and BOS), drop half of the rest, slide the remainder back.

        Returns False (the caller ends with "length") when the request asked for no shift or
        the memory cannot shift positions (e.g. a sliding-window cache smaller than the context).
        """
        if not slot.req.shift or not llama_cpp.llama_memory_can_shift(self._mem):
            return False
        n_past = slot.n_past
        keep = len(slot.prompt) if slot.req.num_keep < 0 else slot.req.num_keep
        if self.model.add_bos:
            keep += 1
        keep = max(0, min(keep, slot.n_ctx - 1))
        discard = max((slot.n_ctx - keep) // 2, 1)
        if keep + discard > n_past:
            return False
        if not llama_cpp.llama_memory_seq_rm(self._mem, seq, keep, keep + discard):
            return False
        llama_cpp.llama_memory_seq_add(self._mem, seq, keep + discard, n_past, -discard)
        slot.n_past = n_past - discard
        slot.shifted += discard
        return True

    def close(self) -> None:
        """Free samplers, batch, context and saved prompt states (not the model). Idempotent."""
        self.store.clear()
        for seq in range(self.n_seq):
            slot = self._slots[seq]
            if slot is not None:
                slot.sampler.close()
                self._slots[seq] = None
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            free_context(ctx, self._batch)

    def __enter__(self) -> BatchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists (slice compares run in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n - 1  # a[:lo] == b[:lo] and a[:hi + 1] != b[:hi + 1]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _context_params(
    n_seq: int,
    n_ctx: int,
    n_batch: int,
    threads: int,
    flash_attn: bool | None,
    type_k: str,
    type_v: str,
) -> llama_cpp.llama_context_params:
    """llama.cpp's context parameters for `n_seq` sequences of `n_ctx` tokens each."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx * n_seq
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.n_seq_max = n_seq
    params.n_outputs_max = n_seq  # one logits row per sequence per step, not n_batch rows
    params.n_outputs_max_per_seq = 1
    params.n_threads = threads
    params.n_threads_batch = threads
    params.no_perf = True
    # Separate KV streams per sequence: attention only reads its own cells (faster when the
    # sequences share no long prefix, the common case for independent requests).
    params.kv_unified = n_seq == 1
    params.flash_attn_type = {
        None: llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
        True: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
        False: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
    }[flash_attn]
    params.type_k = _kv_type(type_k)
    params.type_v = _kv_type(type_v)
    return params


def _kv_type(name: str) -> int:
    try:
        return KV_TYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown KV cache type {name!r}") from None


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
