"""OpenAI's Responses API (/v1/responses), stateless as Ollama's, on the real server.

Conventions: conftest's `app`, a real appliance on 127.0.0.1 port 0 (hypercorn, scheduler,
llama.cpp) with the tiny generated model stored as `tiny`, and as `tools` and `thinker` under
toolkit's Go templates (prompt cache off, see `app_settings`). The tiny
model cannot be asked for a function call or a thought, so those tests steer it with
`text.format` (a JSON schema of constants): with a template whose tool-call prefix is bare JSON the
object is a function call; with a template that opens `<think>`, a constant holding `</think>`
splits it into reasoning and text. The official `openai` client (a sync client) runs in a worker
thread. Event names, order and fields are Ollama's (openai/responses.go). Every test is bounded by
fail_after.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import openai
import pytest
import trio
from helpers import native_chat, running_appliance
from toolkit import CALL_FORMAT, THOUGHT_FORMAT, WEATHER_PARAMETERS, sse_frames

LIMIT = 60
BODY = {"model": "tiny", "input": "hi", "max_output_tokens": 5, "temperature": 0}
RESPONSE_ID = re.compile(r"^resp_\d+$")
CALL_ID = re.compile(r"^call_[a-z0-9]{8}$")

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": WEATHER_PARAMETERS,
    "strict": False,
}


def steer(schema: dict[str, Any]) -> dict[str, Any]:
    return {"format": {"type": "json_schema", "name": "steer", "schema": schema}}


TOOL_BODY = {
    "model": "tools",
    "input": "weather in Paris?",
    "tools": [WEATHER_TOOL],
    "max_output_tokens": 120,
    "temperature": 0,
    "text": steer(CALL_FORMAT),
}


@pytest.fixture
def app_settings() -> dict[str, Any]:
    """Usage is compared across requests: like Ollama's it counts the prompt tokens evaluated,
    which the prompt cache reduces on a repeat; these tests pin the translation, cache off."""
    return {"prompt_cache": False}


def client_for(app: Any) -> Any:
    return openai.OpenAI(base_url=app.url + "/v1", api_key="ignored", max_retries=0, timeout=LIMIT)


async def in_thread(fn: Any) -> Any:
    with trio.fail_after(LIMIT):
        return await trio.to_thread.run_sync(fn)


async def post(app: Any, body: Any) -> Any:
    with trio.fail_after(LIMIT):
        async with app.client() as client:
            return await client.post("/v1/responses", json=body)


async def events(app: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The data of each event of a streamed response; asserts `event:` names its data's type."""
    frames = await sse_frames(app, "/v1/responses", body)
    for name, data in frames:
        assert name == data["type"]
    return [data for _, data in frames]


# ---- text ----------------------------------------------------------------------------------------


async def test_official_client_gets_a_response_with_output_text_and_usage(app):
    response = await in_thread(lambda: client_for(app).responses.create(**BODY))
    assert RESPONSE_ID.match(response.id) and response.object == "response"
    assert response.status == "completed" and response.model == "tiny"
    (item,) = response.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert item.content[0].type == "output_text" and response.output_text
    usage = response.usage
    assert usage.output_tokens == 5 and usage.input_tokens > 0
    assert usage.total_tokens == usage.input_tokens + 5
    assert response.max_output_tokens == 5 and response.store is False


