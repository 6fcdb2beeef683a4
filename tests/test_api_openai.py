"""OpenAI-compatible endpoints (/v1/*) on the real server, with a tiny generated model.

Conventions: the `server` fixture runs the real appliance (hypercorn, scheduler, llama.cpp) on
127.0.0.1 port 0 inside the test's trio run, with the tiny model stored as `tiny`. Shapes, texts and
SSE frame counts are Ollama's (reference/ollama-api.md §3). The official `openai` client, a sync
client, runs in a worker thread. Every test is bounded by fail_after.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import openai
import pytest
import trio

LIMIT = 60
CHAT = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 5,
    "temperature": 0,
}


async def sse(response: Any) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON decoded except `[DONE]`; asserts the framing."""
    text = (await response.aread()).decode()
    events = text.split("\n\n")
    assert events[-1] == ""
    out = []
    for event in events[:-1]:
        assert event.startswith("data: "), event
        payload = event.removeprefix("data: ")
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


async def post(server: Any, path: str, body: dict[str, Any]) -> Any:
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            return await client.post(path, json=body)


async def stream_events(server: Any, path: str, body: dict[str, Any]) -> tuple[Any, list[Any]]:
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            async with client.stream("POST", path, json=body) as r:
                return r, await sse(r)


# ---- chat -----------------------------------------------------------------------------------------


async def test_chat_completion_shape_and_usage(server):
    r = await post(server, "/v1/chat/completions", CHAT)
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and 0 <= int(body["id"].split("-")[1]) < 999
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["system_fingerprint"] == "fp_ollama" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    usage = body["usage"]
    assert usage["completion_tokens"] == 5 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5


async def test_chat_stream_frames_are_counted_like_ollama(server):
    r, events = await stream_events(server, "/v1/chat/completions", {**CHAT, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    # role+content, 4 more content chunks (one per token), then the finish chunk
    assert len(chunks) == 6
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in chunks[1:-1])
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length"}
    assert len({(c["id"], c["created"]) for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" not in c for c in chunks)


async def test_chat_stream_text_matches_the_whole_answer(server):
    whole = (await post(server, "/v1/chat/completions", CHAT)).json()
    _, events = await stream_events(server, "/v1/chat/completions", {**CHAT, "stream": True})
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-1])
    assert streamed == whole["choices"][0]["message"]["content"]


async def test_chat_stream_include_usage_adds_a_chunk_without_choices(server):
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    _, events = await stream_events(server, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 5
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert len(events) == 8
    assert all("usage" not in c for c in events[:-2])


async def test_chat_stop_string_and_list_both_stop(server):
    free = (await post(server, "/v1/chat/completions", {**CHAT, "max_tokens": 20})).json()
    text = free["choices"][0]["message"]["content"]
    assert len(text) > 4
    stop = text[2:4]
    for value in (stop, [stop, "zzzz-never"]):
        cut = (
            await post(server, "/v1/chat/completions", {**CHAT, "max_tokens": 20, "stop": value})
        ).json()
        assert cut["choices"][0]["finish_reason"] == "stop"
        assert stop not in cut["choices"][0]["message"]["content"]


async def test_chat_response_format_json_object_gives_json(server):
    body = {
        **CHAT,
        "max_tokens": 40,
        "temperature": 0.5,
        "seed": 1,
        "response_format": {"type": "json_object"},
    }
    answer = (await post(server, "/v1/chat/completions", body)).json()
    text = answer["choices"][0]["message"]["content"]
    assert text.lstrip().startswith(("{", "["))


async def test_chat_seed_makes_sampling_repeatable(server):
    body = {**CHAT, "max_tokens": 12, "temperature": 1.0, "seed": 42}
    a = (await post(server, "/v1/chat/completions", body)).json()
    b = (await post(server, "/v1/chat/completions", body)).json()
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


async def test_chat_content_parts_are_accepted(server):
    body = {
        **CHAT,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi"},
                    {"type": "text", "text": "there"},
                ],  # an image part to this model without vision is a 400 (test_api_lifecycle)
            }
        ],
    }
    r = await post(server, "/v1/chat/completions", body)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5


def _error(r: Any) -> tuple[int, str, str]:
    err = r.json()["error"]
    assert err["param"] is None and err["code"] is None
    assert r.headers["content-type"] == "application/json"
    return r.status_code, err["type"], err["message"]


