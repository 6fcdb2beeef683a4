"""OpenAI-compatible routes (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models).

Like Ollama's middleware (reference §3), each request is rewritten into the typed native request
(`appliance/api/bodies/inference.py`) and answered by the native path (`prepare_chat`,
`prepare_generate`, `embed_answer`); only the shapes of requests and answers are translated here.
Errors are raised; `appliance/api/errors.py` answers them in OpenAI's envelope for every path under
/v1/. There is no keep_alive: a runner keeps the session duration it already has.
"""

from __future__ import annotations

import base64
import json
import random
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import trio
from quart import Blueprint, Response

from appliance.api.bodies.fields import (
    BOOL,
    INT,
    NUMBER,
    STRING,
    Fields,
    canonical_base64,
    go_struct,
)
from appliance.api.bodies.inference import (
    ChatRequest,
    Decoding,
    EmbedRequest,
    GenerateRequest,
    Message,
    embed_inputs,
    tool_list,
    top_logprobs_value,
)
from appliance.api.context import services
from appliance.api.requests import decode_json, read_json_object
from appliance.api.routes.native import (
    NativeAnswer,
    embed_answer,
    prepare_chat,
    prepare_generate,
    whole_chat,
    whole_generate,
)
from appliance.api.streaming import json_response, sse_response
from appliance.errors import BadRequest, NotFound
from appliance.gocompat.jsontypes import go_type_name
from appliance.serving.generation import Timing
from appliance.store.names import parse_model_name

bp = Blueprint("openai", __name__)

FINGERPRINT = "fp_ollama"
IMAGE_TYPES = ("jpeg", "jpg", "png", "webp")
EFFORTS = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}


# ---- request pieces ------------------------------------------------------------------------------


async def read_body() -> dict[str, Any]:
    """The request object; Go's decoder answers an empty body with `EOF`."""
    body = await read_json_object(allow_empty=True)
    if not body:
        raise BadRequest("EOF")
    return body


def _stop(value: Any) -> list[str] | None:
    """`stop` as a string or a list of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str):
                raise BadRequest(f"invalid type for 'stop' field: {go_type_name(item)}")
        return list(value)
    return None


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _completion_id(prefix: str) -> str:
    return f"{prefix}-{random.randrange(999)}"


def _usage(final: dict[str, Any]) -> dict[str, Any]:
    """Ollama's usage (prompt_tokens counts the tokens evaluated), plus the prompt tokens served
    from the prompt cache as OpenAI's cached_tokens."""
    prompt = final.get("prompt_eval_count", 0)
    completion = final.get("eval_count", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": final.get("prompt_cached_count", 0)},
    }


def decode_image_url(url: str) -> str:
    """A base64 data URI's payload (checked), as native `images` carry it."""
    if url.startswith(("http://", "https://")):
        raise BadRequest(
            "image URLs are not currently supported, please use base64 encoded data instead"
        )
    if url.startswith("data:;base64,"):
        data = url.removeprefix("data:;base64,")
    else:
        for kind in IMAGE_TYPES:
            prefix = f"data:image/{kind};base64,"
            if url.startswith(prefix):
                data = url.removeprefix(prefix)
                break
        else:
            raise BadRequest("invalid image input")
    return canonical_base64(data, "invalid image input")


def _content_messages(role: str, content: list[Any]) -> list[Message]:
    """Each content part becomes its own native message with the same role."""
    out: list[Message] = []
    for part in content:
        if not isinstance(part, dict):
            raise BadRequest("invalid message format")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequest("invalid message format")
            out.append(Message(role, text))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise BadRequest("invalid message format")
            out.append(Message(role, images=(decode_image_url(url),)))
        elif kind == "input_audio":
            out.append(Message(role, images=(_audio(part.get("input_audio")),)))
        else:
            raise BadRequest("invalid message format")
    return out


