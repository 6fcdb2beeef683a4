"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) on the real server.

Conventions: conftest's `app`, a real appliance on 127.0.0.1 port 0 (hypercorn, scheduler,
llama.cpp) with the tiny generated model stored as `tiny`, and as `tools` and `thinker` under
toolkit's Go templates (prompt cache off, see `app_settings`). The tiny
model cannot be asked for a tool call or a thought, so those tests steer it with structured
outputs (`output_config.format`, a JSON schema of constants): with a template whose tool-call
prefix is bare JSON the object is a tool call; with a template that opens `<think>`, a constant
holding `</think>` splits it into thinking and text. The official `anthropic` client (a sync
client) runs in a worker thread, as Claude Code's calls would arrive. Shapes are Anthropic's, as
Ollama's anthropic/anthropic.go answers them. Every test is bounded by fail_after.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import anthropic
import pytest
import trio
from helpers import add_model, native_chat, running_appliance
from toolkit import CALL_FORMAT, THOUGHT_FORMAT, WEATHER_PARAMETERS, sse_frames

LIMIT = 60
KEY = "sk-ant-test-0123456789"
USER = [{"role": "user", "content": "weather in Paris?"}]
BODY = {"model": "tiny", "max_tokens": 5, "temperature": 0, "messages": USER}
MESSAGE_ID = re.compile(r"^msg_[0-9a-f]{24}$")

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": WEATHER_PARAMETERS,
}
STEER_CALL = {"format": {"type": "json_schema", "schema": CALL_FORMAT}}
STEER_THOUGHT = {"format": {"type": "json_schema", "schema": THOUGHT_FORMAT}}


@pytest.fixture
def app_settings() -> dict[str, Any]:
    """Usage is compared across requests: like Ollama's it counts the prompt tokens evaluated,
    which the prompt cache reduces on a repeat; these tests pin the translation, cache off."""
    return {"prompt_cache": False}


def client_for(app: Any, api_key: str = "ignored") -> Any:
    return anthropic.Anthropic(base_url=app.url, api_key=api_key, max_retries=0, timeout=LIMIT)


def sdk(body: dict[str, Any]) -> dict[str, Any]:
    """`body` as the official client's keyword arguments: this SDK has no sampling parameters,
    so they travel in `extra_body` as its docs say to send fields it does not model."""
    sampling = {k: body[k] for k in ("temperature", "top_p", "top_k") if k in body}
    rest = {k: v for k, v in body.items() if k not in sampling}
    return {**rest, "extra_body": sampling} if sampling else rest


async def in_thread(fn: Any) -> Any:
    with trio.fail_after(LIMIT):
        return await trio.to_thread.run_sync(fn)


async def post(app: Any, path: str, body: Any, **kwargs: Any) -> Any:
    with trio.fail_after(LIMIT):
        async with app.client() as client:
            return await client.post(path, json=body, **kwargs)


