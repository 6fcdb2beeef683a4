"""Request bodies, parsed once at the boundary: size, JSON syntax, depth, numbers, text.

Every JSON route reads its body through `read_json_object`, and every JSON text a client controls
inside a body (tool-call arguments) goes through `decode_json`, so no hostile value reaches a
handler: a body over the limit is a 413 (from `Content-Length` before a byte is read, or as soon
as a chunked body passes the limit), and nesting too deep, a number no float64 can hold, or a
`NaN`/`Infinity` literal is a 400 with Go's decoder text where Go has one. Lone surrogates
(`"\\ud800"`) become U+FFFD, as Go's decoder makes them, so no later encode can fail.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from quart import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from appliance.errors import BadRequest, PayloadTooLarge, ServerBusy
from appliance.gocompat.jsontypes import json_kind

MAX_BODY_BYTES = 64 * 1024 * 1024
"""The most a JSON body may hold: room for several base64 images in one chat."""

MAX_BUFFERED_BODY_BYTES = 256 * 1024 * 1024
"""The most bytes of JSON bodies held at once across all requests: without it a hundred
clients each sending just under the limit would hold 6 GiB before any answer."""

MAX_BLOB_BYTES = 1 << 40
"""The most one `POST /api/blobs/:digest` upload may stream to disk (1 TiB)."""

DECODE_IN_THREAD_BYTES = 1024 * 1024
"""Bodies at least this large are decoded in a worker thread."""

MAX_JSON_DEPTH = 128
"""Deepest nesting of arrays and objects accepted. Go's decoder allows 10,000, but Python's
decoder and every recursive walk after it (schemas to grammars, templates) stop near 1,000
frames; no real request nests beyond a few dozen levels."""

MAX_INT_DIGITS = 299
"""Integer literals up to this many digits stay integers. Longer ones are read as float64, as Go's
`interface{}` decoding does, and a 400 when no float64 holds them (Python would keep a
5,000-digit integer as an int, then raise ValueError past its 4,300-digit limit, or
OverflowError wherever it meets a float)."""

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789E", b"000000000e")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_CONSTANT_ERRORS = {
    "NaN": "invalid character 'N' looking for beginning of value",
    "Infinity": "invalid character 'I' looking for beginning of value",
    "-Infinity": "invalid character 'I' in numeric literal",
}


class _Rejected(Exception):
    """Raised from inside the decoder's hooks; becomes a BadRequest."""


def _shown(literal: str) -> str:
    return literal if len(literal) <= 40 else f"{literal[:20]}...({len(literal)} digits)"


def _parse_int(literal: str) -> int | float:
    digits = len(literal) - (literal[0] == "-")
    if digits <= MAX_INT_DIGITS:
        return int(literal)
    return _parse_float(literal)


def _parse_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _Rejected(
            f"json: cannot unmarshal number {_shown(literal)} into Go value of type float64"
        )
    return value


def _parse_constant(literal: str) -> Any:
    raise _Rejected(_CONSTANT_ERRORS.get(literal, f"invalid character in literal {literal}"))


def decode_json(raw: bytes | str) -> Any:
    """Decode one JSON text under the boundary's rules; BadRequest with the reason if refused.

    Python-level number hooks would make a body of ten million integers take 11 s instead of
    3 s, so they run only when the text holds a literal that could overflow (300 digits in a
    row, or a three-digit exponent); other checks are scans of the raw bytes.
    """
    data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("invalid JSON: body is not UTF-8") from None
    hooks: dict[str, Any] = {}
    if _may_overflow(data):
        hooks = {"parse_int": _parse_int, "parse_float": _parse_float}
    try:
        value = json.loads(text, parse_constant=_parse_constant, **hooks)
    except _Rejected as exc:
        raise BadRequest(str(exc)) from None
    except RecursionError:
        raise BadRequest("exceeded max depth") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc.msg} at offset {exc.pos}") from None
    except ValueError:  # Python's integer digit limit, should a literal slip past the scan
        raise BadRequest("json: cannot unmarshal number into Go value of type float64") from None
    fix_text = _SURROGATE_ESCAPE.search(data) is not None
    if fix_text or data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH:
        value = _checked(value, fix_text=fix_text)
    return value


def _may_overflow(data: bytes) -> bool:
    """Whether `data` holds 300 digits in a row or a three-digit exponent (a few substring
    searches over a translated copy: a regex here took 4 s on a body of digits)."""
    folded = data.translate(_DIGITS_TO_ZERO)
    return b"0" * (MAX_INT_DIGITS + 1) in folded or b"e000" in folded or b"e+000" in folded


def _checked(value: Any, *, fix_text: bool) -> Any:
    """`value` with its depth checked and lone surrogates replaced, walked without recursion."""
    if fix_text and isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadRequest("exceeded max depth")
        if isinstance(node, dict):
            if fix_text:
                for key in [k for k in node if _LONE_SURROGATE.search(k)]:
                    node[_LONE_SURROGATE.sub("\ufffd", key)] = node.pop(key)
            items = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        for key, item in list(items):
            if isinstance(item, (dict, list)):
                stack.append((item, depth + 1))
            elif fix_text and isinstance(item, str) and _LONE_SURROGATE.search(item):
                node[key] = _LONE_SURROGATE.sub("\ufffd", item)
    return value


class BodyBudget:
    """Bytes of request bodies being held, across every request of one server.

    A read takes its bytes as they arrive (or all of a declared `Content-Length` up front) and
    gives them back once the body is decoded; a read that would pass the budget is a 503 with
    `Retry-After`, sent before it buffers anything more.
    """

    def __init__(self, limit: int = MAX_BUFFERED_BODY_BYTES) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise ServerBusy(
                "server busy, please try again.  too many request bodies are being read"
            )
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


@asynccontextmanager
async def body_bytes(limit: int = MAX_BODY_BYTES) -> AsyncIterator[bytes]:
    """The whole request body, refused with 413 as soon as it is known to pass `limit`.

    A `Content-Length` over the limit is refused before any of the body is read; a chunked body
    is counted as it arrives and dropped at the limit, so a hostile body never sits in memory.
    The bytes count against the server's `BodyBudget` until the block ends.
    """
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge()
    budget: BodyBudget | None = getattr(current_app, "body_budget", None)
    held = 0

    def hold(n: int) -> None:
        nonlocal held
        if budget is not None and n > held:
            budget.take(n - held)
            held = n

    try:
        hold(length or 0)
        data = bytearray()
        timeout = request.body_timeout if request.body_timeout is not None else math.inf
        with trio.move_on_after(timeout) as scope:
            try:
                async for chunk in request.body:
                    data += chunk
                    if len(data) > limit:
                        raise PayloadTooLarge()
                    hold(len(data))
            except RequestEntityTooLarge:
                raise PayloadTooLarge() from None
        if scope.cancelled_caught:
            raise BadRequest("timed out reading the request body", status=408)
        yield bytes(data)
    finally:
        if budget is not None:
            budget.give(held)


async def read_json_object(*, allow_empty: bool = False) -> dict[str, Any]:
    """The request's JSON object; 400 `missing request body` when empty (Go's decoder: EOF)."""
    async with body_bytes() as raw:
        if not raw.strip():
            if allow_empty:
                return {}
            raise BadRequest("missing request body")
        if len(raw) < DECODE_IN_THREAD_BYTES:
            value = decode_json(raw)
        else:  # Python-level work (number hooks, the depth walk) then lets the event loop run
            value = await trio.to_thread.run_sync(decode_json, raw)
    if not isinstance(value, dict):
        raise BadRequest(f"json: cannot unmarshal {json_kind(value)} into Go value of type object")
    return value
