"""Loading models and converting between text and tokens (engine/model.py).

Uses the session tiny model from tests/conftest.py; load failures use real bad files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine.model import Model, ModelLoadFailed


def test_loads_vocabulary_facts(tiny_model: Model) -> None:
    assert tiny_model.n_ctx_train == 512
    assert tiny_model.n_embd == 64
    assert tiny_model.n_vocab > 256
    assert (tiny_model.bos_text, tiny_model.eos_text) == ("<s>", "</s>")
    assert tiny_model.add_bos and not tiny_model.add_eos
    assert tiny_model.architecture == "llama"


def test_chat_template_comes_from_the_gguf(tiny_model: Model) -> None:
    assert tiny_model.chat_template is not None
    assert "add_generation_prompt" in tiny_model.chat_template


def test_tokenize_adds_bos_and_round_trips_any_utf8(tiny_model: Model) -> None:
    text = "the cat ñ € 😀 \x00 tab\t"
    tokens = tiny_model.tokenize(text)
    assert tokens[0] == tiny_model.bos
    assert tiny_model.detokenize(tokens[1:]) == text


def test_tokenize_without_special_has_no_bos(tiny_model: Model) -> None:
    assert tiny_model.bos not in tiny_model.tokenize("abc", add_special=False)


def test_parse_special_turns_control_text_into_its_token(tiny_model: Model) -> None:
    assert tiny_model.tokenize("</s>", add_special=False) == [tiny_model.eos]
    assert tiny_model.eos not in tiny_model.tokenize("</s>", add_special=False, parse_special=False)


def test_eos_is_end_of_generation(tiny_model: Model) -> None:
    assert tiny_model.is_eog(tiny_model.eos)
    assert not tiny_model.is_eog(tiny_model.tokenize("a", add_special=False)[0])


def test_token_pieces_are_bytes_and_control_tokens_render_their_text(tiny_model: Model) -> None:
    euro = tiny_model.tokenize("€", add_special=False)
    assert b"".join(tiny_model.token_to_piece(t) for t in euro) == "€".encode()
    assert tiny_model.token_to_piece(tiny_model.bos) == b"<s>"


def test_close_is_idempotent(tiny_gguf: Path) -> None:
    model = Model.load(tiny_gguf)
    model.close()
    model.close()
    with pytest.raises(RuntimeError):
        _ = model.handle


def test_missing_file_fails_with_reason(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadFailed, match="not found"):
        Model.load(tmp_path / "absent.gguf")


def test_non_gguf_file_fails_with_llama_cpp_reason(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"definitely not a model" * 10)
    with pytest.raises(ModelLoadFailed, match="magic"):
        Model.load(bogus)


def test_truncated_gguf_fails_to_load(tiny_gguf: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:20_000])
    with pytest.raises(ModelLoadFailed):
        Model.load(cut)


def test_llama_cpp_log_goes_to_python_logging(tiny_gguf: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="llama.cpp")
    with Model.load(tiny_gguf):
        pass
    records = [r for r in caplog.records if r.name == "llama.cpp"]
    assert any("llama_model_loader" in r.getMessage() for r in records)
    assert all(not r.getMessage().endswith("\n") for r in records)


def test_load_errors_are_logged_at_error_level(tmp_path: Path, caplog) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"nope" * 100)
    with pytest.raises(ModelLoadFailed):
        Model.load(bogus)
    assert any(r.name == "llama.cpp" and r.levelno == logging.ERROR for r in caplog.records)