async def events(app: Any, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The (event, data) pairs of a streamed answer; asserts the `event:`/`data:` framing."""
    out = await sse_frames(app, "/v1/messages", body)
    for name, data in out:
        assert data["type"] == name
    return out


# ---- messages ------------------------------------------------------------------------------------


async def test_official_client_gets_a_message_with_text_usage_and_max_tokens_stop(app):
    message = await in_thread(lambda: client_for(app).messages.create(**sdk(BODY)))
    assert MESSAGE_ID.match(message.id)
    assert message.type == "message" and message.role == "assistant" and message.model == "tiny"
    (block,) = message.content
    assert block.type == "text" and block.text
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert message.usage.output_tokens == 5 and message.usage.input_tokens > 0


async def test_stream_sends_anthropics_event_sequence(app):
    got = await events(app, BODY)
    names = [name for name, _ in got]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = got[0][1]["message"]
    assert MESSAGE_ID.match(start["id"]) and start["content"] == [] and start["role"] == "assistant"
    assert got[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert all(d["delta"]["type"] == "text_delta" and d["index"] == 0 for n, d in got[3:-3])
    delta = got[-2][1]
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"]["output_tokens"] == 5
    assert delta["usage"]["input_tokens"] == start["usage"]["input_tokens"] > 0


async def test_official_client_stream_text_matches_the_whole_answer(app):
    def use() -> tuple[Any, Any]:
        client = client_for(app)
        whole = client.messages.create(**sdk(BODY))
        with client.messages.stream(**sdk(BODY)) as stream:
            streamed = stream.get_final_message()
        return whole, streamed

    whole, streamed = await in_thread(use)
    assert streamed.content[0].text == whole.content[0].text
    assert streamed.stop_reason == "max_tokens" and streamed.usage.output_tokens == 5


async def test_stop_sequences_end_the_turn_before_the_sequence(app):
    free = (await post(app, "/v1/messages", {**BODY, "max_tokens": 20})).json()
    text = free["content"][0]["text"]
    assert len(text) > 4
    stop = text[2:4]
    r = await post(app, "/v1/messages", {**BODY, "max_tokens": 20, "stop_sequences": [stop]})
    cut = r.json()
    assert cut["stop_reason"] == "end_turn"
    assert stop not in "".join(b.get("text", "") for b in cut["content"])


async def test_max_completion_is_num_predict_and_sampling_options_are_taken(app):
    body = {**BODY, "max_tokens": 3, "temperature": 0.7, "top_p": 0.9, "top_k": 5}
    r = await post(app, "/v1/messages", body)
    assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 3
    bad = await post(app, "/v1/messages", {**BODY, "top_k": "many"})
    assert bad.status_code == 400


async def test_system_as_string_or_text_blocks_is_the_same_prompt(app):
    system = "You answer in one word."
    blocks = [{"type": "text", "text": "You answer "}, {"type": "text", "text": "in one word."}]

    def count(**extra: Any) -> int:
        return (
            client_for(app).messages.count_tokens(model="tiny", messages=USER, **extra).input_tokens
        )

    plain, as_string, as_blocks = await in_thread(
        lambda: (count(), count(system=system), count(system=blocks))
    )
    assert as_string == as_blocks > plain


async def test_count_tokens_is_the_prompt_a_message_evaluates(app):
    r = await post(app, "/v1/messages/count_tokens", {"model": "tiny", "messages": USER})
    assert r.status_code == 200 and set(r.json()) == {"input_tokens"}
    answer = (await post(app, "/v1/messages", BODY)).json()
    assert r.json()["input_tokens"] == answer["usage"]["input_tokens"]


async def test_count_tokens_counts_a_prompt_longer_than_the_context_whole(app):
    """The tiny model's context is 512 tokens; a longer history is counted, not truncated."""
    text = "hello world, " * 300

    async def count(content: str) -> int:
        body = {"model": "tiny", "messages": [{"role": "user", "content": content}]}
        r = await post(app, "/v1/messages/count_tokens", body)
        assert r.status_code == 200, r.text
        return r.json()["input_tokens"]

    once, twice = await count(text), await count(text * 2)
    assert 512 < once < twice


async def test_thinking_enabled_on_a_model_without_thinking_is_dropped_not_refused(app):
    body = {**BODY, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    r = await post(app, "/v1/messages", body)
    assert r.status_code == 200
    assert [b["type"] for b in r.json()["content"]] == ["text"]


async def test_thinking_comes_back_as_a_thinking_block_before_the_text(app):
    body = {**BODY, "model": "thinker", "max_tokens": 120, "output_config": STEER_THOUGHT}
    message = (await post(app, "/v1/messages", body)).json()
    thinking, text = message["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"].endswith('"plan')
    assert text["type"] == "text" and text["text"].startswith('done"')
    got = await events(app, body)
    starts = [d["content_block"]["type"] for n, d in got if n == "content_block_start"]
    assert starts == ["thinking", "text"]
    deltas = [d["delta"]["type"] for n, d in got if n == "content_block_delta"]
    assert deltas[0] == "thinking_delta" and deltas[-1] == "text_delta"


# ---- tools ---------------------------------------------------------------------------------------

TOOL_BODY = {
    "model": "tools",
    "max_tokens": 120,
    "temperature": 0,
    "messages": USER,
    "tools": [WEATHER_TOOL],
    "output_config": STEER_CALL,
}


async def test_a_tool_call_is_a_tool_use_block_with_stop_reason_tool_use(app):
    message = await in_thread(lambda: client_for(app).messages.create(**sdk(TOOL_BODY)))
    (block,) = message.content
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.input == {"city": "Paris"} and block.id
    assert message.stop_reason == "tool_use"


async def test_a_streamed_tool_call_arrives_as_input_json_delta(app):
    got = await events(app, TOOL_BODY)
    starts = [d for n, d in got if n == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["tool_use"]
    assert starts[0]["content_block"]["name"] == "get_weather"
    assert starts[0]["content_block"]["input"] == {}
    (delta,) = [d["delta"] for n, d in got if n == "content_block_delta"]
    assert delta["type"] == "input_json_delta"
    assert json.loads(delta["partial_json"]) == {"city": "Paris"}
    assert got[-2][1]["delta"]["stop_reason"] == "tool_use"

    def final() -> Any:
        with client_for(app).messages.stream(**sdk(TOOL_BODY)) as stream:
            return stream.get_final_message()

    message = await in_thread(final)
    assert message.content[0].input == {"city": "Paris"}


async def test_a_tool_result_goes_back_into_the_prompt(app):
    first = (await post(app, "/v1/messages", TOOL_BODY)).json()
    (call,) = first["content"]

    def history(result: str) -> dict[str, Any]:
        return {
            "model": "tools",
            "tools": [WEATHER_TOOL],
            "messages": [
                *USER,
                {"role": "assistant", "content": [call]},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": call["id"], "content": result}
                    ],
                },
            ],
        }

    short = await post(app, "/v1/messages/count_tokens", history(""))
    long = await post(app, "/v1/messages/count_tokens", history("sunny, 25 degrees, light wind"))
    assert long.json()["input_tokens"] > short.json()["input_tokens"]
    r = await post(app, "/v1/messages", {**TOOL_BODY, **history("sunny")})
    assert r.status_code == 200 and r.json()["content"][0]["type"] == "tool_use"


async def test_tool_choice_none_hides_the_tools(app):
    body = {**TOOL_BODY, "tool_choice": {"type": "none"}}
    message = (await post(app, "/v1/messages", body)).json()
    assert [b["type"] for b in message["content"]] == ["text"]
    assert json.loads(message["content"][0]["text"])["name"] == "get_weather"
    assert message["stop_reason"] == "end_turn"


# ---- images --------------------------------------------------------------------------------------

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


async def test_an_image_block_is_answered_as_the_native_path_answers_it(app):
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "what is this?"},
    ]
    r = await post(
        app, "/v1/messages", {**BODY, "messages": [{"role": "user", "content": content}]}
    )
    native = await post(
        app,
        "/api/chat",
        {
            "model": "tiny",
            "stream": False,
            "options": {"num_predict": 5},
            "messages": [{"role": "user", "content": "what is this?", "images": [PNG]}],
        },
    )
    assert r.status_code == native.status_code
    if native.status_code != 200:
        assert r.json()["error"]["message"] == native.json()["error"]


