"""Request body parsing with Ollama's answers for empty and malformed bodies."""

from __future__ import annotations

import json
from typing import Any

from quart import request

from appliance.errors import BadRequest

MAX_BODY_BYTES = 64 * 1024 * 1024


async def read_json_object(*, allow_empty: bool = False) -> dict[str, Any]:
    """The request's JSON object; 400 `missing request body` when empty (Go's decoder: EOF)."""
    raw = await request.get_data(cache=False, as_text=False)
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest("request body too large")
    if not raw.strip():
        if allow_empty:
            return {}
        raise BadRequest("missing request body")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc.msg} at offset {exc.pos}") from None
    except UnicodeDecodeError:
        raise BadRequest("invalid JSON: body is not UTF-8") from None
    if not isinstance(value, dict):
        raise BadRequest(f"json: cannot unmarshal {_go_type(value)} into Go value of type object")
    return value


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "null"


def field_of_type(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    """A typed optional field; a wrong type is a 400 naming the field, as Go's decoder does."""
    value = body.get(name)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if bool in kinds or not isinstance(value, bool):
        if isinstance(value, kinds):
            return value
    expected = "/".join(k.__name__ for k in kinds)
    raise BadRequest(
        f"json: cannot unmarshal {_go_type(value)} into Go struct field .{name} of type {expected}"
    )
