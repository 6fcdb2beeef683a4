"""The native inference requests (/api/generate, /api/chat, /api/embed, /api/embeddings), typed.

`parse` makes every type check of a body once, before the model is looked up (Go's decoder runs
before Ollama's handler), with Go's texts (`json: cannot unmarshal number into Go struct field
GenerateRequest.prompt of type string`); unknown fields are ignored, as Go ignores them. What
needs the model (does it exist, can it think, do the options fit it) is the route's to check. The
OpenAI, Anthropic and Responses routes build these objects directly from their own bodies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from appliance.api.bodies.fields import (
    BOOL,
    INT,
    STRING,
    Fields,
    go_struct,
    go_type_error,
    image_list,
)
from appliance.errors import BadRequest
from appliance.gocompat.durations import parse_keep_alive

THINK_LEVELS = ("low", "medium", "high", "max")
_MESSAGE_FIELDS = (
    "role",
    "content",
    "images",
    "thinking",
    "tool_calls",
    "tool_name",
    "tool_call_id",
)


def think_value(think: Any) -> bool | str | None:
    """`think` as Ollama's `ThinkValue` decodes it: a boolean or a level."""
    if think is None or isinstance(think, bool) or think in THINK_LEVELS:
        return think
    raise BadRequest(
        f"invalid think value: {think!r} (must be a boolean or low, medium, high, max)"
    )


def top_logprobs_value(top: Any) -> int:
    """`top_logprobs`: an integer from 0 to 20, as Ollama's handlers check it."""
    if top is None:
        return 0
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20:
        raise BadRequest("top_logprobs must be between 0 and 20")
    return top