@pytest.mark.parametrize(
    "source, message",
    [
        (
            {"type": "url", "url": "https://example.com/cat.png"},
            "invalid image source type: url. Only base64 images are supported.",
        ),
        ({"type": "base64", "media_type": "image/png", "data": "not base64!"}, None),
    ],
)
async def test_an_image_that_is_not_base64_data_is_400(app, source, message):
    content = [{"type": "image", "source": source}]
    r = await post(
        app, "/v1/messages", {**BODY, "messages": [{"role": "user", "content": content}]}
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    if message:
        assert r.json()["error"]["message"] == message


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, kind, message",
    [
        ({**BODY, "max_tokens": None}, 400, "invalid_request_error", "max_tokens is required"),
        ({**BODY, "max_tokens": 0}, 400, "invalid_request_error", "max_tokens is required"),
        ({**BODY, "model": ""}, 400, "invalid_request_error", "model is required"),
        ({**BODY, "messages": []}, 400, "invalid_request_error", "messages is required"),
        ({**BODY, "model": "nope"}, 404, "not_found_error", "model 'nope' not found"),
    ],
)
async def test_errors_come_in_anthropics_shape(app, body, status, kind, message):
    r = await post(app, "/v1/messages", body)
    assert r.status_code == status
    got = r.json()
    assert got["type"] == "error" and got["error"]["type"] == kind
    assert got["error"]["message"].startswith(message)