@pytest.mark.parametrize(
    "body, status, kind, message",
    [
        (
            {"model": "tiny", "messages": []},
            400,
            "invalid_request_error",
            "[] is too short - 'messages'",
        ),
        ({"model": "tiny"}, 400, "invalid_request_error", "[] is too short - 'messages'"),
        (
            {"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
            404,
            "not_found_error",
            "model 'nope' not found",
        ),
        (
            {
                "model": "tiny",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
                        ],
                    }
                ],
            },
            400,
            "invalid_request_error",
            "image URLs are not currently supported, please use base64 encoded data instead",
        ),
        (
            {
                "model": "tiny",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": "data:image/gif;base64,R0lGOD=="}
                        ],
                    }
                ],
            },
            400,
            "invalid_request_error",
            "invalid image input",
        ),
        (
            {
                "model": "tiny",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": "data:image/png;base64,***"}
                        ],
                    }
                ],
            },
            400,
            "invalid_request_error",
            "invalid image input",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": None}]},
            400,
            "invalid_request_error",
            "invalid message content type: <nil>",
        ),
        (
            {**CHAT, "stop": ["a", 1]},
            400,
            "invalid_request_error",
            "invalid type for 'stop' field: float64",
        ),
        (
            {
                **CHAT,
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{bad"},
                            }
                        ],
                    }
                ],
            },
            400,
            "invalid_request_error",
            "invalid tool call arguments",
        ),
    ],
)
async def test_chat_errors_in_openai_shape(server, body, status, kind, message):
    r = await post(server, "/v1/chat/completions", body)
    assert _error(r) == (status, kind, message)


async def test_chat_reasoning_effort_none_is_accepted_and_unknown_is_400(server):
    ok = await post(server, "/v1/chat/completions", {**CHAT, "reasoning_effort": "none"})
    bad = await post(server, "/v1/chat/completions", {**CHAT, "reasoning_effort": "lots"})
    assert ok.status_code == 200
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


async def test_chat_defaults_temperature_and_top_p_to_one():
    from appliance.api.routes.openai import chat_request

    native = chat_request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 3,
            "seed": 7,
            "frequency_penalty": 0.5,
            "presence_penalty": 0.25,
            "stop": "x",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"schema": {"type": "object"}},
            },
        }
    ).as_json()
    assert native["options"] == {
        "stop": ["x"],
        "num_predict": 3,
        "temperature": 1.0,
        "seed": 7,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
        "top_p": 1.0,
    }
    assert native["format"] == {"type": "object"} and native["stream"] is False
    assert "keep_alive" not in native


async def test_chat_tool_message_takes_its_name_from_the_earlier_call():
    from appliance.api.routes.openai import chat_request

    native = chat_request(
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "cold"},
                {"role": "assistant", "content": "ok", "reasoning": "hmm"},
            ],
        }
    ).as_json()
    first, tool, last = native["messages"]
    assert first["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert tool == {"role": "tool", "content": "cold", "tool_name": "weather"}
    assert last["thinking"] == "hmm"


# ---- completions ----------------------------------------------------------------------------------

COMPLETE = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0}


async def test_completion_shape_and_usage(server):
    body = (await post(server, "/v1/completions", COMPLETE)).json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["system_fingerprint"] == "fp_ollama" and body["model"] == "tiny"
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert isinstance(choice["text"], str)
    assert body["usage"]["completion_tokens"] == 4