async def test_stream_sends_typed_events_in_order_with_sequence_numbers(app):
    got = await events(app, BODY)
    names = [e["type"] for e in got]
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    tail = [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert names[-4:] == tail
    assert set(names[4:-4]) == {"response.output_text.delta"}
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    assert len({e["response"]["id"] for e in got if "response" in e}) == 1
    text = "".join(e["delta"] for e in got if e["type"] == "response.output_text.delta")
    assert got[-4]["text"] == text
    completed = got[-1]["response"]
    assert completed["status"] == "completed" and completed["usage"]["output_tokens"] == 5
    assert completed["output"][0]["content"][0]["text"] == text


async def test_official_client_stream_matches_the_whole_response(app):
    def use() -> tuple[Any, Any, list[str]]:
        client = client_for(app)
        whole = client.responses.create(**BODY)
        with client.responses.stream(**BODY) as stream:
            final = stream.get_final_response()
        kinds = [event.type for event in client.responses.create(**BODY, stream=True)]
        return whole, final, kinds

    whole, final, kinds = await in_thread(use)
    assert final.output_text == whole.output_text
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"


async def test_input_as_text_shorthand_message_or_typed_parts_is_one_prompt(app):
    forms = [
        "hi",
        [{"role": "user", "content": "hi"}],
        [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
    ]
    counts = []
    for form in forms:
        r = await post(app, {**BODY, "input": form})
        assert r.status_code == 200, r.text
        counts.append(r.json()["usage"]["input_tokens"])
    assert len(set(counts)) == 1


async def test_instructions_and_history_reach_the_prompt(app):
    plain = (await post(app, BODY)).json()
    instructed = (await post(app, {**BODY, "instructions": "Answer in French."})).json()
    assert instructed["usage"]["input_tokens"] > plain["usage"]["input_tokens"]
    assert instructed["instructions"] == "Answer in French."
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "hello there"}]},
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    longer = (await post(app, {**BODY, "input": history})).json()
    assert longer["usage"]["input_tokens"] > plain["usage"]["input_tokens"]


async def test_max_output_tokens_is_num_predict(app):
    r = await post(app, {**BODY, "max_output_tokens": 2})
    assert r.json()["usage"]["output_tokens"] == 2


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


async def test_an_input_image_is_answered_as_the_native_path_answers_it(app):
    parts = [
        {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "auto"},
        {"type": "input_text", "text": "what is this?"},
    ]
    r = await post(app, {**BODY, "input": [{"role": "user", "content": parts}]})
    with trio.fail_after(LIMIT):
        async with app.client() as client:
            native = await client.post(
                "/api/chat",
                json={
                    "model": "tiny",
                    "stream": False,
                    "options": {"num_predict": 5},
                    "messages": [{"role": "user", "content": "what is this?", "images": [PNG]}],
                },
            )
    assert r.status_code == native.status_code
    if native.status_code != 200:
        assert r.json()["error"]["message"] == native.json()["error"]


async def test_an_image_url_that_is_not_a_data_uri_is_400(app):
    parts = [{"type": "input_image", "image_url": "https://example.com/cat.png"}]
    r = await post(app, {**BODY, "input": [{"role": "user", "content": parts}]})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("image URLs are not currently supported")


# ---- function tools ------------------------------------------------------------------------------


async def test_a_tool_call_is_a_function_call_item(app):
    response = await in_thread(lambda: client_for(app).responses.create(**TOOL_BODY))
    (item,) = response.output
    assert item.type == "function_call" and item.name == "get_weather"
    assert CALL_ID.match(item.call_id) and item.status == "completed"
    assert json.loads(item.arguments) == {"city": "Paris"}
    assert response.tools[0].name == "get_weather"


async def test_a_streamed_tool_call_sends_function_call_events(app):
    got = await events(app, TOOL_BODY)
    names = [e["type"] for e in got]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert got[2]["item"]["type"] == "function_call" and got[2]["item"]["arguments"] == ""
    assert json.loads(got[4]["arguments"]) == {"city": "Paris"}
    (item,) = got[-1]["response"]["output"]
    assert item["name"] == "get_weather" and json.loads(item["arguments"]) == {"city": "Paris"}

    def final() -> Any:
        with client_for(app).responses.stream(**TOOL_BODY) as stream:
            return stream.get_final_response()

    (call,) = (await in_thread(final)).output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}


async def test_function_call_and_its_output_go_back_into_the_prompt(app):
    first = (await post(app, TOOL_BODY)).json()
    (call,) = first["output"]

    def with_result(result: str) -> dict[str, Any]:
        items = [
            {"role": "user", "content": "weather in Paris?"},
            call,
            {"type": "function_call_output", "call_id": call["call_id"], "output": result},
        ]
        return {**TOOL_BODY, "input": items}

    short = await post(app, with_result(""))
    long = await post(app, with_result("sunny, 25 degrees, light wind"))
    assert short.status_code == long.status_code == 200
    assert long.json()["usage"]["input_tokens"] > short.json()["usage"]["input_tokens"]


