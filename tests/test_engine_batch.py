"""Continuous batching (engine/batch.py) on the tiny generated model, plus reference checks.

Conventions: every engine is created in the test and closed by its `with` block; greedy
sampling (temperature 0) makes outputs comparable across runs and batch compositions. Tiny-model
engines use one thread: ggml's worker threads spin at barriers, so on a busy 2-core machine two
threads can make a millisecond step take hundreds of milliseconds. The
`reference` tests use gemma3 270M for behaviour a random tiny model cannot show (JSON).
"""

from __future__ import annotations

import json

import pytest

from engine.batch import (
    PROMPT_TOO_LONG,
    BatchEngine,
    Chunk,
    PromptTooLong,
    SequenceRequest,
    common_prefix,
)
from engine.model import Model
from engine.sampling import SamplingParams, format_grammar

GREEDY = SamplingParams(temperature=0.0)


def drain(engine: BatchEngine, steps: int | None = None) -> dict[int, list[Chunk]]:
    """Step until no work is left (or `steps` steps); chunks per sequence."""
    out: dict[int, list[Chunk]] = {}
    n = 0
    while engine.has_work() and (steps is None or n < steps):
        for chunk in engine.step():
            out.setdefault(chunk.seq, []).append(chunk)
        n += 1
    return out


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def final(chunks: list[Chunk]) -> Chunk:
    assert chunks[-1].done and all(not c.done for c in chunks[:-1])
    return chunks[-1]


def generate_alone(model: Model, tokens: list[int], **kw) -> tuple[str, Chunk]:
    with BatchEngine(model, n_seq=1, n_ctx=256, n_batch=64, n_threads=1) as engine:
        engine.admit(0, SequenceRequest(tokens, kw.pop("sampling", GREEDY), **kw))
        chunks = drain(engine)[0]
    return text_of(chunks), final(chunks)


def test_one_sequence_generates_and_reports_counts(tiny_model: Model) -> None:
    prompt = tiny_model.tokenize("the cat")
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=256) as engine:
        engine.admit(0, SequenceRequest(prompt, GREEDY, num_predict=12))
        chunks = drain(engine)[0]
    done = final(chunks)
    assert text_of(chunks)
    assert done.done_reason == "length"
    assert done.eval_count == 12 == len(done.tokens)
    assert done.prompt_eval_count == len(prompt)
    assert done.prompt_eval_ns > 0 and done.eval_ns > 0
    assert tiny_model.detokenize(done.tokens) == text_of(chunks)


def test_greedy_is_deterministic(tiny_model: Model) -> None:
    prompt = tiny_model.tokenize("hello there")
    assert (
        generate_alone(tiny_model, prompt, num_predict=20)[0]
        == generate_alone(tiny_model, prompt, num_predict=20)[0]
    )


def test_greedy_beside_other_sequences_equals_greedy_alone(tiny_model: Model) -> None:
    prompts = [tiny_model.tokenize(p) for p in ("the cat", "is it on", "a b c d e f g")]
    alone = [generate_alone(tiny_model, p, num_predict=16)[0] for p in prompts]
    with BatchEngine(tiny_model, n_threads=1, n_seq=3, n_ctx=256) as engine:
        for seq, prompt in enumerate(prompts):
            engine.admit(seq, SequenceRequest(prompt, GREEDY, num_predict=16))
        out = drain(engine)
    assert [text_of(out[s]) for s in range(3)] == alone


def test_sequence_admitted_mid_way_joins_without_disturbing_others(tiny_model: Model) -> None:
    first, second = tiny_model.tokenize("the cat"), tiny_model.tokenize("on the mat")
    alone_first = generate_alone(tiny_model, first, num_predict=20)[0]
    alone_second = generate_alone(tiny_model, second, num_predict=8)[0]
    with BatchEngine(tiny_model, n_threads=1, n_seq=2, n_ctx=256) as engine:
        engine.admit(0, SequenceRequest(first, GREEDY, num_predict=20))
        out = drain(engine, steps=6)
        engine.admit(1, SequenceRequest(second, GREEDY, num_predict=8))
        for seq, chunks in drain(engine).items():
            out.setdefault(seq, []).extend(chunks)
    assert text_of(out[0]) == alone_first
    assert text_of(out[1]) == alone_second


