"""GGUF header reading (engine/gguf.py) on generated tiny models and the reference model.

Tiny models are written by tests/tinygguf.py into a session temp dir; the reference test reads
gemma3 270M from its PyPI package and is marked `reference`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tinygguf import tiny_vocab

from engine.gguf import read_gguf_info


def test_reads_architecture_and_hyperparameters(tiny_gguf_factory) -> None:
    info = read_gguf_info(tiny_gguf_factory(n_layer=3, n_embd=32, n_ctx_train=256))
    assert info.architecture == "llama"
    assert (info.block_count, info.embedding_length, info.context_length) == (3, 32, 256)
    assert (info.head_count, info.head_count_kv, info.key_length) == (4, 2, 8)
    assert info.file_type == "F32"
    assert info.vocab_size == len(tiny_vocab()[0])


def test_metadata_holds_strings_and_lists(tiny_gguf: Path) -> None:
    info = read_gguf_info(tiny_gguf)
    assert info.metadata["general.name"] == "tiny"
    assert info.metadata["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    assert not any(key.startswith("GGUF.") for key in info.metadata)


def test_parameter_count_is_the_sum_of_tensor_elements(tiny_gguf: Path) -> None:
    info = read_gguf_info(tiny_gguf)
    total = 0
    for _name, _type, shape in info.tensors:
        n = 1
        for dim in shape:
            n *= dim
        total += n
    assert info.parameter_count == total > 0
    assert ("output_norm.weight", "F32", (64,)) in info.tensors


def test_f16_model_reports_f16_file_type(tiny_gguf_factory) -> None:
    assert read_gguf_info(tiny_gguf_factory(f16=True)).file_type == "F16"


def test_chat_template_is_read_or_none(tiny_gguf_factory) -> None:
    assert "add_generation_prompt" in read_gguf_info(tiny_gguf_factory()).chat_template
    assert read_gguf_info(tiny_gguf_factory(chat_template=None)).chat_template is None


def test_completion_model_capabilities(tiny_gguf: Path) -> None:
    assert read_gguf_info(tiny_gguf).capabilities() == ["completion"]


def test_pooling_type_makes_an_embedding_model(tiny_gguf_factory) -> None:
    info = read_gguf_info(tiny_gguf_factory(pooling=1))
    assert info.pooling_type == 1
    assert info.capabilities() == ["embedding"]


def test_template_features_add_capabilities(tiny_gguf_factory) -> None:
    template = "{% if tools %}{{ tools }}{% endif %}<think>{{ suffix }}"
    caps = read_gguf_info(tiny_gguf_factory(chat_template=template)).capabilities()
    assert caps == ["completion", "tools", "thinking", "insert"]


def test_file_that_is_not_gguf_raises_value_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError):
        read_gguf_info(bogus)


def test_extra_bytes_grow_the_file(tiny_gguf_factory) -> None:
    small = read_gguf_info(tiny_gguf_factory())
    big = read_gguf_info(tiny_gguf_factory(extra_bytes=1_000_000))
    assert big.file_size - small.file_size >= 1_000_000


def test_kv_cache_follows_ollama_formula(tiny_gguf: Path) -> None:
    info = read_gguf_info(tiny_gguf)
    # 2 (K and V) x layers x cells x kv_heads x head_dim x 2 bytes (f16)
    assert info.kv_cache_bytes(1024) == 2 * 2 * 1024 * 2 * 16 * 2
    assert info.kv_cache_bytes(1024, "q8_0") < info.kv_cache_bytes(1024)


def test_estimate_grows_with_context_and_sequences(tiny_gguf: Path) -> None:
    info = read_gguf_info(tiny_gguf)
    one = info.estimate_memory(256, 1)
    assert one > info.file_size
    assert info.estimate_memory(256, 4) > one
    assert info.estimate_memory(512, 1) > one


def test_estimate_caps_context_at_training_length(tiny_gguf: Path) -> None:
    info = read_gguf_info(tiny_gguf)  # n_ctx_train 512
    assert info.estimate_memory(100_000, 1) == info.estimate_memory(512, 1)


@pytest.mark.reference
def test_reference_model_header(reference_gguf: Path) -> None:
    info = read_gguf_info(reference_gguf)
    assert info.architecture == "gemma3"
    assert info.file_type == "Q4_K_M"
    assert info.context_length == 32768
    assert 250_000_000 < info.parameter_count < 300_000_000
    assert info.capabilities() == ["completion"]
    # 18 layers x 1 KV head x 256 dims, K and V, f16, 8192 cells
    assert info.kv_cache_bytes(8192) == 2 * 18 * 8192 * 256 * 2
    assert info.file_size < info.estimate_memory(2048, 4) < 2 * 1024**3
