"""Tool calls and thinking through the real server: /api/chat, /api/generate and /v1 routes.

Conventions: conftest's `app`, a real appliance on 127.0.0.1 port 0 (hypercorn, scheduler,
llama.cpp) with the tiny generated model registered under toolkit's Go templates. The tiny model
cannot be asked for a tool call or a thought, so each test steers its output with `format`: a
JSON schema whose only values are constants makes the model write one exact JSON object. With a
template whose tool-call prefix is bare JSON (`{`), that object is a tool call; with a template
that opens `<think>` for the model, a constant holding `</think>` splits the object into thinking
and content. Shapes are Ollama's (reference/ollama-api.md §2.2, §2.3, §3). Every test is bounded
by fail_after.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import trio
from helpers import ndjson
from toolkit import CALL_FORMAT, THOUGHT_FORMAT, WEATHER_TOOL

LIMIT = 60
OPTIONS = {"temperature": 0, "num_predict": 120}

USER = [{"role": "user", "content": "weather in Paris?"}]
CALL_ID = re.compile(r"^call_[a-z0-9]{8}$")


@pytest.fixture
def tool_server(app: Any) -> Any:
    """conftest's `app`: `tools` and `thinker` under toolkit's templates (and `tiny`)."""
    return app


def chat_body(**extra: Any) -> dict[str, Any]:
    body = {
        "model": "tools",
        "messages": USER,
        "tools": [WEATHER_TOOL],
        "format": CALL_FORMAT,
        "options": OPTIONS,
    }
    body.update(extra)
    return body


def assert_weather_call(call: dict[str, Any], index: int = 0) -> None:
    assert CALL_ID.match(call["id"]), call
    assert call["function"] == {
        "index": index,
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }


async def post(server: Any, path: str, body: dict[str, Any]) -> Any:
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            return await client.post(path, json=body)


async def stream(server: Any, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            async with client.stream("POST", path, json=body) as r:
                assert r.status_code == 200
                return await ndjson(r)


# ---- tool calls -----------------------------------------------------------------------------------


async def test_chat_returns_the_json_answer_as_a_tool_call(tool_server):
    r = await post(tool_server, "/api/chat", chat_body(stream=False))
    assert r.status_code == 200
    answer = r.json()
    message = answer["message"]
    assert message["content"] == ""
    assert len(message["tool_calls"]) == 1
    assert_weather_call(message["tool_calls"][0])
    assert answer["done"] is True and answer["done_reason"] == "stop"


async def test_chat_stream_holds_back_the_call_text_and_sends_the_call(tool_server):
    lines = await stream(tool_server, "/api/chat", chat_body())
    assert all(line["message"]["content"] == "" for line in lines), lines
    calls = [c for line in lines for c in line["message"].get("tool_calls", [])]
    assert len(calls) == 1
    assert_weather_call(calls[0])
    assert lines[-1]["done"] is True and "tool_calls" not in lines[-1]["message"]


async def test_chat_without_tools_keeps_the_json_as_content(tool_server):
    r = await post(tool_server, "/api/chat", chat_body(stream=False, tools=None))
    message = r.json()["message"]
    assert "tool_calls" not in message
    assert json.loads(message["content"]) == {"name": "get_weather", "arguments": {"city": "Paris"}}


async def test_a_tool_result_in_the_history_renders_and_answers(tool_server):
    first = (await post(tool_server, "/api/chat", chat_body(stream=False))).json()["message"]
    history = [*USER, first, {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    r = await post(tool_server, "/api/chat", chat_body(stream=False, messages=history))
    assert r.status_code == 200
    assert_weather_call(r.json()["message"]["tool_calls"][0])


async def test_openai_chat_reports_tool_calls_with_finish_reason_tool_calls(tool_server):
    body = {
        "model": "tools",
        "messages": USER,
        "tools": [WEATHER_TOOL],
        "temperature": 0,
        "max_tokens": 120,
        "response_format": {"type": "json_schema", "json_schema": {"schema": CALL_FORMAT}},
    }
    r = await post(tool_server, "/v1/chat/completions", body)
    assert r.status_code == 200
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and CALL_ID.match(call["id"])
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


async def test_openai_chat_stream_sends_a_tool_calls_delta_and_finish_reason(tool_server):
    body = {
        "model": "tools",
        "messages": USER,
        "tools": [WEATHER_TOOL],
        "temperature": 0,
        "max_tokens": 120,
        "stream": True,
        "response_format": {"type": "json_schema", "json_schema": {"schema": CALL_FORMAT}},
    }
    with trio.fail_after(LIMIT):
        async with tool_server.client() as client:
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                text = (await r.aread()).decode()
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    assert all(not d.get("content") for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


# ---- thinking -------------------------------------------------------------------------------------


def think_body(path: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "thinker", "format": THOUGHT_FORMAT, "options": OPTIONS}
    if path == "/api/chat":
        body["messages"] = USER
    else:
        body["prompt"] = "weather in Paris?"
    body.update(extra)
    return body


def assert_split(thinking: str, content: str) -> None:
    """`{"a": "plan</think>done"}` started inside the thinking the template opened."""
    assert thinking.startswith("{") and thinking.endswith('"plan'), thinking
    assert content.startswith('done"') and content.rstrip().endswith("}"), content


async def test_chat_thinks_by_default_on_a_thinking_model(tool_server):
    r = await post(tool_server, "/api/chat", think_body("/api/chat", stream=False))
    message = r.json()["message"]
    assert_split(message["thinking"], message["content"])


async def test_chat_stream_sends_thinking_then_content(tool_server):
    lines = await stream(tool_server, "/api/chat", think_body("/api/chat"))
    thinking = "".join(line["message"].get("thinking", "") for line in lines)
    content = "".join(line["message"]["content"] for line in lines)
    assert_split(thinking, content)
    assert all("</think>" not in line["message"]["content"] for line in lines)
    first_content = next(i for i, line in enumerate(lines) if line["message"]["content"])
    assert not any(line["message"].get("thinking") for line in lines[first_content:])


async def test_think_false_renders_without_thinking_and_keeps_all_as_content(tool_server):
    r = await post(tool_server, "/api/chat", think_body("/api/chat", stream=False, think=False))
    message = r.json()["message"]
    assert "thinking" not in message
    assert json.loads(message["content"]) == {"a": "plan</think>done"}


async def test_generate_puts_thinking_beside_the_response(tool_server):
    r = await post(tool_server, "/api/generate", think_body("/api/generate", stream=False))
    answer = r.json()
    assert_split(answer["thinking"], answer["response"])
    lines = await stream(tool_server, "/api/generate", think_body("/api/generate"))
    assert_split(
        "".join(line.get("thinking", "") for line in lines),
        "".join(line["response"] for line in lines),
    )


async def test_think_on_a_model_without_thinking_is_refused(tool_server):
    r = await post(tool_server, "/api/chat", chat_body(stream=False, think=True))
    assert (r.status_code, r.json()) == (400, {"error": '"tools" does not support thinking'})


async def test_openai_chat_reports_thinking_as_reasoning(tool_server):
    body = {
        "model": "thinker",
        "messages": USER,
        "temperature": 0,
        "max_tokens": 120,
        "response_format": {"type": "json_schema", "json_schema": {"schema": THOUGHT_FORMAT}},
    }
    r = await post(tool_server, "/v1/chat/completions", body)
    message = r.json()["choices"][0]["message"]
    assert_split(message["reasoning"], message["content"])


async def test_models_sharing_weights_keep_their_own_templates(tool_server):
    """`tools` and `thinker` are one GGUF, so one runner serves both: each keeps its template."""
    tools_answer = (await post(tool_server, "/api/chat", chat_body(stream=False))).json()
    assert_weather_call(tools_answer["message"]["tool_calls"][0])
    r = await post(tool_server, "/api/chat", think_body("/api/chat", stream=False))
    message = r.json()["message"]
    assert_split(message["thinking"], message["content"])


# ---- prompt decisions made once ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "answered"),
    [
        (chat_body(stream=False), lambda m: assert_weather_call(m["tool_calls"][0])),
        (
            think_body("/api/chat", stream=False),
            lambda m: assert_split(m["thinking"], m["content"]),
        ),
    ],
    ids=["tool-calls", "thinking"],
)
async def test_a_second_chat_with_the_same_template_parses_no_template(
    tool_server, template_parses, body, answered
):
    """The template, its tool-call prefix and its thinking tags are read once per model."""
    parses = template_parses
    first = await post(tool_server, "/api/chat", body)
    answered(first.json()["message"])
    assert parses, "the first chat parses the model's template"
    parses.clear()
    second = await post(tool_server, "/api/chat", body)
    answered(second.json()["message"])
    assert parses == []
