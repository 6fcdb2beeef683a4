"""OpenAI's Responses API (/v1/responses), stateless as Ollama's `openai/responses.go`.

The request is rewritten into a typed native chat request and answered by the native path
(`prepare_chat`, `whole_chat`); only shapes are translated here. Nothing is stored: a request that
refers to an earlier response (`previous_response_id`, `conversation`) or asks to run in the
background is refused with a 400 that says to send the whole conversation in `input`. Streams are
typed SSE events (`event: <type>` + `data:`) numbered by `sequence_number`, in Ollama's order.
Errors are raised; `appliance/api/errors.py` answers them in OpenAI's envelope.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

from quart import Blueprint, Response

from appliance.api.bodies.fields import BOOL, INT, NUMBER, STRING, Fields, must_be
from appliance.api.bodies.inference import ChatRequest, Decoding, Message
from appliance.api.requests import decode_json
from appliance.api.routes.native import prepare_chat, whole_chat
from appliance.api.routes.openai import (
    answer_items,
    chosen_tools,
    decode_image_url,
    read_body,
    think_of,
)
from appliance.api.streaming import SSEEvent, json_response, sse_response, translated_events
from appliance.errors import BadRequest
from appliance.serving.generation import Timing

bp = Blueprint("responses", __name__)

STATELESS = "this server keeps no responses; send the whole conversation in `input` instead"


# ---- request -------------------------------------------------------------------------------------


def _content(parts: Any, where: str) -> tuple[str, list[str]]:
    """A message's text and images from a string or a list of content parts."""
    if isinstance(parts, str):
        return parts, []
    if parts is None:
        return "", []
    if not isinstance(parts, list):
        raise BadRequest(f"{where}: content must be a string or array")
    text: list[str] = []
    images: list[str] = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "refusal"):
            value = part.get("text", part.get("refusal", ""))
            if not isinstance(value, str):
                raise BadRequest(f"{where}: content[{j}]: text must be a string")
            text.append(value)
        elif kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, dict):
                url = url.get("url")
            if url:  # a file_id alone names a stored file, which there is none of: skipped
                if not isinstance(url, str):
                    raise BadRequest(f"{where}: content[{j}]: image_url must be a string")
                images.append(decode_image_url(url))
        elif kind == "input_file":
            raise BadRequest("file inputs are not currently supported")
        else:
            raise BadRequest(f"{where}: content[{j}]: unknown content type: {kind}")
    return "".join(text), images


def _arguments(raw: Any) -> dict[str, Any]:
    if raw in (None, ""):
        return {}
    try:  # the boundary's decoder: a client's JSON text, with its bounds on depth and numbers
        parsed = decode_json(raw) if isinstance(raw, str) else raw
    except BadRequest as exc:
        raise BadRequest(f"failed to parse function call arguments: {exc.message}") from None
    if not isinstance(parsed, dict):
        raise BadRequest("failed to parse function call arguments: not a JSON object")
    return parsed


def _reasoning_text(item: dict[str, Any]) -> str:
    """What a reasoning item carries back: Ollama puts the plain thinking in encrypted_content."""
    if isinstance(item.get("encrypted_content"), str) and item["encrypted_content"]:
        return item["encrypted_content"]
    summary = item.get("summary")
    if isinstance(summary, list):
        return "".join(s.get("text", "") for s in summary if isinstance(s, dict))
    return ""