def test_long_prompt_is_fed_over_several_steps(tiny_model: Model) -> None:
    prompt = tiny_model.tokenize("x" * 100)
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=256, n_batch=16) as engine:
        engine.admit(0, SequenceRequest(prompt, GREEDY, num_predict=1))
        steps = 0
        while engine.has_work():
            engine.step()
            steps += 1
    assert steps == -(-len(prompt) // 16)


def test_release_mid_prompt_frees_the_slot(tiny_model: Model) -> None:
    prompt = tiny_model.tokenize("y" * 100)
    expected = generate_alone(tiny_model, prompt, num_predict=5)[0]
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=256, n_batch=16) as engine:
        engine.admit(0, SequenceRequest(prompt, GREEDY, num_predict=5))
        assert engine.step() == []  # still prefilling
        engine.release(0)
        assert not engine.has_work()
        engine.admit(0, SequenceRequest(prompt, GREEDY, num_predict=5))
        chunks = drain(engine)[0]
    assert text_of(chunks) == expected
    assert final(chunks).prompt_eval_count == len(prompt)  # nothing stale was reused


def test_release_is_safe_when_done_or_free(tiny_model: Model) -> None:
    with BatchEngine(tiny_model, n_threads=1, n_seq=2, n_ctx=64) as engine:
        engine.release(1)
        engine.admit(0, SequenceRequest(tiny_model.tokenize("a"), GREEDY, num_predict=2))
        drain(engine)
        engine.release(0)
        engine.release(0)
        assert not engine.has_work()


def test_busy_or_out_of_range_slot_is_refused(tiny_model: Model) -> None:
    req = SequenceRequest(tiny_model.tokenize("a"), GREEDY, num_predict=2)
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=64) as engine:
        engine.admit(0, req)
        with pytest.raises(ValueError):
            engine.admit(0, req)
        with pytest.raises(ValueError):
            engine.admit(1, req)


def test_num_predict_ends_with_length(tiny_model: Model) -> None:
    _, done = generate_alone(tiny_model, tiny_model.tokenize("the"), num_predict=3)
    assert (done.done_reason, done.eval_count) == ("length", 3)


def test_full_context_ends_with_length(tiny_model: Model) -> None:
    prompt = tiny_model.tokenize("the cat")
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=32) as engine:
        engine.admit(0, SequenceRequest(prompt, GREEDY))
        done = final(drain(engine)[0])
    assert done.done_reason == "length"
    assert done.prompt_eval_count + done.eval_count == 32 + 1  # the last token is not decoded


def test_stop_string_cuts_the_output(tiny_model: Model) -> None:
    prompt = tiny_model.tokenize("the cat")
    full, _ = generate_alone(tiny_model, prompt, num_predict=30)
    stop = full[10:13]
    text, done = generate_alone(tiny_model, prompt, num_predict=30, stop=[stop])
    assert done.done_reason == "stop"
    assert text == full[: full.index(stop)]
    assert stop not in text


def test_end_of_generation_token_stops_and_is_not_emitted(tiny_model: Model) -> None:
    sampling = SamplingParams(temperature=0.0, grammar='root ::= "ab"')
    text, done = generate_alone(tiny_model, tiny_model.tokenize("x"), sampling=sampling)
    assert (text, done.done_reason) == ("ab", "stop")
    assert tiny_model.eos not in done.tokens


def test_multibyte_character_over_byte_tokens_is_emitted_whole(tiny_model: Model) -> None:
    sampling = SamplingParams(temperature=0.0, grammar='root ::= "€😀"')
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=64) as engine:
        engine.admit(0, SequenceRequest(tiny_model.tokenize("x"), sampling))
        chunks = drain(engine)[0]
    assert [c.text for c in chunks if c.text] == ["€", "😀"]
    assert final(chunks).eval_count == 7  # byte tokens: 3 + 4


def test_seed_makes_sampling_reproducible(tiny_model: Model) -> None:
    prompt = tiny_model.tokenize("the")
    seeded = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=42)
    runs = [
        generate_alone(tiny_model, prompt, sampling=seeded, num_predict=24)[0] for _ in range(2)
    ]
    other = generate_alone(
        tiny_model,
        prompt,
        sampling=SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=7),
        num_predict=24,
    )[0]
    assert runs[0] == runs[1]
    assert other != runs[0]


def test_prompt_longer_than_context_without_truncation_is_refused(tiny_model: Model) -> None:
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=32) as engine:
        with pytest.raises(PromptTooLong) as info:
            engine.admit(0, SequenceRequest(tiny_model.tokenize("z" * 40), GREEDY, truncate=False))
        assert not engine.has_work()
    assert str(info.value) == PROMPT_TOO_LONG