def _audio(audio: Any) -> str:
    """An `input_audio` part's data (checked), carried as native `images` are."""
    data = audio.get("data") if isinstance(audio, dict) else None
    if not isinstance(data, str):
        raise BadRequest("invalid message format")
    return canonical_base64(data, "invalid audio input")


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    """OpenAI tool calls (arguments as a JSON string) as native ones (arguments as an object)."""
    if not isinstance(calls, list):
        raise BadRequest("invalid message format")
    out = []
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise BadRequest("invalid message format")
        arguments = function.get("arguments") or "{}"
        try:
            parsed = decode_json(arguments) if isinstance(arguments, str) else arguments
        except BadRequest:
            raise BadRequest("invalid tool call arguments") from None
        if not isinstance(parsed, dict):
            raise BadRequest("invalid tool call arguments")
        native: dict[str, Any] = {
            "function": {"index": index, "name": function.get("name", ""), "arguments": parsed}
        }
        if call.get("id"):
            native["id"] = call["id"]
        out.append(native)
    return out


def _chat_messages(raw: Any) -> tuple[Message, ...]:
    if raw is not None and not isinstance(raw, list):
        raise BadRequest(
            f"json: cannot unmarshal {go_type_name(raw)} into Go struct field "
            "ChatCompletionRequest.messages of type []openai.Message"
        )
    if not raw:
        raise BadRequest("[] is too short - 'messages'")
    messages: list[Message] = []
    call_names: dict[str, str] = {}
    for msg in raw:
        if not isinstance(msg, dict):
            raise BadRequest("invalid message format")
        role = msg.get("role") or ""
        if not isinstance(role, str):
            raise BadRequest("invalid message format")
        content = msg.get("content")
        if isinstance(content, str):
            messages.append(Message(role, content))
        elif isinstance(content, list):
            messages.extend(_content_messages(role, content))
        elif msg.get("tool_calls") is None:
            raise BadRequest(f"invalid message content type: {go_type_name(content)}")
        else:
            messages.append(Message(role))
        if messages:  # an empty content list leaves these on the message before
            messages[-1] = _annotated(messages[-1], msg, call_names)
    return tuple(messages)


def _annotated(last: Message, msg: dict[str, Any], call_names: dict[str, str]) -> Message:
    """`last` with `msg`'s reasoning, tool calls and (for a tool answer) the tool's name."""
    changes: dict[str, Any] = {}
    if isinstance(msg.get("reasoning"), str) and msg["reasoning"]:
        changes["thinking"] = msg["reasoning"]
    calls = msg.get("tool_calls")
    if calls is not None:
        changes["tool_calls"] = tuple(_tool_calls(calls))
        for call in calls:
            if isinstance(call, dict) and call.get("id"):
                call_names[str(call["id"])] = str(call["function"].get("name", ""))
    if msg.get("role") == "tool":
        name = msg.get("name") or call_names.get(str(msg.get("tool_call_id") or ""), "")
        if name:
            changes["tool_name"] = name
    return replace(last, **changes) if changes else last


def think_of(body: dict[str, Any]) -> Any:
    """`reasoning.effort` or `reasoning_effort` as native `think`; None leaves the model default."""
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        effort = reasoning.get("effort")
    else:
        effort = body.get("reasoning_effort")
    if effort is None or effort == "":
        return None
    if not isinstance(effort, str) or effort not in EFFORTS:
        raise BadRequest(
            f'invalid reasoning value: \'{effort}\' (must be "none", "minimal", "low", '
            '"medium", "high", "xhigh", "max" or "ultra")'
        )
    return EFFORTS[effort]


def _format(response_format: Any) -> Any:
    if not isinstance(response_format, dict):
        return None
    kind = str(response_format.get("type") or "").strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = response_format.get("json_schema")
        if isinstance(schema, dict) and schema.get("schema") is not None:
            return schema["schema"]
    return None


def _shared_options(body: dict[str, Any], fields: Fields) -> dict[str, Any]:
    """Options both request kinds map alike: stop, max_tokens, temperature (default 1.0), seed."""
    options: dict[str, Any] = {}
    stop = _stop(body.get("stop"))
    if stop is not None:
        options["stop"] = stop
    max_tokens = fields.get("max_tokens", INT)
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    options["temperature"] = fields.get("temperature", NUMBER, 1.0)
    seed = fields.get("seed", INT)
    if seed is not None:
        options["seed"] = seed
    return options


