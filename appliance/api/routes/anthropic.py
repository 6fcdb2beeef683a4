"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens), as Ollama's
`anthropic/anthropic.go` and `middleware/anthropic.go`.

This is what Claude Code and other Anthropic clients call through `ANTHROPIC_BASE_URL`. Each request
is rewritten into a typed native chat request and answered by the native path (`prepare_chat`,
`whole_chat`; `count_tokens` renders the prompt without generating); only shapes are translated
here. As in Ollama, a `thinking` request on a model that cannot think is dropped rather than
refused (`relax_thinking`), since these clients ask for it by default. Errors are raised;
`appliance/api/errors.py` answers them in Anthropic's shape for these paths
(`{"type":"error","error":{"type","message"}}`), and a stream that fails after its first byte ends
with an `error` event of that shape.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from quart import Blueprint, Response

from appliance.api.bodies.fields import BOOL, INT, NUMBER, Fields, canonical_base64, must_be
from appliance.api.bodies.inference import ChatRequest, Decoding, Message
from appliance.api.errors import ANTHROPIC
from appliance.api.routes.native import prepare_chat, whole_chat
from appliance.api.routes.openai import answer_items, read_body
from appliance.api.streaming import SSEEvent, json_response, sse_response, translated_events
from appliance.errors import BadRequest
from appliance.serving.generation import Timing

bp = Blueprint("anthropic", __name__)


def _new_id(prefix: str) -> str:
    """Ollama's `generateID`: the prefix and 24 hex digits."""
    return f"{prefix}_{secrets.token_hex(12)}"


# ---- request -------------------------------------------------------------------------------------


def _system(raw: Any) -> str:
    if raw is None or isinstance(raw, str):
        return raw or ""
    if not isinstance(raw, list):
        raise BadRequest("system must be a string or an array of text blocks")
    return "".join(
        b["text"]
        for b in raw
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    )


def _image(source: Any) -> str:
    """A base64 image source's payload (checked), as native `images` carry it."""
    if not isinstance(source, dict):
        raise BadRequest("invalid image source")
    if source.get("type") != "base64":
        raise BadRequest(
            f"invalid image source type: {source.get('type')}. Only base64 images are supported."
        )
    return canonical_base64(source.get("data") or "", "invalid base64 image data", with_reason=True)


