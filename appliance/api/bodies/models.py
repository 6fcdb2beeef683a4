"""Typed bodies of the model-management routes: show, copy, delete, pull, push and create.

Each body is read here once, as Ollama's Go server decodes it into its request struct: every field
is type-checked first (a wrong type is a 400 with Go's decoder text, `json: cannot unmarshal
number into Go struct field ShowRequest.model of type string`), an absent or null field takes its
zero value, and unknown fields are ignored. Then the names are checked, with Ollama's messages.
The handlers get the typed object and read nothing else of the body.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from appliance.api.bodies.fields import (
    BOOL,
    STRING,
    Fields,
    Kind,
    check_images,
    go_struct,
    go_type_error,
)
from appliance.errors import ApplianceError, BadRequest
from appliance.options import Options
from appliance.store.create import CreateRequest
from appliance.store.layout import InvalidDigest, api_digest
from appliance.store.names import ModelName, parse_model_name

_ANY_MAP = Kind((dict,), "map[string]interface {}", "an object")
_STRING_MAP = Kind((dict,), "map[string]string", "an object")
_MESSAGES = Kind((list,), "[]api.Message", "a list")


def _field(body: dict[str, Any], where: str, kind: Kind, default: Any) -> Any:
    """Field `where` (`Struct.field`) of `kind`; a wrong type is a 400 naming Go's struct and
    type, as Ollama's answer does."""
    struct, _, name = where.rpartition(".")
    return Fields(body, go_struct(struct)).get(name, kind, default)


def _model_text(body: dict[str, Any], struct: str, *, strip: bool = False) -> str:
    """The model a body names: `model`, else the older `name` (Ollama's `cmp.Or(Model, Name)`).
    The registry routes also take a blank `model` as absent and drop surrounding spaces."""
    model = _field(body, f"{struct}.model", STRING, "")
    name = _field(body, f"{struct}.name", STRING, "")
    if strip:
        model, name = model.strip(), name.strip()
    return model or name


@dataclass(frozen=True)
class ShowRequest:
    """`POST /api/show`."""

    model: str
    name: ModelName
    verbose: bool = False
    system: str = ""

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Self:
        text = _model_text(body, "ShowRequest")
        verbose = _field(body, "ShowRequest.verbose", BOOL, False)
        system = _field(body, "ShowRequest.system", STRING, "")
        if not text:
            raise BadRequest("model is required")
        return cls(model=text, name=parse_model_name(text), verbose=verbose, system=system)


@dataclass(frozen=True)
class CopyRequest:
    """`POST /api/copy`."""

    source_text: str
    source: ModelName
    destination: ModelName

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Self:
        source = _field(body, "CopyRequest.source", STRING, "")
        destination = _field(body, "CopyRequest.destination", STRING, "")
        return cls(
            source_text=source,
            source=parse_model_name(source, message=f'source "{source}" is invalid'),
            destination=parse_model_name(
                destination, message=f'destination "{destination}" is invalid'
            ),
        )


@dataclass(frozen=True)
class DeleteRequest:
    """`DELETE /api/delete`."""

    model: str
    name: ModelName

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Self:
        text = _model_text(body, "DeleteRequest")
        return cls(model=text, name=parse_model_name(text, message=f'name "{text}" is invalid'))


@dataclass(frozen=True)
class _RegistryRequest:
    """A pull or push: a name a registry can hold, checked before anything dials it."""

    STRUCT: ClassVar[str]
    MODEL_REQUIRED: ClassVar[bool]

    name: ModelName
    insecure: bool = False
    stream: bool = True

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Self:
        text = _model_text(body, cls.STRUCT, strip=True)
        insecure = _field(body, f"{cls.STRUCT}.insecure", BOOL, False)
        stream = _field(body, f"{cls.STRUCT}.stream", BOOL, True)
        if not text and cls.MODEL_REQUIRED:
            raise BadRequest("model is required")
        name = parse_model_name(text)  # 400 `invalid model name`
        name.check_storable()
        name.check_registry_host()
        return cls(name=name, insecure=insecure, stream=stream)


@dataclass(frozen=True)
class PullRequest(_RegistryRequest):
    """`POST /api/pull`."""

    STRUCT = "PullRequest"
    MODEL_REQUIRED = False


@dataclass(frozen=True)
class PushRequest(_RegistryRequest):
    """`POST /api/push`."""

    STRUCT = "PushRequest"
    MODEL_REQUIRED = True