def _check_n(fields: Fields) -> None:
    """`n`: one choice is all a request gets (Ollama ignores `n`); asking for more is a 400 rather
    than a silent single answer."""
    n = fields.get("n", INT)
    if n is not None and n != 1:
        raise BadRequest(f"n = {n} is not supported: this server answers one choice per request")


def chosen_tools(tools: Any, choice: Any) -> Any:
    """The tools the model sees under `tool_choice`: `"none"` hides them all, a named function
    keeps only that one; `"auto"` and `"required"` (which a template cannot enforce) keep all."""
    if not tools or choice is None:
        return tools
    if choice == "none" or (isinstance(choice, dict) and choice.get("type") == "none"):
        return None
    name = None
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else choice.get("name")
    if isinstance(name, str) and name:
        kept = [t for t in tools if _tool_name(t) == name]
        if not kept:
            raise BadRequest(f"tool_choice names {name!r}, which is not among the tools")
        return kept
    return tools


def _tool_name(tool: Any) -> Any:
    if not isinstance(tool, dict):
        return None
    function = tool.get("function")
    return function.get("name") if isinstance(function, dict) else tool.get("name")


def chat_request(body: dict[str, Any]) -> ChatRequest:
    """The native chat request for an OpenAI chat completion request (Ollama's
    `FromChatRequest`). `max_completion_tokens` (what current SDKs send) wins over the older
    `max_tokens`; `user`, `logit_bias`, `parallel_tool_calls`, `store` and `metadata` do not change
    an answer here."""
    fields = Fields(body, go_struct("ChatCompletionRequest"))
    messages = _chat_messages(body.get("messages"))
    _check_n(fields)
    options = _shared_options(body, fields)
    max_completion = fields.get("max_completion_tokens", INT)
    if max_completion is not None:
        options["num_predict"] = max_completion
    for name in ("frequency_penalty", "presence_penalty"):
        value = fields.get(name, NUMBER)
        if value is not None:
            options[name] = value
    options["top_p"] = fields.get("top_p", NUMBER, 1.0)
    stream = fields.get("stream", BOOL, False)
    tools = tool_list(body.get("tools"), "ChatCompletionRequest", "[]api.Tool")
    tools = chosen_tools(tools, body.get("tool_choice"))
    decoding = Decoding(
        options=options,
        format=_format(body.get("response_format")),
        think=think_of(body),
        logprobs=fields.get("logprobs", BOOL, False),
        top_logprobs=top_logprobs_value(body.get("top_logprobs")),
    )
    model = fields.get("model", STRING, "").strip()
    return ChatRequest(model, messages, tuple(tools) if tools else None, stream, decoding)


def generate_request(body: dict[str, Any]) -> GenerateRequest:
    """The native generate request for an OpenAI completion request (Ollama's
    `FromCompleteRequest`)."""
    fields = Fields(body, go_struct("CompletionRequest"))
    prompt = fields.get("prompt", STRING, "")
    options = _shared_options(body, fields)
    options["frequency_penalty"] = fields.get("frequency_penalty", NUMBER) or 0.0
    options["presence_penalty"] = fields.get("presence_penalty", NUMBER) or 0.0
    options["top_p"] = fields.get("top_p", NUMBER) or 1.0
    suffix = fields.get("suffix", STRING, "")
    stream = fields.get("stream", BOOL, False)
    logprobs = fields.get("logprobs", INT)
    decoding = Decoding(
        options=options,
        logprobs=bool(logprobs),
        top_logprobs=top_logprobs_value(logprobs),
    )
    model = fields.get("model", STRING, "").strip()
    return GenerateRequest(model, prompt, suffix, stream=stream, decoding=decoding)


# ---- /v1/chat/completions ------------------------------------------------------------------------


@bp.route("/v1/chat/completions", methods=["POST"])
async def chat_completions() -> Response:
    body = await read_body()
    answer = await prepare_chat(chat_request(body), Timing())
    cid = _completion_id("chatcmpl")
    items = answer_items(answer)
    if answer.stream:
        return sse_response(_chat_events(items, cid, answer.model, _include_usage(body)))
    return json_response(_chat_completion(await whole_chat(items), cid, answer.model))


def answer_items(answer: NativeAnswer) -> AsyncIterator[dict[str, Any]]:
    """The native objects of an answer: the stream, or the one preload/unload object."""
    if answer.items is not None:
        return answer.items
    assert answer.single is not None
    return _one(answer.single)


