"""How Go names a decoded JSON value in its error texts: one place for the four spellings.

Ollama's answers quote Go's `encoding/json` (`json: cannot unmarshal <kind> into Go struct field
...`) and `fmt`'s `%T` of an `interface{}` value (`Unsupported type: 'map[string]interface {}'`);
clients match on those texts, so every route spells them the same way.
"""

from __future__ import annotations

from typing import Any

#: Python type of a decoded JSON value -> (its `json.UnmarshalTypeError` kind, its Go `%T`).
#: bool before the numbers: a bool is an int in Python.
_NAMES: tuple[tuple[type | tuple[type, ...], str, str], ...] = (
    (type(None), "null", "<nil>"),
    (bool, "bool", "bool"),
    ((int, float), "number", "float64"),
    (str, "string", "string"),
    (list, "array", "[]interface {}"),
)
_OBJECT = ("object", "map[string]interface {}")


def _names(value: Any) -> tuple[str, str]:
    for kind, json_name, go_name in _NAMES:
        if isinstance(value, kind):
            return json_name, go_name
    return _OBJECT


def json_kind(value: Any) -> str:
    """The JSON kind `json.UnmarshalTypeError` names: bool, number, string, array, object, null."""
    return _names(value)[0]


def go_type_name(value: Any) -> str:
    """Go's `%T` of a JSON value decoded into `interface{}`."""
    return _names(value)[1]