# ---- create --------------------------------------------------------------------------------------
# The store builds from a `CreateRequest` (store/create.py); the store never imports the API, so
# the body is parsed into the store's type here, by a function rather than a `parse` method.


_CREATE_TEXT_FIELDS = (
    "from",
    "template",
    "system",
    "requires",
    "renderer",
    "parser",
    "quantize",
    "quantization",
)


def parse_create(body: dict[str, Any]) -> CreateRequest:
    """A create body as a `CreateRequest`, with Ollama's 400 messages in Ollama's order."""
    check_images(body.get("messages"))
    model = _model_text(body, "CreateRequest")
    text: dict[str, str] = {
        key: _field(body, f"CreateRequest.{key}", STRING, "") for key in _CREATE_TEXT_FIELDS
    }
    stream = _field(body, "CreateRequest.stream", BOOL, True)
    files = _files(body, "files")
    adapters = _files(body, "adapters")
    parameters = _field(body, "CreateRequest.parameters", _ANY_MAP, {})
    messages = _messages(body)
    name = parse_model_name(model)
    if text["quantize"] or text["quantization"]:
        raise BadRequest(
            "quantization is not supported by this server; quantize the GGUF "
            "before creating the model (llama-quantize)"
        )
    from_ = parse_model_name(text["from"]) if text["from"] else None
    if from_ is None and not files:
        raise BadRequest("neither 'from' or 'files' was specified")
    licenses = _licenses(body.get("license"))
    _check_parameters(parameters)
    return CreateRequest(
        name=name,
        from_=from_,
        from_text=text["from"],
        files=files,
        adapters=adapters,
        template=text["template"],
        system=text["system"],
        license=licenses,
        parameters=_go_numbers(parameters),
        messages=messages,
        requires=text["requires"],
        renderer=text["renderer"],
        parser=text["parser"],
        stream=stream,
    )


def _files(body: dict[str, Any], key: str) -> dict[str, str]:
    """`files` or `adapters`: relative paths to blob digests (Go's `map[string]string`)."""
    where = f"CreateRequest.{key}"
    files = _field(body, where, _STRING_MAP, {})
    for value in files.values():
        if not isinstance(value, str):
            raise go_type_error(where, value, "string")
    for rel, digest in files.items():
        if not _valid_fs_path(rel):
            raise BadRequest("file path must be relative")
        try:
            api_digest(digest)
        except InvalidDigest:
            raise BadRequest("invalid digest format") from None
    return {rel: api_digest(d) for rel, d in files.items()}


def _valid_fs_path(rel: str) -> bool:
    """Go's `fs.ValidPath`: unrooted, slash-separated, no `.`/`..`/empty elements."""
    if rel == ".":
        return True
    if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        return False
    return (
        all(part not in ("", ".", "..") for part in rel.split("/"))
        and posixpath.normpath(rel) == rel
    )


def _licenses(value: Any) -> list[str]:
    """`license` (Go's `any`): one text or a list of texts; empty ones are dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return [x for x in value if x]
    raise BadRequest("license must be a string or a list of strings")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """`messages` as the store records them: roles lowercased, empty extras left out."""
    where = "CreateRequest.messages"
    messages = _field(body, where, _MESSAGES, [])
    for m in messages:
        if not isinstance(m, dict):
            raise go_type_error(where, m, "api.Message")
    clean = []
    for m in messages:
        role = m.get("role", "")
        if not isinstance(role, str) or not isinstance(m.get("content", ""), str):
            raise BadRequest("message role and content must be strings")
        out: dict[str, Any] = {"role": role.lower(), "content": m.get("content", "")}
        for key in ("thinking", "images", "tool_calls", "tool_name"):
            if m.get(key):
                out[key] = m[key]
        clean.append(out)
    return clean


def _check_parameters(params: dict[str, Any]) -> None:
    """Type the parameters as Ollama's `Options.FromMap` does, now rather than at every request:
    a badly typed value would otherwise be stored and make every later request a 500."""
    try:
        Options().with_map(params)
    except ApplianceError as exc:
        raise BadRequest(exc.message) from None


def _go_numbers(value: Any) -> Any:
    """Whole floats become ints, so re-encoded JSON matches Go's float64 output (`1`, not `1.0`)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {k: _go_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_numbers(v) for v in value]
    return value