async def _one(obj: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield obj


def _finish_reason(final: dict[str, Any], has_tool_calls: bool) -> str | None:
    reason = final.get("done_reason") or None
    if has_tool_calls and reason == "stop":
        return "tool_calls"
    return reason


def _openai_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, call in enumerate(calls):
        function = call.get("function", {})
        out.append(
            {
                "id": call.get("id") or f"call_{random.randrange(1 << 32):08x}",
                "index": function.get("index", i),
                "type": "function",
                "function": {
                    "name": function.get("name", ""),
                    "arguments": json.dumps(function.get("arguments", {}), separators=(",", ":")),
                },
            }
        )
    return out


def _chat_logprobs(obj: dict[str, Any]) -> dict[str, Any] | None:
    """`choices[].logprobs` of a chat answer (Ollama's ChoiceLogprobs), None when not asked."""
    entries = obj.get("logprobs")
    return {"content": entries} if entries else None


def _completion_logprobs(obj: dict[str, Any], text_start: int) -> dict[str, Any] | None:
    """`choices[].logprobs` of a completion: Ollama's `content` list, and the legacy OpenAI
    fields the openai SDK's `Logprobs` model reads (tokens, token_logprobs, top_logprobs as
    token -> logprob maps, text_offset counted from `text_start`)."""
    entries = obj.get("logprobs")
    if not entries:
        return None
    offsets = []
    for entry in entries:
        offsets.append(text_start)
        text_start += len(entry["token"])
    return {
        "content": entries,
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [
            {t["token"]: t["logprob"] for t in e.get("top_logprobs", [])} for e in entries
        ],
        "text_offset": offsets,
    }


def _chat_completion(final: dict[str, Any], cid: str, model: str) -> dict[str, Any]:
    native = final.get("message", {})
    message: dict[str, Any] = {"role": "assistant", "content": native.get("content", "")}
    if native.get("thinking"):
        message["reasoning"] = native["thinking"]
    calls = native.get("tool_calls") or []
    if calls:
        message["tool_calls"] = _openai_tool_calls(calls)
    choice = {"index": 0, "message": message, "finish_reason": _finish_reason(final, bool(calls))}
    logprobs = _chat_logprobs(final)
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [choice],
        "usage": _usage(final),
    }


async def _chat_events(
    items: AsyncIterator[dict[str, Any]], cid: str, model: str, include_usage: bool
) -> AsyncIterator[dict[str, Any] | str]:
    """Native chat objects as `chat.completion.chunk` events, counted as Ollama's tests count them:
    role in the first chunk only, a finish chunk with an empty delta, the usage chunk, `[DONE]`."""
    created: int | None = None
    first = True
    tool_calls_sent = False

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    try:
        async for obj in items:
            if created is None:
                created = int(time.time())
            message = obj.get("message", {})
            deltas: list[dict[str, Any]] = []
            if message.get("thinking"):
                deltas.append({"reasoning": message["thinking"]})
            if message.get("content") or (first and not deltas):
                deltas.append({"content": message.get("content", "")})
            if message.get("tool_calls"):
                deltas.append({"tool_calls": _openai_tool_calls(message["tool_calls"])})
                tool_calls_sent = True
            logprobs = _chat_logprobs(obj)
            for delta in deltas:
                if first:
                    delta = {"role": "assistant", **delta}
                    first = False
                event = chunk(delta)
                if logprobs is not None:  # with the first delta of the object that carried them
                    event["choices"][0]["logprobs"], logprobs = logprobs, None
                yield event
            if obj.get("done"):
                reason = obj.get("done_reason") or "stop"
                finish = chunk({}, "tool_calls" if tool_calls_sent else reason)
                if logprobs is not None:  # tokens whose text never showed (a stop sequence)
                    finish["choices"][0]["logprobs"] = logprobs
                yield finish
                if include_usage:
                    yield {**chunk({}), "choices": [], "usage": _usage(obj)}
                yield "[DONE]"
                return
    finally:
        await items.aclose()  # type: ignore[attr-defined]


# ---- /v1/completions -----------------------------------------------------------------------------


