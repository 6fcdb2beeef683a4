"""One typed-field reader for every API's request bodies; only the error text differs per API.

Ollama's native and OpenAI routes answer a wrong type with Go's decoder text (`json: cannot
unmarshal number into Go struct field GenerateRequest.prompt of type string`), the Anthropic and
Responses routes with their own (`temperature must be a number`): a `WrongType` picks the text,
`Fields` reads the body with it. A null counts as absent, as in Go, and JSON's `true` is never a
number (Python's bool is an int). `image_list` reads `images` as Go decodes `[]api.ImageData`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from appliance.errors import BadRequest
from appliance.gocompat.jsontypes import json_kind


@dataclass(frozen=True)
class Kind:
    """A field's JSON type: the Python types it decodes to, Go's name for it, and the words."""

    types: tuple[type, ...]
    go: str
    words: str

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) and bool not in self.types:
            return False
        return isinstance(value, self.types)


STRING = Kind((str,), "string", "a string")
BOOL = Kind((bool,), "bool", "a boolean")
INT = Kind((int,), "int", "an integer")
NUMBER = Kind((int, float), "float64", "a number")

WrongType = Callable[[str, Any, Kind], str]
"""The error text for field `name` holding `value`, which is not of `kind`."""


def go_type_text(where: str, value: Any, go_type: str) -> str:
    """Go's `json.UnmarshalTypeError` text for `value` decoded into the struct field `where`
    (`Struct.field`) of Go type `go_type`."""
    return (
        f"json: cannot unmarshal {json_kind(value)} into Go struct field {where} of type {go_type}"
    )


def go_type_error(where: str, value: Any, go_type: str) -> BadRequest:
    """The 400 carrying `go_type_text`."""
    return BadRequest(go_type_text(where, value, go_type))


def go_struct(struct: str) -> WrongType:
    """Go's `json.UnmarshalTypeError` text for a field of the Go struct `struct`."""

    def wrong(name: str, value: Any, kind: Kind) -> str:
        return go_type_text(f"{struct}.{name}", value, kind.go)

    return wrong


def must_be(name: str, value: Any, kind: Kind) -> str:
    """The Anthropic and Responses routes' text: `<name> must be <a number>`."""
    return f"{name} must be {kind.words}"


@dataclass(frozen=True)
class Fields:
    """A request body read field by field under one API's error text."""

    body: Mapping[str, Any]
    wrong: WrongType

    def get(self, name: str, kind: Kind, default: Any = None) -> Any:
        """Field `name` if it is of `kind`, `default` if absent or null, else a 400."""
        value = self.body.get(name)
        if value is None:
            return default
        if not kind.holds(value):
            raise BadRequest(self.wrong(name, value, kind))
        return value


def field_of_type(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    """A typed optional field; a wrong type is a 400 naming the field, as Go's decoder does."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = "/".join(k.__name__ for k in kinds)
    return Fields(body, go_struct("")).get(name, Kind(kinds, names, names), default)


_BASE64_BAD = re.compile(r"[^A-Za-z0-9+/\r\n]")
_NEWLINES = "\r\n"


def base64_error(text: str) -> int | None:
    """Where Go's `base64.StdEncoding` would fail on `text` (the N of `illegal base64 data at
    input byte N`), or None if it decodes. Go skips CR and LF and wants full padding.

    Found with two regex scans, never a Python loop over the bytes: a bad image may be megabytes.
    """
    bad = _BASE64_BAD.search(text)
    end = bad.start() if bad else len(text)
    alphabet = end - text.count("\r", 0, end) - text.count("\n", 0, end)
    j = alphabet % 4  # position inside the quantum where decoding stopped
    if bad is None:
        return None if j == 0 else len(text) - j
    p = bad.start()
    if text[p] != "=" or j < 2:
        return p
    si = p + 1
    if j == 2:  # "==" expected: the second "=" may follow newlines
        while si < len(text) and text[si] in _NEWLINES:
            si += 1
        if si == len(text):
            return len(text)
        if text[si] != "=":
            return si - 1
        si += 1
    while si < len(text) and text[si] in _NEWLINES:
        si += 1
    return si if si < len(text) else None


def canonical_base64(data: str, message: str, *, with_reason: bool = False) -> str:
    """`data` checked as strict base64 and written out again as native `images` carry it (the
    OpenAI and Anthropic content parts); BadRequest(`message`, with the decoder's reason when
    `with_reason`) if it does not decode."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{message}: {exc}" if with_reason else message) from None
    return base64.b64encode(raw).decode()


def image_list(images: Any, where: str) -> tuple[str | None, ...]:
    """`images` as Go decodes `[]api.ImageData` into the struct field `where`: base64 strings or
    null, else a 400 with Go's message."""
    if images is None:
        return ()
    if not isinstance(images, list):
        raise go_type_error(where, images, "[]api.ImageData")
    for image in images:
        if image is None:
            continue
        if not isinstance(image, str):
            raise go_type_error(where, image, "api.ImageData")
        at = base64_error(image)
        if at is not None:
            raise BadRequest(f"illegal base64 data at input byte {at}")
    return tuple(images)


def check_images(messages: Any) -> None:
    """The `images` of each message checked by `image_list`, before anything else."""
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                image_list(m.get("images"), "Message.images")