async def test_tool_choice_none_hides_the_tools(app):
    r = await post(app, {**TOOL_BODY, "tool_choice": "none"})
    (item,) = r.json()["output"]
    assert item["type"] == "message"
    assert json.loads(item["content"][0]["text"])["name"] == "get_weather"


# ---- reasoning -----------------------------------------------------------------------------------


async def test_thinking_comes_back_as_a_reasoning_item_before_the_message(app):
    body = {**BODY, "model": "thinker", "max_output_tokens": 120, "text": steer(THOUGHT_FORMAT)}
    reasoning, message = (await post(app, body)).json()["output"]
    assert reasoning["type"] == "reasoning"
    assert reasoning["summary"][0]["text"].endswith('"plan')
    assert message["content"][0]["text"].startswith('done"')
    got = await events(app, body)
    names = [e["type"] for e in got]
    assert names[2] == "response.output_item.added" and got[2]["item"]["type"] == "reasoning"
    assert "response.reasoning_summary_text.delta" in names
    assert names.index("response.reasoning_summary_text.done") < names.index(
        "response.output_text.delta"
    )

    def final() -> Any:
        with client_for(app).responses.stream(**body) as stream:
            return stream.get_final_response()

    response = await in_thread(final)
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output_text.startswith('done"')


async def test_reasoning_effort_none_turns_thinking_off(app):
    body = {
        **BODY,
        "model": "thinker",
        "max_output_tokens": 120,
        "text": steer(THOUGHT_FORMAT),
        "reasoning": {"effort": "none"},
    }
    (message,) = (await post(app, body)).json()["output"]
    assert json.loads(message["content"][0]["text"]) == {"a": "plan</think>done"}


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, message",
    [
        (
            {**BODY, "previous_response_id": "resp_1"},
            400,
            "previous_response_id is not supported",
        ),
        ({**BODY, "background": True}, 400, "background is not supported"),
        ({**BODY, "input": 5}, 400, "input must be a string or array"),
        ({**BODY, "input": [{"content": "hi"}]}, 400, "input[0]: input item missing"),
        ({**BODY, "input": [{"type": "nope"}]}, 400, 'input[0]: unknown input item type: "nope"'),
        (
            {**BODY, "input": [{"role": "user", "content": [{"type": "input_file"}]}]},
            400,
            "file inputs are not currently supported",
        ),
        ({**BODY, "reasoning": {"effort": "lots"}}, 400, "invalid reasoning value"),
        ({**BODY, "model": "nope"}, 404, "model 'nope' not found"),
    ],
)
async def test_errors_come_in_openais_envelope(app, body, status, message):
    r = await post(app, body)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["message"].startswith(message), error
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


async def test_official_client_raises_not_found_for_an_unknown_model(app):
    def use() -> type:
        try:
            client_for(app).responses.create(**{**BODY, "model": "nope"})
        except openai.APIStatusError as exc:
            return type(exc)
        return type(None)

    assert await in_thread(use) is openai.NotFoundError


# ---- the reference model -------------------------------------------------------------------------


@pytest.mark.reference
@pytest.mark.slow
async def test_reference_model_answers_through_the_official_client_as_native_chat_does(tmp_path):
    """gemma3:270m is a base model (it continues text rather than answering), so the check is that
    the client gets the native path's real answer and its token counts."""
    question = [{"role": "user", "content": "What is the capital of France?"}]
    async with running_appliance(
        tmp_path / "models", import_reference=True, prompt_cache=False
    ) as running:

        def use() -> Any:
            client = openai.OpenAI(
                base_url=running.url + "/v1", api_key="ignored", max_retries=0, timeout=300
            )
            with client.responses.stream(
                model="gemma3:270m",
                instructions="Answer briefly.",
                input="What is the capital of France?",
                max_output_tokens=24,
                temperature=0,
            ) as stream:
                return stream.get_final_response()

        with trio.fail_after(300):
            response = await trio.to_thread.run_sync(use)
            answer = await native_chat(running, "gemma3:270m", "Answer briefly.", question, 24)
    assert response.output_text == answer["message"]["content"] != ""
    assert response.usage.input_tokens == answer["prompt_eval_count"]
    assert response.usage.output_tokens == answer["eval_count"]