@bp.route("/v1/completions", methods=["POST"])
async def completions() -> Response:
    body = await read_body()
    answer = await prepare_generate(generate_request(body), Timing())
    cid = _completion_id("cmpl")
    items = answer_items(answer)
    if answer.stream:
        return sse_response(_completion_events(items, cid, answer.model, _include_usage(body)))
    final = await whole_generate(items)
    return json_response(
        {
            **_completion_chunk(final, cid, model=answer.model, created=int(time.time())),
            "usage": _usage(final),
        }
    )


def _completion_chunk(
    obj: dict[str, Any], cid: str, *, model: str, created: int, text_start: int = 0
) -> dict[str, Any]:
    reason = (obj.get("done_reason") or None) if obj.get("done") else None
    choice: dict[str, Any] = {"text": obj.get("response", ""), "index": 0, "finish_reason": reason}
    logprobs = _completion_logprobs(obj, text_start)
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [choice],
    }


async def _completion_events(
    items: AsyncIterator[dict[str, Any]], cid: str, model: str, include_usage: bool
) -> AsyncIterator[dict[str, Any] | str]:
    """One chunk per native object; with include_usage each carries zero usage, and the real
    usage follows in a chunk without choices."""
    created: int | None = None
    offset = 0  # characters of text sent so far, for the logprobs' text_offset
    try:
        async for obj in items:
            if created is None:
                created = int(time.time())
            chunk = _completion_chunk(obj, cid, model=model, created=created, text_start=offset)
            offset += len(obj.get("response", ""))
            if include_usage:
                chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            yield chunk
            if obj.get("done"):
                if include_usage:
                    yield {**chunk, "choices": [], "usage": _usage(obj)}
                yield "[DONE]"
                return
    finally:
        await items.aclose()  # type: ignore[attr-defined]


# ---- /v1/embeddings ------------------------------------------------------------------------------


@bp.route("/v1/embeddings", methods=["POST"])
async def embeddings() -> Response:
    body = await read_body()
    raw_input = body.get("input")
    if raw_input == "":
        raw_input = [""]
    if raw_input is None or raw_input == []:
        raise BadRequest("invalid input")
    encoding = body.get("encoding_format")
    if encoding not in (None, "") and (
        not isinstance(encoding, str) or encoding.lower() not in ("float", "base64")
    ):
        raise BadRequest(
            f"Invalid value for 'encoding_format' = {encoding}. "
            "Supported values: ['float', 'base64']."
        )
    as_base64 = isinstance(encoding, str) and encoding.lower() == "base64"
    fields = Fields(body, go_struct("EmbedRequest"))
    request = EmbedRequest(
        model=fields.get("model", STRING, "").strip(),
        inputs=embed_inputs(raw_input),
        dimensions=fields.get("dimensions", INT),
    )
    result = await embed_answer(request, Timing())
    count = result.get("prompt_eval_count", 0)
    data = [
        {
            "object": "embedding",
            "embedding": _base64_floats(vector) if as_base64 else vector,
            "index": i,
        }
        for i, vector in enumerate(result["embeddings"])
    ]
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": result["model"],
            "usage": {"prompt_tokens": count, "total_tokens": count},
        }
    )


def _base64_floats(vector: list[float]) -> str:
    """Little-endian float32 bytes, base64 encoded, as OpenAI's `encoding_format: base64`."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# ---- /v1/models ----------------------------------------------------------------------------------


def _model_entry(model: Any, model_id: str) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": model.modified_ns // 1_000_000_000,
        "owned_by": model.name.namespace,
    }


@bp.route("/v1/models", methods=["GET"])
async def list_models() -> Response:
    store = services().store
    models = await trio.to_thread.run_sync(store.list_models)
    data = [_model_entry(m, m.name.display_shortest()) for m in models]
    return json_response({"object": "list", "data": data})


@bp.route("/v1/models/<path:model>", methods=["GET"])
async def retrieve_model(model: str) -> Response:
    parse_model_name(model)
    store = services().store
    try:
        found = await trio.to_thread.run_sync(store.resolve, model)
    except NotFound:
        raise NotFound(f"model '{model}' not found") from None
    return json_response(_model_entry(found, model))