def _options(value: Any, struct: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise go_type_error(f"{struct}.options", value, "map[string]interface {}")
    return value


@dataclass(frozen=True)
class Message:
    """One chat message (Ollama's `api.Message`). `extra` keeps the fields a native client sent
    beyond these, as sent: Jinja chat templates may read them."""

    role: str
    content: str = ""
    images: tuple[str | None, ...] = ()
    thinking: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()
    tool_name: str = ""
    tool_call_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Ollama's Message.UnmarshalJSON lower-cases the role, whichever route built the message.
        object.__setattr__(self, "role", self.role.lower())

    @classmethod
    def parse(cls, item: Any) -> Self:
        """A native message; a null content is empty, as Ollama decodes it."""
        if not isinstance(item, dict):
            raise go_type_error("ChatRequest.messages", item, "api.Message")
        fields = Fields(item, go_struct("Message.messages"))
        calls = item.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise go_type_error("Message.messages.tool_calls", calls, "[]api.ToolCall")
        return cls(
            role=fields.get("role", STRING, ""),
            content=fields.get("content", STRING, ""),
            images=image_list(item.get("images"), "Message.images"),
            thinking=fields.get("thinking", STRING, ""),
            tool_calls=tuple(calls or ()),
            tool_name=fields.get("tool_name", STRING, ""),
            tool_call_id=fields.get("tool_call_id", STRING, ""),
            extra={k: v for k, v in item.items() if k not in _MESSAGE_FIELDS},
        )

    def as_dict(self) -> dict[str, Any]:
        """The message as templates read it."""
        out: dict[str, Any] = {**self.extra, "role": self.role, "content": self.content}
        optional = {
            "images": list(self.images),
            "thinking": self.thinking,
            "tool_calls": [dict(c) for c in self.tool_calls],
            "tool_name": self.tool_name,
            "tool_call_id": self.tool_call_id,
        }
        out.update((k, v) for k, v in optional.items() if v)
        return out


def _messages(raw: Any) -> tuple[Message, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise go_type_error("ChatRequest.messages", raw, "[]api.Message")
    return tuple(Message.parse(item) for item in raw)


def _context(raw: Any) -> tuple[int, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise go_type_error("GenerateRequest.context", raw, "[]int")
    for token in raw:
        if not isinstance(token, int) or isinstance(token, bool):
            raise go_type_error("GenerateRequest.context", token, "int")
    return tuple(raw)


def tool_list(
    raw: Any, struct: str = "ChatRequest", go_type: str = "api.Tools"
) -> tuple[dict[str, Any], ...] | None:
    """`tools` as Go decodes a list of `api.Tool` into the struct field `struct.tools`."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise go_type_error(f"{struct}.tools", raw, go_type)
    for tool in raw:
        if not isinstance(tool, dict):
            raise go_type_error(f"{struct}.tools", tool, "api.Tool")
    return tuple(raw)


@dataclass(frozen=True)
class Decoding:
    """What generate and chat share: how long the model stays, how to sample and cut the prompt,
    what else to return."""

    keep_alive: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    format: Any = None
    think: bool | str | None = None
    truncate: bool = True
    shift: bool = True
    logprobs: bool = False
    top_logprobs: int = 0

    @classmethod
    def parse(cls, body: dict[str, Any], struct: str) -> Self:
        top = top_logprobs_value(body.get("top_logprobs"))
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        fields = Fields(body, go_struct(struct))
        return cls(
            keep_alive=keep_alive,
            options=_options(body.get("options"), struct),
            format=body.get("format"),
            think=think_value(body.get("think")),
            truncate=fields.get("truncate", BOOL, True),
            shift=fields.get("shift", BOOL, True),
            logprobs=fields.get("logprobs", BOOL, False),
            top_logprobs=top,
        )

    def as_json(self) -> dict[str, Any]:
        """These fields as a native body holds them; those at their defaults left out."""
        out: dict[str, Any] = {"options": dict(self.options)}
        optional = {"keep_alive": self.keep_alive, "format": self.format, "think": self.think}
        out.update((k, v) for k, v in optional.items() if v is not None)
        if not self.truncate:
            out["truncate"] = False
        if not self.shift:
            out["shift"] = False
        if self.logprobs:
            out.update(logprobs=True, top_logprobs=self.top_logprobs)
        return out

    @property
    def think_requested(self) -> bool:
        return self.think is not None and self.think is not False

    def think_setting(self, caps: set[str]) -> bool | None:
        """The `think` the template sees: the request's, a level counting as on; unset on a
        thinking model means on (Ollama defaults it so)."""
        if self.think is None:
            return True if "thinking" in caps else None
        return self.think is not False


@dataclass(frozen=True)
class GenerateRequest:
    """An /api/generate body (Ollama's `api.GenerateRequest`); also /v1/completions."""

    model: str = ""
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: tuple[int, ...] | None = None
    images: tuple[str | None, ...] = ()
    raw: bool = False
    stream: bool = True
    decoding: Decoding = field(default_factory=Decoding)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Self:
        images = image_list(body.get("images"), "GenerateRequest.images")
        decoding = Decoding.parse(body, "GenerateRequest")
        fields = Fields(body, go_struct("GenerateRequest"))
        return cls(
            model=fields.get("model", STRING, "").strip(),
            prompt=fields.get("prompt", STRING, ""),
            suffix=fields.get("suffix", STRING, ""),
            system=fields.get("system", STRING),
            template=fields.get("template", STRING),
            context=_context(body.get("context")),
            images=images,
            raw=fields.get("raw", BOOL, False),
            stream=fields.get("stream", BOOL, True),
            decoding=decoding,
        )

    def as_json(self) -> dict[str, Any]:
        """The /api/generate body this request stands for (what Ollama's OpenAI middleware
        forwards), fields at their defaults left out: for logs and tests of the translation."""
        out: dict[str, Any] = {"model": self.model, "prompt": self.prompt, "stream": self.stream}
        optional = {
            "suffix": self.suffix,
            "system": self.system,
            "template": self.template,
            "context": list(self.context or ()),
            "images": list(self.images),
            "raw": self.raw,
        }
        out.update((k, v) for k, v in optional.items() if v)
        return {**out, **self.decoding.as_json()}


@dataclass(frozen=True)
class ChatRequest:
    """An /api/chat body (Ollama's `api.ChatRequest`); also the OpenAI, Anthropic and Responses
    chat routes."""

    model: str = ""
    messages: tuple[Message, ...] = ()
    tools: tuple[dict[str, Any], ...] | None = None
    stream: bool = True
    decoding: Decoding = field(default_factory=Decoding)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Self:
        messages = _messages(body.get("messages"))
        decoding = Decoding.parse(body, "ChatRequest")
        fields = Fields(body, go_struct("ChatRequest"))
        return cls(
            model=fields.get("model", STRING, "").strip(),
            messages=messages,
            tools=tool_list(body.get("tools")),
            stream=fields.get("stream", BOOL, True),
            decoding=decoding,
        )

    def as_json(self) -> dict[str, Any]:
        """The /api/chat body this request stands for (what Ollama's middlewares forward),
        fields at their defaults left out: for logs and tests of the translations."""
        out: dict[str, Any] = {
            "model": self.model,
            "messages": [m.as_dict() for m in self.messages],
            "stream": self.stream,
        }
        if self.tools:
            out["tools"] = [dict(t) for t in self.tools]
        return {**out, **self.decoding.as_json()}

    @property
    def images(self) -> list[str | None]:
        return [image for m in self.messages for image in m.images]


def embed_inputs(raw: Any) -> tuple[str, ...]:
    """`input`: a string or a list of strings (Ollama: `invalid input type` otherwise)."""
    if raw is None or isinstance(raw, str):
        return (raw,) if raw else ()
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return tuple(raw)
    raise BadRequest("invalid input type")


@dataclass(frozen=True)
class EmbedRequest:
    """An /api/embed body (Ollama's `api.EmbedRequest`); also /v1/embeddings."""

    model: str = ""
    inputs: tuple[str, ...] = ()
    truncate: bool = True
    dimensions: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    keep_alive: float | None = None

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Self:
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        fields = Fields(body, go_struct("EmbedRequest"))
        model = fields.get("model", STRING, "").strip()
        return cls(
            model=model,
            inputs=embed_inputs(body.get("input")),
            truncate=fields.get("truncate", BOOL, True),
            dimensions=fields.get("dimensions", INT),
            options=_options(body.get("options"), "EmbedRequest"),
            keep_alive=keep_alive,
        )


@dataclass(frozen=True)
class EmbeddingsRequest:
    """An /api/embeddings body (Ollama's older `api.EmbeddingRequest`)."""

    model: str = ""
    prompt: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    keep_alive: float | None = None

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Self:
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        fields = Fields(body, go_struct("EmbeddingRequest"))
        return cls(
            model=fields.get("model", STRING, "").strip(),
            prompt=fields.get("prompt", STRING, ""),
            options=_options(body.get("options"), "EmbeddingRequest"),
            keep_alive=keep_alive,
        )
