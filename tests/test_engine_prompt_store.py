"""Prompt states in host RAM (engine/prompt_store.py through engine/batch.py): a prefix outlives
the slot that computed it. Tiny model, greedy, one thread (see test_engine_batch.py); the
`reference` test uses gemma3 270M, whose sliding-window layers the restore must carry."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.batch import BatchEngine, Chunk, SequenceRequest, common_prefix
from engine.model import Model
from engine.sampling import SamplingParams
from tests.test_engine_batch import GREEDY, drain, final, text_of

MIB = 1024 * 1024
SYSTEM = "you are a helpful cat that sits on the mat and looks at the bird in the tree " * 3


def run(engine: BatchEngine, seq: int, tokens: list[int], n: int = 4) -> list[Chunk]:
    engine.admit(seq, SequenceRequest(tokens, GREEDY, num_predict=n))
    return drain(engine)[seq]


def chats(model: Model) -> tuple[list[int], list[int], list[int]]:
    """A (system prompt + a question), B (something else), A' (the system prompt + another)."""
    a = model.tokenize(SYSTEM + "where is the cat")
    b = model.tokenize("the dog runs after the ball in the park all day long " * 2)
    a2 = model.tokenize(SYSTEM + "what does the bird say")
    return a, b, a2


def test_a_prefix_evicted_from_its_slot_is_restored_from_ram(tiny_model: Model) -> None:
    a, b, a2 = chats(tiny_model)
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=256, cache_ram=64 * MIB) as engine:
        run(engine, 0, a)
        run(engine, 0, b)  # takes the only slot: A's state goes to RAM
        done = final(run(engine, 0, a2))
    common = common_prefix(a, a2)
    assert common >= 16
    assert done.prompt_restored == done.prompt_cached == common
    assert done.prompt_eval_count == len(a2) - common


def test_without_ram_an_evicted_prefix_is_prefilled_again(tiny_model: Model) -> None:
    a, b, a2 = chats(tiny_model)
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=256, cache_ram=0) as engine:
        run(engine, 0, a)
        run(engine, 0, b)
        done = final(run(engine, 0, a2))
    assert done.prompt_restored == 0 and done.prompt_eval_count == len(a2)


def test_a_state_restores_into_another_slot(tiny_model: Model) -> None:
    a, b, a2 = chats(tiny_model)
    with BatchEngine(tiny_model, n_threads=1, n_seq=2, n_ctx=256, cache_ram=64 * MIB) as engine:
        run(engine, 0, a)
        run(engine, 0, b)
        elsewhere = run(engine, 1, a2)
    with BatchEngine(tiny_model, n_threads=1, n_seq=2, n_ctx=256, cache_ram=64 * MIB) as engine:
        run(engine, 0, a)
        run(engine, 0, b)
        same_slot = run(engine, 0, a2)
    assert final(elsewhere).prompt_restored == common_prefix(a, a2)
    assert text_of(elsewhere) == text_of(same_slot)  # the cells went to slot 1's own stream


def test_a_repeat_served_from_ram_answers_as_its_first_run(tiny_model: Model) -> None:
    a, b, _ = chats(tiny_model)
    sampling = SamplingParams(temperature=1.0, seed=11)
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=256, cache_ram=64 * MIB) as engine:
        engine.admit(0, SequenceRequest(a, sampling, num_predict=8))
        first = drain(engine)[0]
        run(engine, 0, b)
        engine.admit(0, SequenceRequest(a, sampling, num_predict=8))
        again = drain(engine)[0]
    # Whole prompt from RAM, first token from the logits kept with the state.
    assert final(again).prompt_eval_count == 0 and final(again).prompt_restored == len(a)
    assert final(again).tokens == final(first).tokens


def test_the_store_never_holds_more_than_its_bound(tiny_model: Model) -> None:
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=256, cache_ram=256 * 1024) as engine:
        sizes = []
        for i in range(12):
            run(engine, 0, tiny_model.tokenize(f"prompt number {i} " * 30), n=2)
            sizes.append(engine.store.nbytes)
            assert engine.store.nbytes <= engine.store.limit
        entries = len(engine.store)
    assert entries >= 2  # it keeps several states ...
    assert max(sizes) > engine.store.limit // 2  # ... and had to drop old ones to stay bounded


def test_the_store_is_off_with_the_prompt_cache(tiny_model: Model) -> None:
    a, b, a2 = chats(tiny_model)
    with BatchEngine(
        tiny_model, n_threads=1, n_seq=1, n_ctx=256, reuse_prefix=False, cache_ram=64 * MIB
    ) as engine:
        for tokens in (a, b, a2):
            run(engine, 0, tokens)
        assert len(engine.store) == 0


@pytest.mark.reference
def test_a_sliding_window_model_restores_what_its_window_allows(reference_gguf: Path) -> None:
    """gemma3's local layers see 512 tokens, and llama.cpp saves a sequence's state without the
    cells its window no longer sees: within the window any common prefix is restored, beyond it
    only a prompt that continues the whole saved sequence (a chat's next turn)."""
    with Model.load(reference_gguf) as model:
        tok = model.tokenize
        other = tok("A different conversation about the weather. " * 20)
        short = tok("The assistant answers briefly. " * 20)
        long = tok("The assistant answers briefly. " * 120)
        assert len(short) < 400 < 600 < len(long)
        with BatchEngine(model, n_seq=1, n_ctx=1024, n_threads=2, cache_ram=256 * MIB) as engine:
            run(engine, 0, short + tok(" Name a colour.", add_special=False))
            run(engine, 0, other, n=2)
            within = final(run(engine, 0, short + tok(" Name a fruit.", add_special=False)))
            first = final(run(engine, 0, long + tok(" Name a colour.", add_special=False), n=6))
            run(engine, 0, other, n=2)
            held = long + tok(" Name a colour.", add_special=False) + first.tokens[:5]
            follow = final(run(engine, 0, held + tok(" And a fruit?", add_special=False)))
            run(engine, 0, other, n=2)
            beyond = final(run(engine, 0, long + tok(" Name a tree.", add_special=False)))
    assert within.prompt_restored > len(short) - 4
    assert follow.prompt_restored == len(held)
    assert beyond.prompt_restored == 0
