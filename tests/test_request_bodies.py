"""Typed request bodies (appliance/api/bodies): each body is parsed once, at the boundary.

A wrong type is a 400 with Go's decoder text naming the struct and field (Ollama's `api` types:
GenerateRequest, ChatRequest, Message, EmbedRequest, EmbeddingRequest); a missing or null field
takes its default; an unknown field is ignored, as Go's decoder ignores it.
"""

from __future__ import annotations

from typing import Any

import pytest

from appliance.api.bodies.fields import NUMBER, Fields, field_of_type, must_be
from appliance.api.bodies.inference import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    Message,
)
from appliance.errors import BadRequest

USER = {"role": "user", "content": "x"}


def refusal(parse: Any, body: dict[str, Any]) -> str:
    with pytest.raises(BadRequest) as caught:
        parse(body)
    return caught.value.message


def go_text(kind: str, field: str, go_type: str) -> str:
    return f"json: cannot unmarshal {kind} into Go struct field {field} of type {go_type}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": 1}, go_text("number", "GenerateRequest.model", "string")),
        ({"prompt": 3}, go_text("number", "GenerateRequest.prompt", "string")),
        ({"suffix": []}, go_text("array", "GenerateRequest.suffix", "string")),
        ({"system": {}}, go_text("object", "GenerateRequest.system", "string")),
        ({"template": True}, go_text("bool", "GenerateRequest.template", "string")),
        ({"raw": "yes"}, go_text("string", "GenerateRequest.raw", "bool")),
        ({"stream": 1}, go_text("number", "GenerateRequest.stream", "bool")),
        ({"truncate": "no"}, go_text("string", "GenerateRequest.truncate", "bool")),
        ({"shift": 0}, go_text("number", "GenerateRequest.shift", "bool")),
        ({"logprobs": "on"}, go_text("string", "GenerateRequest.logprobs", "bool")),
        ({"context": "1,2"}, go_text("string", "GenerateRequest.context", "[]int")),
        ({"context": [1, "2"]}, go_text("string", "GenerateRequest.context", "int")),
        ({"options": []}, go_text("array", "GenerateRequest.options", "map[string]interface {}")),
        ({"images": "abc"}, go_text("string", "GenerateRequest.images", "[]api.ImageData")),
    ],
)
def test_generate_field_of_the_wrong_type_gets_go_text(body, message):
    assert refusal(GenerateRequest.parse, body) == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": "hi"}, go_text("string", "ChatRequest.messages", "[]api.Message")),
        ({"messages": [3]}, go_text("number", "ChatRequest.messages", "api.Message")),
        ({"messages": [{"role": 1}]}, go_text("number", "Message.messages.role", "string")),
        (
            {"messages": [{"role": "user", "content": ["x"]}]},
            go_text("array", "Message.messages.content", "string"),
        ),
        (
            {"messages": [{**USER, "thinking": 1}]},
            go_text("number", "Message.messages.thinking", "string"),
        ),
        ({"tools": {}}, go_text("object", "ChatRequest.tools", "api.Tools")),
        ({"tools": ["f"]}, go_text("string", "ChatRequest.tools", "api.Tool")),
        ({"stream": "no"}, go_text("string", "ChatRequest.stream", "bool")),
        ({"options": 1}, go_text("number", "ChatRequest.options", "map[string]interface {}")),
    ],
)
def test_chat_field_of_the_wrong_type_gets_go_text(body, message):
    assert refusal(ChatRequest.parse, body) == message


def test_embed_fields_of_the_wrong_type_get_go_text():
    dimensions = refusal(EmbedRequest.parse, {"dimensions": "8"})
    prompt = refusal(EmbeddingsRequest.parse, {"prompt": 1})
    assert dimensions == go_text("string", "EmbedRequest.dimensions", "int")
    assert prompt == go_text("number", "EmbeddingRequest.prompt", "string")


def test_absent_and_null_fields_take_the_defaults():
    for body in ({}, {"stream": None, "truncate": None, "options": None, "think": None}):
        generate, chat = GenerateRequest.parse(body), ChatRequest.parse(body)
        assert generate == GenerateRequest() and chat == ChatRequest()
    decoding = ChatRequest.parse({}).decoding
    assert (decoding.truncate, decoding.shift, decoding.logprobs) == (True, True, False)
    assert (decoding.keep_alive, decoding.top_logprobs, dict(decoding.options)) == (None, 0, {})
    assert ChatRequest().stream and GenerateRequest().system is None


def test_unknown_fields_are_ignored():
    assert GenerateRequest.parse({"model": "m", "colour": 7}) == GenerateRequest(model="m")
    assert EmbedRequest.parse({"model": "m", "colour": 7}) == EmbedRequest(model="m")


def test_a_message_is_lower_cased_and_keeps_what_a_template_may_read():
    (message,) = ChatRequest.parse(
        {"messages": [{"role": "USER", "content": None, "name": "ann"}]}
    ).messages
    assert message == Message("user", "", extra={"name": "ann"})
    assert message.as_dict() == {"name": "ann", "role": "user", "content": ""}


def test_the_model_name_is_trimmed_once():
    assert ChatRequest.parse({"model": "  tiny \n"}).model == "tiny"


def test_each_api_keeps_its_own_wrong_type_text():
    with pytest.raises(BadRequest) as anthropic:
        Fields({"temperature": True}, must_be).get("temperature", NUMBER)
    with pytest.raises(BadRequest) as native:
        field_of_type({"name": 1}, "name", str, "")
    assert anthropic.value.message == "temperature must be a number"
    assert native.value.message == go_text("number", ".name", "str")


# ---- through the real server ---------------------------------------------------------------------


async def test_a_wrong_typed_chat_field_is_400_with_go_text_and_loads_nothing(server):
    body = {"model": "tiny", "messages": [USER], "stream": "yes"}
    async with server.client() as client:
        r = await client.post("/api/chat", json=body)
        loaded = (await client.get("/api/ps")).json()["models"]
    assert (r.status_code, r.json()) == (
        400,
        {"error": go_text("string", "ChatRequest.stream", "bool")},
    )
    assert loaded == []


async def test_a_wrong_type_is_refused_before_the_model_is_looked_up(server):
    """Go decodes the whole body before Ollama's handler looks for the model."""
    async with server.client() as client:
        r = await client.post("/api/generate", json={"model": "missing", "prompt": 3})
    assert (r.status_code, r.json()["error"]) == (
        400,
        go_text("number", "GenerateRequest.prompt", "string"),
    )


def test_a_translated_message_has_its_role_lower_cased_as_ollama_decodes_it():
    from appliance.api.routes.openai import chat_request

    request = chat_request({"model": "m", "messages": [{"role": "SYSTEM", "content": "s"}]})
    assert [m.role for m in request.messages] == ["system"]