class _Conversation:
    """Native chat messages built from `input` items in order (Ollama's `FromResponsesRequest`):
    function calls join the assistant message before them, a reasoning item's text becomes the
    next assistant message's thinking, `developer` speaks as `system`."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.call_names: dict[str, str] = {}
        self.thinking = ""

    def add(self, item: Any, where: str) -> None:
        if not isinstance(item, dict):
            raise BadRequest(f"{where}: input item must be an object")
        kind = item.get("type") or ("message" if item.get("role") else "")
        if kind == "reasoning":
            self.thinking = _reasoning_text(item)
        elif kind == "message":
            self._message(item, where)
        elif kind == "function_call":
            self._function_call(item, where)
        elif kind == "function_call_output":
            self._function_call_output(item, where)
        elif not kind:
            raise BadRequest(f"{where}: input item missing required 'type' field")
        else:
            raise BadRequest(f'{where}: unknown input item type: "{kind}"')

    def _message(self, item: dict[str, Any], where: str) -> None:
        role = item.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequest(f"{where}: message role is required")
        text, images = _content(item.get("content"), where)
        role = "system" if role == "developer" else role
        thinking = ""
        if role == "assistant":
            thinking, self.thinking = self.thinking, ""
        self.messages.append(Message(role, text, tuple(images), thinking=thinking))

    def _function_call(self, item: dict[str, Any], where: str) -> None:
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{where}: function_call needs a name")
        call_id = str(item.get("call_id") or "")
        arguments = _arguments(item.get("arguments"))
        last = self.messages[-1] if self.messages else None
        if last is None or last.role != "assistant":
            last = Message("assistant")
            self.messages.append(last)
        function = {"name": name, "arguments": arguments, "index": len(last.tool_calls)}
        call: dict[str, Any] = {"function": function}
        if call_id:
            call["id"] = call_id
            self.call_names[call_id] = name
        thinking = last.thinking
        if self.thinking:
            thinking, self.thinking = self.thinking, ""
        self.messages[-1] = replace(last, tool_calls=(*last.tool_calls, call), thinking=thinking)

    def _function_call_output(self, item: dict[str, Any], where: str) -> None:
        call_id = str(item.get("call_id") or "")
        output = item.get("output")
        text, images = _content(output if output is not None else "", where)
        name = self.call_names.get(call_id, "")
        tool = Message("tool", text, tuple(images), tool_call_id=call_id, tool_name=name)
        self.messages.append(tool)

    def finish(self) -> tuple[Message, ...]:
        if self.thinking:
            self.messages.append(Message("assistant", thinking=self.thinking))
        return tuple(self.messages)


def native_messages(raw: Any, instructions: Any) -> tuple[Message, ...]:
    """Native chat messages for `instructions` and `input`."""
    if instructions is not None and not isinstance(instructions, str):
        raise BadRequest("instructions must be a string")
    system = (Message("system", instructions),) if instructions else ()
    if isinstance(raw, str):
        return (*system, Message("user", raw)) if raw else system
    if raw is None:
        return system
    if not isinstance(raw, list):
        raise BadRequest("input must be a string or array")
    conversation = _Conversation()
    conversation.messages.extend(system)
    for i, item in enumerate(raw):
        conversation.add(item, f"input[{i}]")
    return conversation.finish()


def native_tools(raw: Any) -> list[dict[str, Any]] | None:
    """Function tools in the native (chat completions) shape. Built-in tools (web_search,
    file_search, ...) are run by OpenAI's servers, not by a model here: they are left out."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequest("tools must be an array")
    tools = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools[{i}] must be an object")
        if tool.get("type", "function") != "function":
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools[{i}]: a function tool needs a name")
        function: dict[str, Any] = {"name": name, "description": tool.get("description") or ""}
        function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
        tools.append({"type": "function", "function": function})
    return tools


def _format(text: Any) -> Any:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema" and fmt.get("schema") is not None:
        return fmt["schema"]
    if fmt.get("type") == "json_object":
        return "json"
    return None


def chat_request(body: dict[str, Any]) -> ChatRequest:
    """The native chat request for a Responses request; refuses what needs stored state."""
    if body.get("previous_response_id"):
        raise BadRequest(f"previous_response_id is not supported: {STATELESS}")
    if body.get("conversation"):
        raise BadRequest(f"conversation is not supported: {STATELESS}")
    if body.get("background") is True:
        raise BadRequest("background is not supported: responses are answered while you wait")
    messages = native_messages(body.get("input"), body.get("instructions"))
    fields = Fields(body, must_be)
    options: dict[str, Any] = {"temperature": fields.get("temperature", NUMBER, 1.0)}
    top_p = fields.get("top_p", NUMBER)
    if top_p is not None:
        options["top_p"] = top_p
    max_output = fields.get("max_output_tokens", INT)
    if max_output is not None:
        options["num_predict"] = max_output
    stream = fields.get("stream", BOOL, False)
    tools = chosen_tools(native_tools(body.get("tools")), body.get("tool_choice"))
    decoding = Decoding(options=options, format=_format(body.get("text")), think=think_of(body))
    model = fields.get("model", STRING, "").strip()
    return ChatRequest(model, messages, tuple(tools) if tools else None, stream, decoding)


# ---- response ------------------------------------------------------------------------------------


