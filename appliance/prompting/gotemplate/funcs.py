"""Go's builtin template functions and truth: `and or not eq ne lt le gt ge len index slice`,
the printing family and Ollama's `json`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.prompting.gotemplate.errors import TemplateError
from appliance.prompting.gotemplate.printing import go_json, go_sprint, go_sprint_args, go_sprintf
from appliance.prompting.gotemplate.values import MISSING, GoStruct, JSONList, go_type


def go_truth(value: Any) -> bool:
    """Go's `if`: false for the zero value of its kind, nil, and a missing value."""
    if value is MISSING or value is None:
        return False
    if isinstance(value, GoStruct):
        return True
    if isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    return True


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if value is None or value is MISSING:
        return "nil"
    return "other"


def _eq(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        if ka == "nil" or kb == "nil":
            return False
        raise TemplateError("incompatible types for comparison")
    if ka == "nil":
        return True
    if ka == "other":
        raise TemplateError(f"non-comparable type {go_type(a)}")
    return a == b


def _compare(a: Any, b: Any) -> int:
    ka, kb = _kind(a), _kind(b)
    if ka in ("bool", "nil", "other") or kb in ("bool", "nil", "other"):
        raise TemplateError("invalid type for comparison")
    if ka != kb:
        raise TemplateError("incompatible types for comparison")
    return (a > b) - (a < b)


def call(name: str, thunks: list[Callable[[], Any]]) -> Any:
    """Call builtin `name`; arguments are thunks so `and`/`or` evaluate only what they need."""
    if name in ("and", "or"):
        if not thunks:
            raise TemplateError(f"wrong number of args for {name}: want at least 1 got 0")
        value: Any = MISSING
        for thunk in thunks:
            value = thunk()
            if go_truth(value) == (name == "or"):
                return value
        return value
    args = [t() for t in thunks]

    def arity(n: int) -> None:
        if len(args) != n:
            raise TemplateError(f"wrong number of args for {name}: want {n} got {len(args)}")

    if name == "not":
        arity(1)
        return not go_truth(args[0])
    if name == "eq":
        if len(args) < 2:
            raise TemplateError("missing argument for comparison")
        return any(_eq(args[0], other) for other in args[1:])
    if name == "ne":
        arity(2)
        return not _eq(args[0], args[1])
    if name in ("lt", "le", "gt", "ge"):
        arity(2)
        c = _compare(args[0], args[1])
        return {"lt": c < 0, "le": c <= 0, "gt": c > 0, "ge": c >= 0}[name]
    if name == "len":
        arity(1)
        v = args[0]
        if isinstance(v, str):
            return len(v.encode())
        if isinstance(v, (list, tuple, dict)):
            return len(v)
        raise TemplateError(f"len of type {go_type(v)}")
    if name == "index":
        if not args:
            raise TemplateError("wrong number of args for index: want at least 1 got 0")
        return _index(args[0], args[1:])
    if name == "slice":
        if not args:
            raise TemplateError("wrong number of args for slice: want at least 1 got 0")
        return _slice(args[0], args[1:])
    if name == "print":
        return go_sprint_args(args)
    if name == "println":
        return " ".join(go_sprint(a) for a in args) + "\n"
    if name == "printf":
        if not args or not isinstance(args[0], str):
            raise TemplateError("printf needs a format string")
        return go_sprintf(args[0], args[1:])
    if name == "json":
        arity(1)
        return go_json(args[0])
    raise TemplateError(f'function "{name}" not defined')


def _int_arg(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TemplateError(f"cannot index slice/array with type {go_type(value)}")
    return value


def _index(item: Any, keys: list[Any]) -> Any:
    for key in keys:
        if isinstance(item, dict):
            item = item.get(key, MISSING)
        elif isinstance(item, (list, tuple)):
            i = _int_arg(key)
            if not 0 <= i < len(item):
                raise TemplateError(f"index out of range: {i}")
            item = item[i]
        elif isinstance(item, str):
            data = item.encode()
            i = _int_arg(key)
            if not 0 <= i < len(data):
                raise TemplateError(f"index out of range: {i}")
            item = data[i]
        elif item is None or item is MISSING:
            raise TemplateError("index of untyped nil")
        else:
            raise TemplateError(f"can't index item of type {go_type(item)}")
    return item


def _slice(item: Any, idx: list[Any]) -> Any:
    if len(idx) > 3:
        raise TemplateError(f"too many slice indexes: {len(idx)}")
    if isinstance(item, str):
        if len(idx) == 3:
            raise TemplateError("cannot 3-index slice a string")
        data = item.encode()
        size = len(data)
    elif isinstance(item, (list, tuple)):
        size = len(item)
    elif item is None or item is MISSING:
        raise TemplateError("slice of untyped nil")
    else:
        raise TemplateError(f"can't slice item of type {go_type(item)}")
    bounds = [_int_arg(i) for i in idx]
    lo = bounds[0] if bounds else 0
    hi = bounds[1] if len(bounds) > 1 else size
    if not 0 <= lo <= hi <= size:
        raise TemplateError(f"index out of range: {hi if hi > size else lo}")
    if isinstance(item, str):
        return data[lo:hi].decode(errors="replace")
    return type(item)(item[lo:hi]) if isinstance(item, JSONList) else list(item[lo:hi])