async def test_official_client_raises_its_typed_errors(app):
    def use() -> list[type]:
        client = client_for(app)
        raised = []
        for body in ({**BODY, "model": "nope"}, {**BODY, "max_tokens": 0}):
            try:
                client.messages.create(**sdk(body))
            except anthropic.APIStatusError as exc:
                raised.append(type(exc))
        return raised

    assert await in_thread(use) == [anthropic.NotFoundError, anthropic.BadRequestError]


async def test_without_a_key_the_answer_is_anthropics_401(tmp_path, tiny_gguf):
    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf)
    async with running_appliance(models, api_keys=[KEY]) as keyed:
        r = await post(keyed, "/v1/messages", BODY)
        assert r.status_code == 401
        assert r.json() == {
            "type": "error",
            "error": {"type": "authentication_error", "message": "unauthorized"},
        }

        def use() -> tuple[Any, Any, type]:
            ok = client_for(keyed, api_key=KEY).messages.create(**sdk(BODY))  # sends x-api-key
            # ANTHROPIC_AUTH_TOKEN (Claude Code behind a gateway) sends `Authorization: Bearer`.
            bearer = anthropic.Anthropic(
                base_url=keyed.url, auth_token=KEY, max_retries=0, timeout=LIMIT
            ).messages.create(**sdk(BODY))
            try:
                client_for(keyed, api_key="wrong").messages.create(**sdk(BODY))
            except anthropic.APIStatusError as exc:
                return ok, bearer, type(exc)
            return ok, bearer, type(None)

        ok, bearer, refused = await in_thread(use)
        assert ok.usage.output_tokens == bearer.usage.output_tokens == 5
        assert refused is anthropic.AuthenticationError


# ---- the reference model -------------------------------------------------------------------------


@pytest.mark.reference
@pytest.mark.slow
async def test_reference_model_answers_through_the_official_client_as_native_chat_does(tmp_path):
    """gemma3:270m is a base model (it continues text rather than answering), so the check is that
    the client gets the native path's real answer, its stop reason and its token counts."""
    question = [{"role": "user", "content": "What is the capital of France?"}]
    async with running_appliance(
        tmp_path / "models", import_reference=True, prompt_cache=False
    ) as running:

        def use() -> tuple[Any, int]:
            client = client_for(running)
            message = client.messages.create(
                model="gemma3:270m",
                max_tokens=24,
                system="Answer briefly.",
                messages=question,
                extra_body={"temperature": 0},
            )
            count = client.messages.count_tokens(
                model="gemma3:270m", system="Answer briefly.", messages=question
            )
            return message, count.input_tokens

        with trio.fail_after(300):
            message, counted = await trio.to_thread.run_sync(use)
            answer = await native_chat(running, "gemma3:270m", "Answer briefly.", question, 24)
    assert message.content[0].text == answer["message"]["content"] != ""
    assert (
        message.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[answer["done_reason"]]
    )
    assert message.usage.input_tokens == answer["prompt_eval_count"] == counted
    assert message.usage.output_tokens == answer["eval_count"]


# ---- errors after the first byte -----------------------------------------------------------------


async def test_a_stream_that_fails_midway_ends_with_an_anthropic_error_event():
    """Once the status is sent an error can only travel in-band; the official client raises on
    an `error` event of this shape."""
    from appliance.api.errors import ANTHROPIC
    from appliance.api.streaming import SSEEvent, _framed, _sse_frame
    from appliance.errors import ServerBusy

    async def failing():  # type: ignore[no-untyped-def]
        yield SSEEvent("message_start", {"type": "message_start"})
        raise ServerBusy()

    frames = [frame async for frame in _framed(failing(), _sse_frame, ANTHROPIC, True)]
    assert frames[0].startswith(b"event: message_start\n")
    name, data = frames[-1].decode().rstrip("\n").split("\n")
    assert name == "event: error"
    body = json.loads(data.removeprefix("data: "))
    assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