@dataclass
class _Request:
    """What a response object echoes back from its request (Ollama's `buildResponseObject`)."""

    body: dict[str, Any]
    model: str
    response_id: str = field(default_factory=lambda: f"resp_{random.randrange(999999)}")
    item_id: str = field(default_factory=lambda: f"msg_{random.randrange(999999)}")
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(self, status: str, output: list[Any], usage: Any) -> dict[str, Any]:
        body = self.body
        tools = [
            {
                "type": "function",
                "name": t.get("name"),
                "description": t.get("description"),
                "strict": t.get("strict"),
                "parameters": t.get("parameters"),
            }
            for t in body.get("tools") or []
            if isinstance(t, dict) and t.get("type", "function") == "function"
        ]
        text_format: Any = {"type": "text"}
        text = body.get("text")
        if isinstance(text, dict) and isinstance(text.get("format"), dict):
            text_format = text["format"]
        reasoning = body.get("reasoning")
        if isinstance(reasoning, dict) and (reasoning.get("effort") or reasoning.get("summary")):
            reasoning = {
                "effort": reasoning.get("effort") or None,
                "summary": reasoning.get("summary") or None,
            }
        else:
            reasoning = None
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "incomplete_details": None,
            "model": self.model,
            "previous_response_id": None,
            "instructions": body.get("instructions") or None,
            "output": output,
            "error": None,
            "tools": tools,
            "tool_choice": body.get("tool_choice") or "auto",
            "truncation": body.get("truncation") or "disabled",
            "parallel_tool_calls": True,
            "text": {"format": text_format},
            "top_p": 1.0 if body.get("top_p") is None else body["top_p"],
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": 1.0 if body.get("temperature") is None else body["temperature"],
            "reasoning": reasoning,
            "usage": usage,
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "store": False,
            "background": False,
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }


def _usage(final: dict[str, Any]) -> dict[str, Any]:
    prompt = final.get("prompt_eval_count", 0)
    completion = final.get("eval_count", 0)
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
        "input_tokens_details": {"cached_tokens": final.get("prompt_cached_count", 0)},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [_text_part(text)] if status == "completed" else []
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _reasoning_item(item_id: str, thinking: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": thinking}],
        "encrypted_content": thinking,  # plain text, as Ollama sends it back
    }


def _call_item(item_id: str, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function", {})
    arguments = json.dumps(function.get("arguments", {}), separators=(",", ":"))
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call.get("id") or f"call_{random.randrange(1 << 32):08x}",
        "name": function.get("name", ""),
        "arguments": arguments if status == "completed" else "",
    }


def whole_response(req: _Request, final: dict[str, Any]) -> dict[str, Any]:
    """The non-streamed response (Ollama's `ToResponse`): a reasoning item when the model
    thought, then the function calls, or else one message."""
    message = final.get("message", {})
    output: list[dict[str, Any]] = []
    if message.get("thinking"):
        output.append(_reasoning_item(f"rs_{req.response_id}", message["thinking"]))
    calls = message.get("tool_calls") or []
    for i, call in enumerate(calls):
        output.append(_call_item(f"fc_{req.response_id}_{i}", call))
    if not calls:
        output.append(_message_item(req.item_id, message.get("content", "")))
    return req.response("completed", output, _usage(final))