def test_long_prompt_is_truncated_keeping_its_start_and_end(tiny_model: Model) -> None:
    prompt = tiny_model.tokenize("z" * 80)
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=32) as engine:
        engine.admit(0, SequenceRequest(prompt, GREEDY, num_predict=4, num_keep=4))
        done = final(drain(engine)[0])
    assert done.done_reason == "length" and done.eval_count == 4
    assert done.prompt_eval_count == 28  # room left for the 4 tokens to generate


def test_same_prompt_on_the_same_slot_reuses_its_prefix(tiny_model: Model) -> None:
    prompt = tiny_model.tokenize("the cat is on the mat")
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=128, reuse_prefix=True) as engine:
        engine.admit(0, SequenceRequest(prompt, GREEDY, num_predict=8))
        first = drain(engine)[0]
        engine.admit(0, SequenceRequest(prompt, GREEDY, num_predict=8))
        second = drain(engine)[0]
    # The whole prompt comes from the cache and the first token from its kept logits.
    assert final(second).prompt_eval_count == 0
    assert final(second).prompt_cached == len(prompt)
    assert text_of(second) == text_of(first)


def test_a_repeated_prompt_samples_from_the_kept_logits_of_its_first_run(tiny_model: Model) -> None:
    prompt = tiny_model.tokenize("the dog runs after the ball")
    sampling = SamplingParams(temperature=1.0, seed=7)
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=128) as engine:
        engine.admit(0, SequenceRequest(prompt, sampling, num_predict=6))
        first = drain(engine)[0]
        engine.admit(0, SequenceRequest(prompt, sampling, num_predict=6))
        second = drain(engine)[0]
    assert final(second).tokens == final(first).tokens
    assert final(second).prompt_eval_count == 0


def test_a_changed_history_reuses_only_the_common_part(tiny_model: Model) -> None:
    head = tiny_model.tokenize("the cat sat on the mat and")
    first = head + tiny_model.tokenize(" looked at the bird", add_special=False)
    second = head + tiny_model.tokenize(" slept all day long", add_special=False)
    common = common_prefix(first, second)
    assert 0 < common < len(second)
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=128, min_reuse=1) as engine:
        engine.admit(0, SequenceRequest(first, GREEDY, num_predict=3))
        drain(engine)
        engine.admit(0, SequenceRequest(second, GREEDY, num_predict=3))
        done = final(drain(engine)[0])
    assert done.prompt_cached == common
    assert done.prompt_eval_count == len(second) - common


def test_a_prefix_shorter_than_min_reuse_is_prefilled_again(tiny_model: Model) -> None:
    first = tiny_model.tokenize("the cat looked at the bird")
    second = tiny_model.tokenize("the cat slept all day long")
    assert 0 < common_prefix(first, second) < 16
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=128) as engine:
        engine.admit(0, SequenceRequest(first, GREEDY, num_predict=3))
        drain(engine)
        engine.admit(0, SequenceRequest(second, GREEDY, num_predict=3))
        done = final(drain(engine)[0])
    assert done.prompt_cached == 0 and done.prompt_eval_count == len(second)


def test_the_prompt_cache_can_be_turned_off(tiny_model: Model) -> None:
    prompt = tiny_model.tokenize("the cat is on the mat")
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=128, reuse_prefix=False) as engine:
        for _ in range(2):
            engine.admit(0, SequenceRequest(prompt, GREEDY, num_predict=3))
            done = final(drain(engine)[0])
    assert done.prompt_eval_count == len(prompt) and done.prompt_cached == 0


def test_every_chunk_carries_the_ticket_of_its_admission(tiny_model: Model) -> None:
    with BatchEngine(tiny_model, n_threads=1, n_seq=2, n_ctx=64) as engine:
        engine.admit(0, SequenceRequest(tiny_model.tokenize("a b"), GREEDY, num_predict=3), 41)
        engine.admit(1, SequenceRequest(tiny_model.tokenize("c d"), GREEDY, num_predict=3), 42)
        out = drain(engine)
    assert {c.ticket for c in out[0]} == {41} and {c.ticket for c in out[1]} == {42}


def test_a_release_for_another_ticket_leaves_the_sequence_running(tiny_model: Model) -> None:
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=64) as engine:
        engine.admit(0, SequenceRequest(tiny_model.tokenize("a b"), GREEDY, num_predict=4), 2)
        engine.release(0, ticket=1)  # a stale release of an earlier sequence on this id
        assert engine.active() == [0]
        engine.release(0, ticket=2)
        assert engine.active() == []


