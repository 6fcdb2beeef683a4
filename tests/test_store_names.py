"""Model name parsing and validation (Ollama's types/model/name.go and its tests).

Conventions: pure functions, no I/O; hostile inputs must be rejected before any path is built.
"""

from __future__ import annotations

import pytest

from appliance.store.names import InvalidName, ModelName, parse_model_name


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("llama3", ("registry.ollama.ai", "library", "llama3", "latest")),
        ("llama3:8b", ("registry.ollama.ai", "library", "llama3", "8b")),
        ("user/m:t", ("registry.ollama.ai", "user", "m", "t")),
        ("host.io/ns/m:t", ("host.io", "ns", "m", "t")),
        ("host:5000/ns/m", ("host:5000", "ns", "m", "latest")),
        ("  llama3.2  ", ("registry.ollama.ai", "library", "llama3.2", "latest")),
        (
            "hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M",
            ("hf.co", "bartowski", "Llama-3.2-1B-GGUF", "Q4_K_M"),
        ),
    ],
)
def test_parse_fills_ollama_defaults(text: str, parts: tuple[str, ...]) -> None:
    assert parse_model_name(text).parts() == parts


def test_scheme_prefix_is_accepted_and_kept_for_pull() -> None:
    name = parse_model_name("http://localhost:5000/ns/m:t")
    assert name.parts() == ("localhost:5000", "ns", "m", "t")
    assert name.scheme == "http"
    assert parse_model_name("m").scheme == "https"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "..",
        "../x",
        "x/../../etc",
        "/etc/passwd",
        "a//b",
        "ns/",
        ":tag",
        "m:",
        "a/b/c/d",
        "a:b/c",  # ':' only in host
        "ns.dot/m",  # '.' not in namespace
        "-m",
        ".hidden",
        "m:.x",
        "caf\u00e9",
        "m\x00x",
        "m x",
        "m\\x",
        "ftp://h/ns/m",
        "m" * 81,
        "h" * 351 + "/ns/m",
        "x" * 5000,
    ],
)
def test_hostile_or_malformed_names_are_invalid(text: str) -> None:
    with pytest.raises(InvalidName) as info:
        parse_model_name(text)
    assert info.value.status == 400
    assert info.value.message == "invalid model name"


def test_length_limits_are_inclusive() -> None:
    assert parse_model_name("m" * 80 + ":" + "t" * 80).model == "m" * 80
    assert parse_model_name("h" * 350 + "/ns/m").host == "h" * 350


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("llama3", "llama3:latest"),
        ("user/m", "user/m:latest"),
        ("example.com/library/m:t", "example.com/library/m:t"),
        ("REGISTRY.OLLAMA.AI/Library/M:T", "M:T"),
    ],
)
def test_display_shortest(text: str, shown: str) -> None:
    assert parse_model_name(text).display_shortest() == shown


def test_comparison_is_case_insensitive_via_same_as() -> None:
    a = parse_model_name("LLaMA3:Latest")
    b = parse_model_name("llama3")
    assert a != b and a.same_as(b)


def test_custom_message_for_endpoint_wording() -> None:
    with pytest.raises(InvalidName, match='source "x/" is invalid'):
        parse_model_name("x/", message='source "x/" is invalid')
    assert isinstance(parse_model_name("x"), ModelName)
