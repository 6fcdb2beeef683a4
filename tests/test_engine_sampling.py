"""Sampler chains and `format` grammars (engine/sampling.py).

Chains are built against the tiny model's vocabulary; their effect on generation is covered in
test_engine_batch.py.
"""

from __future__ import annotations

import pytest
from llama_cpp.llama_grammar import JSON_GBNF

from engine.model import Model
from engine.sampling import SamplerChain, SamplingParams, format_grammar


def test_json_format_gives_the_json_grammar() -> None:
    assert format_grammar("json") == JSON_GBNF


def test_empty_format_gives_no_grammar() -> None:
    assert format_grammar(None) is None
    assert format_grammar("") is None


def test_schema_format_gives_a_grammar_with_its_keys_in_order() -> None:
    grammar = format_grammar(
        {"type": "object", "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}}}
    )
    assert grammar is not None
    root = next(line for line in grammar.splitlines() if line.startswith("root ::="))
    assert root.index("zeta") < root.index("alpha")


def test_unknown_format_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="invalid format"):
        format_grammar("yaml")


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "https://example.com/schema.json"},
        {"type": "object", "properties": {"a": {"$ref": "#/defs/nope"}}},
        {"type": "frobnicate"},
    ],
)
def test_unusable_schema_is_rejected_with_value_error(schema: dict) -> None:
    with pytest.raises(ValueError, match="invalid JSON schema"):
        format_grammar(schema)


def test_non_object_format_is_rejected() -> None:
    with pytest.raises(ValueError):
        format_grammar(["json"])


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),
        SamplingParams(temperature=0.0),
        SamplingParams(repeat_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.5),
        SamplingParams(repeat_last_n=-1, repeat_penalty=1.2),
        SamplingParams(top_k=0, top_p=1.0, typical_p=0.5, min_p=0.05, seed=3),
        SamplingParams(grammar=JSON_GBNF),
    ],
)
def test_chain_builds_for_option_combinations(tiny_model: Model, params: SamplingParams) -> None:
    chain = SamplerChain(params, tiny_model.vocab, 128)
    chain.close()
    chain.close()


def test_invalid_grammar_is_rejected(tiny_model: Model) -> None:
    with pytest.raises(ValueError, match="grammar"):
        SamplerChain(SamplingParams(grammar="root ::= ("), tiny_model.vocab, 128)