def _tool_result(content: Any) -> tuple[str, list[str]]:
    """A tool_result's text and images: a string, or text and image blocks."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise BadRequest("tool_result content must be a string or an array of blocks")
    text: list[str] = []
    images: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif block.get("type") == "image":
            images.append(_image(block.get("source")))
    return "".join(text), images


@dataclass
class _Turn:
    """What the content blocks of one Anthropic message carry."""

    text: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    thinking: str = ""
    results: list[Message] = field(default_factory=list)


def _message(raw: Any, index: int, call_names: dict[str, str]) -> list[Message]:
    """One Anthropic message as native messages (Ollama's `convertMessage`): tool results become
    `tool` messages (before the user's own text), the rest one message with the role's text,
    images, tool calls and thinking."""
    if not isinstance(raw, dict):
        raise BadRequest(f"messages[{index}] must be an object")
    role = raw.get("role")
    if not isinstance(role, str) or not role:
        raise BadRequest(f"messages[{index}]: role is required")
    role = role.lower()
    content = raw.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadRequest(f"messages[{index}]: content must be a string or an array of blocks")
    turn = _Turn()
    for block in content:
        _read_block(turn, block, index, call_names)
    out = list(turn.results) if role == "user" else []
    if turn.text or turn.images or turn.calls or turn.thinking:
        text = "".join(turn.text)
        images, calls = tuple(turn.images), tuple(turn.calls)
        out.append(Message(role, text, images, thinking=turn.thinking, tool_calls=calls))
    if role != "user":
        out.extend(turn.results)
    return out


def _read_block(turn: _Turn, block: Any, index: int, call_names: dict[str, str]) -> None:
    """One content block into `turn`. Redacted thinking, documents, search results and unknown
    blocks carry nothing a local model can read: skipped, as Ollama skips them."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise BadRequest(f"messages[{index}]: a text block needs text")
        turn.text.append(block["text"])
    elif kind == "image":
        turn.images.append(_image(block.get("source")))
    elif kind in ("tool_use", "server_tool_use"):
        turn.calls.append(_tool_call(block, len(turn.calls), call_names))
    elif kind == "tool_result":
        turn.results.append(_tool_message(block, call_names))
    elif kind == "thinking":
        if isinstance(block.get("thinking"), str):
            turn.thinking = block["thinking"]


def _tool_call(block: dict[str, Any], index: int, call_names: dict[str, str]) -> dict[str, Any]:
    """A tool_use block as a native tool call; its name is remembered for the result."""
    if not block.get("id"):
        raise BadRequest("tool_use block missing required 'id' field")
    if not block.get("name"):
        raise BadRequest("tool_use block missing required 'name' field")
    arguments = block.get("input") or {}
    if not isinstance(arguments, dict):
        raise BadRequest("tool_use input must be an object")
    call_names[str(block["id"])] = str(block["name"])
    function = {"index": index, "name": block["name"], "arguments": arguments}
    return {"id": str(block["id"]), "function": function}


def _tool_message(block: dict[str, Any], call_names: dict[str, str]) -> Message:
    """A tool_result block as a native `tool` message, named after the call it answers."""
    text, images = _tool_result(block.get("content"))
    call_id = str(block.get("tool_use_id") or "")
    name = call_names.get(call_id, "")
    return Message("tool", text, tuple(images), tool_call_id=call_id, tool_name=name)


def _tools(raw: Any, choice: Any) -> list[dict[str, Any]] | None:
    """Client tools in the native (function) shape. Server tools Anthropic runs itself (web search,
    code execution: a `type` and no `input_schema`) have nothing to run them here and are left
    out. `tool_choice` `none` hides the tools; `tool` keeps only the named one."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequest("tools must be an array")
    tools = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools[{i}] must be an object")
        kind = tool.get("type")
        if kind not in (None, "custom") and "input_schema" not in tool:
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools[{i}]: name is required")
        schema = tool.get("input_schema") or {"type": "object", "properties": {}}
        if not isinstance(schema, dict):
            raise BadRequest(f'invalid input_schema for tool "{name}": not an object')
        function = {
            "name": name,
            "description": tool.get("description") or "",
            "parameters": schema,
        }
        tools.append({"type": "function", "function": function})
    if isinstance(choice, dict):
        if choice.get("type") == "none":
            return None
        if choice.get("type") == "tool":
            wanted = choice.get("name")
            kept = [t for t in tools if t["function"]["name"] == wanted]
            if not kept:
                raise BadRequest(f"tool_choice names {wanted!r}, which is not among the tools")
            return kept
    return tools


def _think(body: dict[str, Any]) -> Any:
    """`thinking: {type: enabled|disabled}` as native `think`; else `output_config.effort`."""
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        if thinking.get("type") == "enabled":
            return True
        if thinking.get("type") == "disabled":
            return False
    config = body.get("output_config")
    if isinstance(config, dict) and isinstance(config.get("effort"), str):
        effort = config["effort"].strip().lower()
        effort = "high" if effort == "xhigh" else effort
        if effort in ("low", "medium", "high", "max"):
            return effort
    return None


def native_messages(body: dict[str, Any]) -> tuple[Message, ...]:
    raw = body.get("messages")
    if raw is not None and not isinstance(raw, list):
        raise BadRequest("messages must be an array")
    messages: list[Message] = []
    system = _system(body.get("system"))
    if system:
        messages.append(Message("system", system))
    call_names: dict[str, str] = {}
    for i, message in enumerate(raw or []):
        messages.extend(_message(message, i, call_names))
    return tuple(messages)


def _check_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required")
    return model.strip()


def _check_messages(body: dict[str, Any]) -> None:
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise BadRequest("messages is required")


def _tools_of(body: dict[str, Any]) -> tuple[dict[str, Any], ...] | None:
    tools = _tools(body.get("tools"), body.get("tool_choice"))
    return tuple(tools) if tools else None


def chat_request(body: dict[str, Any]) -> ChatRequest:
    """The native chat request for a Messages request (Ollama's `FromMessagesRequest`), after
    the checks Ollama's middleware makes first."""
    model = _check_model(body)
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise BadRequest("max_tokens is required and must be positive")
    _check_messages(body)
    fields = Fields(body, must_be)
    options: dict[str, Any] = {"num_predict": max_tokens}
    for name, kind in (("temperature", NUMBER), ("top_p", NUMBER), ("top_k", INT)):
        value = fields.get(name, kind)
        if value is not None:
            options[name] = value
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop_sequences must be an array of strings")
        if stop:
            options["stop"] = stop
    stream = fields.get("stream", BOOL, False)
    messages = native_messages(body)
    tools = _tools_of(body)
    decoding = Decoding(options=options, think=_think(body), format=_output_format(body))
    return ChatRequest(model, messages, tools, stream, decoding)


def _output_format(body: dict[str, Any]) -> Any:
    """Structured outputs (`output_config.format` or `output_format`, a JSON schema) as native
    `format`."""
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if fmt is None:
        fmt = body.get("output_format")  # the structured-outputs beta's spelling
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise BadRequest('output_config.format must be {"type": "json_schema", "schema": {...}}')
    if not isinstance(fmt.get("schema"), dict):
        raise BadRequest("output_config.format.schema must be an object")
    return fmt["schema"]


# ---- response ------------------------------------------------------------------------------------


def stop_reason(done_reason: str | None, has_tool_calls: bool) -> str | None:
    """Ollama's `mapStopReason`: a tool call ends the turn as `tool_use`; `length` is the
    `max_tokens` limit; a plain stop (end of turn or a stop sequence) is `end_turn`."""
    if has_tool_calls:
        return "tool_use"
    if done_reason == "stop":
        return "end_turn"
    if done_reason == "length":
        return "max_tokens"
    return "stop_sequence" if done_reason else None


def _usage(obj: dict[str, Any]) -> dict[str, int]:
    """Ollama's usage, plus the prompt tokens served from the prompt cache as cache reads."""
    return {
        "input_tokens": obj.get("prompt_eval_count", 0),
        "output_tokens": obj.get("eval_count", 0),
        "cache_read_input_tokens": obj.get("prompt_cached_count", 0),
    }


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function", {})
    return {
        "type": "tool_use",
        "id": call.get("id") or _new_id("toolu"),
        "name": function.get("name", ""),
        "input": function.get("arguments") or {},
    }


def whole_message(message_id: str, model: str, final: dict[str, Any]) -> dict[str, Any]:
    """The non-streamed answer (Ollama's `ToMessagesResponse`): thinking, text, tool_use."""
    native = final.get("message", {})
    content: list[dict[str, Any]] = []
    if native.get("thinking"):
        content.append({"type": "thinking", "thinking": native["thinking"], "signature": ""})
    if native.get("content"):
        content.append({"type": "text", "text": native["content"]})
    calls = native.get("tool_calls") or []
    content.extend(_tool_use(call) for call in calls)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(final.get("done_reason"), bool(calls)),
        "stop_sequence": None,
        "usage": _usage(final),
    }


class _Events:
    """Native chat objects as Anthropic stream events (Ollama's `StreamConverter`), with the
    `ping` Anthropic sends after the first block starts."""

    def __init__(self, message_id: str, model: str, prompt_tokens: int) -> None:
        self.message_id = message_id
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.index = 0
        self.open: str | None = None  # the kind of the block being streamed
        self.pinged = False
        self.calls = 0

    def start(self) -> list[SSEEvent]:
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 0},
        }
        return [SSEEvent("message_start", {"type": "message_start", "message": message})]

    def _close(self) -> list[SSEEvent]:
        if self.open is None:
            return []
        self.open = None
        event = SSEEvent("content_block_stop", {"type": "content_block_stop", "index": self.index})
        self.index += 1
        return [event]

    def _begin(self, kind: str, block: dict[str, Any]) -> list[SSEEvent]:
        out = self._close()
        self.open = kind
        out.append(
            SSEEvent(
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
        )
        if not self.pinged:
            self.pinged = True
            out.append(SSEEvent("ping", {"type": "ping"}))
        return out

    def _delta(self, delta: dict[str, Any]) -> SSEEvent:
        return SSEEvent(
            "content_block_delta",
            {"type": "content_block_delta", "index": self.index, "delta": delta},
        )

    def process(self, obj: dict[str, Any]) -> list[SSEEvent]:
        message = obj.get("message", {})
        out: list[SSEEvent] = []
        if message.get("thinking"):
            if self.open != "thinking":
                out += self._begin(
                    "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                )
            out.append(self._delta({"type": "thinking_delta", "thinking": message["thinking"]}))
        if message.get("content"):
            if self.open != "text":
                out += self._begin("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": message["content"]}))
        for call in message.get("tool_calls") or []:
            block = _tool_use(call)
            arguments = json.dumps(block["input"], separators=(",", ":"))
            out += self._begin("tool_use", {**block, "input": {}})
            out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
            out += self._close()
            self.calls += 1
        if obj.get("done"):
            out += self._close()
            if not self.pinged:
                out.append(SSEEvent("ping", {"type": "ping"}))
            reason = stop_reason(obj.get("done_reason"), self.calls > 0)
            out.append(
                SSEEvent(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": reason, "stop_sequence": None},
                        "usage": _usage(obj),
                    },
                )
            )
            out.append(SSEEvent("message_stop", {"type": "message_stop"}))
        return out


@bp.route("/v1/messages", methods=["POST"])
async def messages() -> Response:
    body = await read_body()
    answer = await prepare_chat(chat_request(body), Timing(), relax_thinking=True)
    message_id = _new_id("msg")
    items = answer_items(answer)
    if answer.stream:
        events = _Events(message_id, answer.model, answer.prompt_tokens)
        return sse_response(translated_events(items, events), dialect=ANTHROPIC, typed=True)
    return json_response(whole_message(message_id, answer.model, await whole_chat(items)))


@bp.route("/v1/messages/count_tokens", methods=["POST"])
async def count_tokens() -> Response:
    """`{"input_tokens": N}`: the tokens of the prompt the request renders to, tools included."""
    body = await read_body()
    model = _check_model(body)
    _check_messages(body)
    messages = native_messages(body)
    tools = _tools_of(body)
    # The whole prompt, never truncated to the context: the count says whether it fits.
    decoding = Decoding(think=_think(body), truncate=False)
    native = ChatRequest(model, messages, tools, decoding=decoding)
    answer = await prepare_chat(native, Timing(), relax_thinking=True, render_only=True)
    return json_response({"input_tokens": answer.prompt_tokens})
