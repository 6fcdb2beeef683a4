"""How Go names a decoded JSON value in its error texts: one place for the four spellings.

Ollama's answers quote Go's `encoding/json` (`json: cannot unmarshal <kind> into Go struct field
...`) and `fmt`'s `%T` of an `interface{}` value (`Unsupported type: 'map[string]interface {}'`);
clients match on those texts, so every route spells them the same way.
"""

from __future__ import annotations

from typing import Any


def json_kind(value: Any) -> str:
    """The JSON kind `json.UnmarshalTypeError` names: bool, number, string, array, object, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def go_type_name(value: Any) -> str:
    """Go's `%T` of a JSON value decoded into `interface{}`."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"
