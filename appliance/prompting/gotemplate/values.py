"""Go values as templates see them, and the Go facts about them every stage needs.

A `dict` is a Go `map[string]any` (a missing key is `MISSING`, iteration in sorted key order);
`OrderedMap` keeps insertion order (Ollama's ordered maps); `GoStruct` is a Go struct; `JSONList` is
a slice type whose `String()` marshals itself.
"""

from __future__ import annotations

from typing import Any


class _Missing:
    """Go's invalid `reflect.Value`: what a missing map key evaluates to."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class OrderedMap(dict):
    """A map whose JSON encoding and iteration keep insertion order (Ollama's ordered maps)."""


class GoStruct:
    """A Go struct value: fields by Go name, its `json.Marshal` form, how `{{ . }}` prints it."""

    __slots__ = ("fields", "json_value", "stringer")

    def __init__(self, fields: dict[str, Any], json_value: Any = None, *, stringer: bool = False):
        self.fields = fields
        self.json_value = json_value if json_value is not None else fields
        self.stringer = stringer

    def __repr__(self) -> str:
        return f"GoStruct({self.fields!r})"


class JSONList(list):
    """A Go slice type with a `String()` that marshals itself (Ollama's `api.Tools`)."""


def go_type(value: Any) -> str:
    """The Go type name of a value, as Go's error messages write it."""
    return {bool: "bool", int: "int", float: "float64", str: "string"}.get(
        type(value), type(value).__name__
    )


def map_key(key: Any) -> Any:
    """Sort key for a Go map's keys: Go sorts keys of one type; mixed types stay grouped."""
    return (str(type(key)), key)