async def test_completion_stream_puts_zero_usage_on_every_chunk(server):
    body = {**COMPLETE, "stream": True, "stream_options": {"include_usage": True}}
    _, events = await stream_events(server, "/v1/completions", body)
    assert events[-1] == "[DONE]"
    chunks, usage_chunk = events[:-2], events[-2]
    assert len(chunks) == 5  # 4 tokens, then the done chunk with empty text
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert all(c["usage"] == zero for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 4 + ["length"]
    assert chunks[-1]["choices"][0]["text"] == ""
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 4


async def test_completion_stream_without_usage_has_no_usage_field(server):
    _, events = await stream_events(server, "/v1/completions", {**COMPLETE, "stream": True})
    assert events[-1] == "[DONE]" and len(events) == 6
    assert all("usage" not in c for c in events[:-1])


async def test_completion_empty_prompt_preloads(server):
    body = (await post(server, "/v1/completions", {"model": "tiny", "prompt": ""})).json()
    assert body["choices"][0] == {"text": "", "index": 0, "finish_reason": "load"}


@pytest.mark.parametrize(
    "body, message",
    [
        (
            {"model": "tiny", "prompt": ["a"]},
            "json: cannot unmarshal array into Go struct field CompletionRequest.prompt"
            " of type string",
        ),
        ({**COMPLETE, "stop": ["a", True]}, "invalid type for 'stop' field: bool"),
    ],
)
async def test_completion_request_errors(server, body, message):
    r = await post(server, "/v1/completions", body)
    assert _error(r) == (400, "invalid_request_error", message)


def test_completion_top_p_zero_means_one_and_penalties_are_always_sent():
    from appliance.api.routes.openai import generate_request

    native = generate_request({"model": "m", "prompt": "p", "top_p": 0}).as_json()
    assert native["options"] == {
        "temperature": 1.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "top_p": 1.0,
    }


# ---- embeddings -----------------------------------------------------------------------------------


async def test_embeddings_float_and_base64_agree(server):
    floats = (await post(server, "/v1/embeddings", {"model": "tiny", "input": ["a b", "c"]})).json()
    b64 = (
        await post(
            server,
            "/v1/embeddings",
            {"model": "tiny", "input": ["a b", "c"], "encoding_format": "BASE64"},
        )
    ).json()
    assert floats["object"] == "list" and floats["model"] == "tiny"
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in floats["data"])
    vector = floats["data"][0]["embedding"]
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-3
    raw = base64.b64decode(b64["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == len(vector)
    assert all(abs(a - b) < 1e-6 for a, b in zip(decoded, vector))
    usage = floats["usage"]
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"]


async def test_embeddings_empty_string_is_one_input(server):
    body = (await post(server, "/v1/embeddings", {"model": "tiny", "input": ""})).json()
    assert len(body["data"]) == 1


@pytest.mark.parametrize(
    "body, message",
    [
        ({"model": "tiny"}, "invalid input"),
        ({"model": "tiny", "input": []}, "invalid input"),
        (
            {"model": "tiny", "input": "a", "encoding_format": "int8"},
            "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64'].",
        ),
    ],
)
async def test_embeddings_request_errors(server, body, message):
    r = await post(server, "/v1/embeddings", body)
    assert _error(r) == (400, "invalid_request_error", message)


# ---- models ---------------------------------------------------------------------------------------


async def test_models_list_and_retrieve(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            listed = (await client.get("/v1/models")).json()
            tags = (await client.get("/api/tags")).json()["models"]
            one = await client.get("/v1/models/tiny")
            missing = await client.get("/v1/models/nope")
    assert listed["object"] == "list"
    (entry,) = listed["data"]
    assert entry["id"] == tags[0]["name"] == "tiny:latest"
    assert entry["object"] == "model" and entry["owned_by"] == "library"
    assert isinstance(entry["created"], int) and entry["created"] > 1_600_000_000
    assert one.json() == {
        "id": "tiny",
        "object": "model",
        "created": entry["created"],
        "owned_by": "library",
    }
    assert _error(missing) == (404, "not_found_error", "model 'nope' not found")


async def test_models_list_is_an_empty_array_without_models(tmp_path):
    from helpers import running_appliance

    with trio.fail_after(LIMIT):
        async with running_appliance(tmp_path / "models") as running:
            async with running.client() as client:
                body = (await client.get("/v1/models")).json()
    assert body == {"object": "list", "data": []}


# ---- the official client --------------------------------------------------------------------------


async def test_official_openai_client_chats_completes_embeds_and_lists(server):
    def use_client() -> dict[str, Any]:
        client = openai.OpenAI(
            base_url=server.url + "/v1", api_key="ignored", max_retries=0, timeout=LIMIT
        )
        with client:
            chat = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
            streamed = list(
                client.chat.completions.create(
                    model="tiny",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=5,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            completion = client.completions.create(model="tiny", prompt="hello", max_tokens=3)
            embedding = client.embeddings.create(model="tiny", input=["a", "b"])
            models = list(client.models.list())
        return {
            "chat": chat,
            "streamed": streamed,
            "completion": completion,
            "embedding": embedding,
            "models": models,
        }

    with trio.fail_after(LIMIT):
        got = await trio.to_thread.run_sync(use_client)
    assert got["chat"].choices[0].finish_reason == "length"
    assert got["chat"].usage.completion_tokens == 5
    streamed = got["streamed"]
    assert streamed[0].choices[0].delta.role == "assistant"
    assert streamed[-1].choices == [] and streamed[-1].usage.completion_tokens == 5
    assert got["completion"].choices[0].finish_reason == "length"
    assert len(got["embedding"].data) == 2 and len(got["embedding"].data[0].embedding) > 0
    assert [m.id for m in got["models"]] == ["tiny:latest"]
    assert got["models"][0].owned_by == "library"
