"""Embeddings (engine/embed.py) on a tiny embedding model, a tiny completion model and gemma3.

Vectors are compared with dot products (they are L2-normalised); the semantic check needs the
reference model and is marked `reference`.
"""

from __future__ import annotations

import math

import pytest

from engine.embed import Embedder, InputTooLong
from engine.model import Model


def norm(vec: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vec))


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def test_completion_model_embeds_with_unit_norm(tiny_model: Model) -> None:
    with Embedder(tiny_model, n_threads=1, n_ctx=128) as embedder:
        vectors, count = embedder.embed(["the cat", "is on the mat"])
    assert len(vectors) == 2 and len(vectors[0]) == tiny_model.n_embd
    assert all(abs(norm(v) - 1.0) < 1e-6 for v in vectors)
    assert count == len(tiny_model.tokenize("the cat")) + len(tiny_model.tokenize("is on the mat"))


def test_embedding_model_with_declared_pooling_embeds(tiny_gguf_factory) -> None:
    with Model.load(tiny_gguf_factory(pooling=1)) as model:
        with Embedder(model, n_ctx=64, n_threads=1) as embedder:
            vectors, _ = embedder.embed(["hello"])
    assert abs(norm(vectors[0]) - 1.0) < 1e-6


def test_same_text_gives_the_same_vector(tiny_model: Model) -> None:
    with Embedder(tiny_model, n_threads=1, n_ctx=128) as embedder:
        (first, second), _ = embedder.embed(["the cat", "the cat"])
    assert first == pytest.approx(second, abs=1e-6)


def test_dimensions_keeps_a_renormalised_prefix(tiny_model: Model) -> None:
    with Embedder(tiny_model, n_threads=1, n_ctx=128) as embedder:
        (full,), _ = embedder.embed(["the cat"])
        (short,), _ = embedder.embed(["the cat"], dimensions=8)
    assert len(short) == 8
    assert abs(norm(short) - 1.0) < 1e-6
    scale = norm(full[:8])
    assert short == pytest.approx([x / scale for x in full[:8]], abs=1e-6)


def test_long_input_is_truncated_to_the_context(tiny_model: Model) -> None:
    with Embedder(tiny_model, n_threads=1, n_ctx=32) as embedder:
        _, count = embedder.embed(["abc " * 100])
    assert count == 32


def test_long_input_without_truncation_is_refused(tiny_model: Model) -> None:
    with Embedder(tiny_model, n_threads=1, n_ctx=32) as embedder:
        with pytest.raises(InputTooLong, match="the input length exceeds the context length"):
            embedder.embed(["abc " * 100], truncate=False)


def test_context_is_capped_at_the_training_length(tiny_model: Model) -> None:
    with Embedder(tiny_model, n_threads=1, n_ctx=100_000) as embedder:
        assert embedder.n_ctx == tiny_model.n_ctx_train


@pytest.mark.reference
def test_similar_texts_are_closer_than_unrelated_ones(reference_gguf) -> None:
    with Model.load(reference_gguf) as model, Embedder(model, n_ctx=512, n_threads=1) as embedder:
        (cat, kitten, finance), _ = embedder.embed(
            [
                "The cat sat on the mat.",
                "A kitten was sitting on the rug.",
                "Quarterly revenue rose by twelve percent.",
            ]
        )
    assert abs(norm(cat) - 1.0) < 1e-6
    assert dot(cat, kitten) > dot(cat, finance)


def test_chunked_mean_of_a_completion_model_matches_llama_cpp_mean_pooling(
    tiny_gguf_factory,
) -> None:
    # Same seed, same weights; one file declares MEAN pooling, so llama.cpp pools it natively.
    text = "the cat is on the mat " * 20  # longer than one chunk
    vectors = []
    for pooling in (None, 1):
        with Model.load(tiny_gguf_factory(pooling=pooling)) as model:
            with Embedder(model, n_ctx=256, n_threads=1) as embedder:
                assert embedder.pools_natively == (pooling is not None)
                (vec,), count = embedder.embed([text])
                vectors.append(vec)
    assert count > 64
    assert vectors[0] == pytest.approx(vectors[1], abs=1e-4)
