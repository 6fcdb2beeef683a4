"""The tiny GGUF generator (tests/tinygguf.py) makes real models llama.cpp loads and runs.

Other parts' tests rely on these knobs (sizes, templates, pooling), so each is pinned here.
"""

from __future__ import annotations

from pathlib import Path

from tinygguf import DEFAULT_CHAT_TEMPLATE, write_tiny_gguf

from engine.batch import BatchEngine, SequenceRequest
from engine.model import Model
from engine.sampling import SamplingParams


def greedy_text(path: Path) -> str:
    with Model.load(path) as model, BatchEngine(model, n_seq=1, n_ctx=64, n_threads=1) as engine:
        engine.admit(
            0, SequenceRequest(model.tokenize("the"), SamplingParams(temperature=0), num_predict=8)
        )
        text = ""
        while engine.has_work():
            text += "".join(c.text for c in engine.step())
    return text


def test_same_knobs_write_identical_files(tmp_path: Path) -> None:
    a = write_tiny_gguf(tmp_path / "a.gguf", seed=3)
    b = write_tiny_gguf(tmp_path / "b.gguf", seed=3)
    assert a.read_bytes() == b.read_bytes()


def test_different_seeds_make_different_models(tmp_path: Path) -> None:
    first = greedy_text(write_tiny_gguf(tmp_path / "a.gguf", seed=1))
    second = greedy_text(write_tiny_gguf(tmp_path / "b.gguf", seed=2))
    assert first and second and first != second


def test_size_knobs_reach_llama_cpp(tiny_gguf_factory) -> None:
    with Model.load(tiny_gguf_factory(n_layer=3, n_embd=32, n_ctx_train=128)) as model:
        assert (model.n_layer, model.n_embd, model.n_ctx_train) == (3, 32, 128)


def test_f16_model_loads_and_generates(tiny_gguf_factory) -> None:
    assert greedy_text(tiny_gguf_factory(f16=True))


def test_default_template_and_none(tiny_gguf_factory) -> None:
    with Model.load(tiny_gguf_factory()) as model:
        assert model.chat_template == DEFAULT_CHAT_TEMPLATE
    with Model.load(tiny_gguf_factory(chat_template=None)) as model:
        assert model.chat_template is None


def test_pooling_knob_declares_an_embedding_model(tiny_gguf_factory) -> None:
    with Model.load(tiny_gguf_factory(pooling=1)) as model:
        assert model.pooling_type == 1


def test_extra_bytes_make_a_bigger_loadable_file(tiny_gguf_factory) -> None:
    small, big = tiny_gguf_factory(), tiny_gguf_factory(extra_bytes=2_000_000)
    assert big.stat().st_size - small.stat().st_size >= 2_000_000
    assert greedy_text(big) == greedy_text(small)