def test_a_request_is_held_to_its_own_context_length(tiny_model: Model) -> None:
    prompt = tiny_model.tokenize("x " * 10)
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=24) as engine:
        engine.admit(0, SequenceRequest(prompt, GREEDY))
        small = final(drain(engine)[0])
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=256) as engine:
        engine.admit(0, SequenceRequest(prompt, GREEDY, num_ctx=24))
        done = final(drain(engine)[0])
    assert done.done_reason == small.done_reason == "length"
    assert done.eval_count == small.eval_count < 256 - len(prompt)


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [([], [1], 0), ([1, 2, 3], [1, 2, 3], 3), ([1, 2, 3], [1, 2], 2), ([1, 2, 3], [1, 9, 3], 1)],
)
def test_common_prefix(a: list[int], b: list[int], n: int) -> None:
    assert common_prefix(a, b) == n == common_prefix(b, a)
    long = list(range(1000))
    assert common_prefix(long, long[:700] + [-1] + long[701:]) == 700


def test_continuing_a_conversation_reuses_prompt_and_reply(tiny_model: Model) -> None:
    prompt = tiny_model.tokenize("the cat")
    with BatchEngine(tiny_model, n_threads=1, n_seq=1, n_ctx=128, min_reuse=1) as engine:
        engine.admit(0, SequenceRequest(prompt, GREEDY, num_predict=6))
        reply = final(drain(engine)[0]).tokens
        follow_up = prompt + reply + tiny_model.tokenize(" is", add_special=False)
        engine.admit(0, SequenceRequest(follow_up, GREEDY, num_predict=6))
        done = final(drain(engine)[0])
    # all but the reply's last token (sampled, never decoded) are already in the cache
    assert done.prompt_eval_count == len(follow_up) - len(prompt) - len(reply) + 1


@pytest.mark.reference
def test_json_schema_format_produces_valid_json(reference_gguf) -> None:
    with Model.load(reference_gguf) as model:
        prompt = model.tokenize(
            "<start_of_turn>user\nDescribe a cat as JSON with keys name and age."
            "<end_of_turn>\n<start_of_turn>model\n"
        )
        schema = {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        }
        sampling = SamplingParams(temperature=0.0, grammar=format_grammar(schema))
        with BatchEngine(model, n_seq=2, n_ctx=512, n_threads=1) as engine:
            engine.admit(0, SequenceRequest(prompt, sampling, num_predict=100))
            chunks = drain(engine)[0]
    done = final(chunks)
    assert done.done_reason == "stop"
    value = json.loads(text_of(chunks))
    assert isinstance(value["name"], str) and isinstance(value["age"], int)


@pytest.mark.reference
def test_reference_model_batched_greedy_is_repeatable(reference_gguf) -> None:
    """Same batch composition, same output. (Across compositions a quantised model may differ in
    the last bits: llama.cpp picks different matmul kernels for different batch widths.)"""
    with Model.load(reference_gguf) as model:
        prompts = [model.tokenize("The capital of France is"), model.tokenize("Once upon a time")]
        runs = []
        for _ in range(2):
            with BatchEngine(model, n_seq=2, n_ctx=256, n_threads=1) as engine:
                for seq, prompt in enumerate(prompts):
                    engine.admit(seq, SequenceRequest(prompt, GREEDY, num_predict=12))
                out = drain(engine)
            runs.append([text_of(out[0]), text_of(out[1])])
            assert final(out[0]).done_reason == final(out[1]).done_reason == "length"
    assert all(runs[0])
    assert runs[0] == runs[1]


def test_cached_prefix_tells_which_sequence_holds_a_prompt(tiny_model: Model) -> None:
    first, second = tiny_model.tokenize("the cat"), tiny_model.tokenize("on the mat")
    with BatchEngine(tiny_model, n_threads=1, n_seq=3, n_ctx=128) as engine:
        engine.admit(0, SequenceRequest(first, GREEDY, num_predict=2))
        engine.admit(1, SequenceRequest(second, GREEDY, num_predict=2))
        drain(engine)
        follow_up = second + tiny_model.tokenize(" is", add_special=False)
        assert engine.cached_prefix(1, follow_up) == len(second)
        assert engine.cached_prefix(0, follow_up) < len(second)
        assert engine.cached_prefix(2, follow_up) == 0