class _Events:
    """Native chat objects as Responses stream events (Ollama's `ResponsesStreamConverter`)."""

    def __init__(self, req: _Request) -> None:
        self.req = req
        self.sequence = 0
        self.output_index = 0
        self.text: list[str] = []
        self.text_started = False
        self.thinking: list[str] = []
        self.reasoning_id = ""
        self.reasoning_done = False
        self.calls: list[dict[str, Any]] = []

    def event(self, kind: str, **data: Any) -> SSEEvent:
        payload = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return SSEEvent(kind, payload)

    def start(self) -> list[SSEEvent]:
        shell = self.req.response("in_progress", [], None)
        return [
            self.event("response.created", response=shell),
            self.event("response.in_progress", response=shell),
        ]

    def process(self, obj: dict[str, Any]) -> list[SSEEvent]:
        message = obj.get("message", {})
        out: list[SSEEvent] = []
        if message.get("thinking"):
            out += self._thinking(message["thinking"])
        if message.get("tool_calls"):
            out += self._calls(message["tool_calls"])
        elif message.get("content") and not self.calls:
            out += self._content(message["content"])
        if obj.get("done"):
            out += self._complete(obj)
        return out

    def _thinking(self, delta: str) -> list[SSEEvent]:
        out = []
        if not self.reasoning_id:
            self.reasoning_id = f"rs_{random.randrange(999999)}"
            item = {"id": self.reasoning_id, "type": "reasoning", "summary": []}
            out.append(
                self.event("response.output_item.added", output_index=self.output_index, item=item)
            )
        self.thinking.append(delta)
        out.append(
            self.event(
                "response.reasoning_summary_text.delta",
                item_id=self.reasoning_id,
                output_index=self.output_index,
                summary_index=0,
                delta=delta,
            )
        )
        return out

    def _finish_reasoning(self) -> list[SSEEvent]:
        if not self.reasoning_id or self.reasoning_done:
            return []
        self.reasoning_done = True
        thinking = "".join(self.thinking)
        out = [
            self.event(
                "response.reasoning_summary_text.done",
                item_id=self.reasoning_id,
                output_index=self.output_index,
                summary_index=0,
                text=thinking,
            ),
            self.event(
                "response.output_item.done",
                output_index=self.output_index,
                item=_reasoning_item(self.reasoning_id, thinking),
            ),
        ]
        self.output_index += 1
        return out

    def _calls(self, calls: list[dict[str, Any]]) -> list[SSEEvent]:
        out = self._finish_reasoning()
        for call in calls:
            index = self.output_index + len(self.calls)
            item_id = f"fc_{random.randrange(999999)}_{len(self.calls)}"
            done = _call_item(item_id, call)
            self.calls.append(done)
            added = {**done, "status": "in_progress", "arguments": ""}
            out.append(self.event("response.output_item.added", output_index=index, item=added))
            args = done["arguments"]
            if args:
                out.append(
                    self.event(
                        "response.function_call_arguments.delta",
                        item_id=item_id,
                        output_index=index,
                        delta=args,
                    )
                )
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item_id,
                    output_index=index,
                    arguments=args,
                )
            )
            out.append(self.event("response.output_item.done", output_index=index, item=done))
        return out

    def _content(self, delta: str) -> list[SSEEvent]:
        out = self._finish_reasoning()
        item_id = self.req.item_id
        if not self.text_started:
            self.text_started = True
            item = _message_item(item_id, "", status="in_progress")
            out.append(
                self.event("response.output_item.added", output_index=self.output_index, item=item)
            )
            out.append(
                self.event(
                    "response.content_part.added",
                    item_id=item_id,
                    output_index=self.output_index,
                    content_index=0,
                    part=_text_part(""),
                )
            )
        self.text.append(delta)
        out.append(
            self.event(
                "response.output_text.delta",
                item_id=item_id,
                output_index=self.output_index,
                content_index=0,
                delta=delta,
                logprobs=[],
            )
        )
        return out

    def _complete(self, final: dict[str, Any]) -> list[SSEEvent]:
        out = self._finish_reasoning()
        item_id = self.req.item_id
        text = "".join(self.text)
        if self.text_started and not self.calls:
            out.append(
                self.event(
                    "response.output_text.done",
                    item_id=item_id,
                    output_index=self.output_index,
                    content_index=0,
                    text=text,
                    logprobs=[],
                )
            )
            out.append(
                self.event(
                    "response.content_part.done",
                    item_id=item_id,
                    output_index=self.output_index,
                    content_index=0,
                    part=_text_part(text),
                )
            )
            out.append(
                self.event(
                    "response.output_item.done",
                    output_index=self.output_index,
                    item=_message_item(item_id, text),
                )
            )
        output: list[dict[str, Any]] = []
        if self.reasoning_id:
            output.append(_reasoning_item(self.reasoning_id, "".join(self.thinking)))
        if self.calls:
            output.extend(self.calls)
        elif self.text_started:
            output.append(_message_item(item_id, text))
        response = self.req.response("completed", output, _usage(final))
        out.append(self.event("response.completed", response=response))
        return out


@bp.route("/v1/responses", methods=["POST"])
async def create_response() -> Response:
    body = await read_body()
    answer = await prepare_chat(chat_request(body), Timing())
    req = _Request(body, answer.model)
    items = answer_items(answer)
    if answer.stream:
        return sse_response(translated_events(items, _Events(req)), typed=True)
    return json_response(whole_response(req, await whole_chat(items)))
