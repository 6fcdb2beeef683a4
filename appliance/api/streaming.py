"""NDJSON and SSE framing for streamed answers.

The generators here only relay: they never open a cancel scope or nursery around a `yield` (trio's
rule for async generators). Whatever produces the items owns its own cleanup in the iterable's
`finally`, which runs synchronously when the client goes away.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from quart import Response

from appliance.api.errors import NATIVE, OPENAI, error_body, error_status_and_message

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def dumps(obj: Any) -> str:
    """Compact JSON like Go's encoder: no spaces, non-ASCII kept as is."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _ndjson_line(item: dict[str, Any]) -> bytes:
    return (dumps(item) + "\n").encode()


def ndjson_response(items: AsyncIterable[dict[str, Any]], *, status: int = 200) -> Response:
    """Stream dicts as NDJSON, one object a line, flushed per item, never cut by a timeout."""
    response = Response(_framed(items, _ndjson_line, NATIVE), status=status, content_type=NDJSON)
    response.timeout = None
    return response


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """A typed server-sent event: an `event: <name>` line before its `data:` line, as the
    Responses and Anthropic streams send them."""

    name: str
    data: dict[str, Any]


def _sse_frame(item: dict[str, Any] | str | SSEEvent) -> bytes:
    if isinstance(item, SSEEvent):
        return f"event: {item.name}\ndata: {dumps(item.data)}\n\n".encode()
    data = item if isinstance(item, str) else dumps(item)
    return f"data: {data}\n\n".encode()


async def _framed(
    items: AsyncIterable[Any], frame: Callable[[Any], bytes], dialect: str, typed: bool = False
) -> AsyncIterator[bytes]:
    """Each item as `frame` writes it; an error after the first byte (the status is sent by
    then) as one more frame in `dialect`'s error shape, an `error` event when `typed`."""
    try:
        async for item in items:
            yield frame(item)
    except Exception as exc:
        status, message = error_status_and_message(exc)
        if status >= 500:
            log.warning("stream ended with error: %s", message)
        err = error_body(dialect, status, message)
        yield frame(SSEEvent("error", err) if typed else err)
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


class EventTranslator(Protocol):
    """Turns native stream objects into one API's typed events (Anthropic, Responses)."""

    def start(self) -> Iterable[SSEEvent | dict[str, Any] | str]: ...

    def process(self, obj: dict[str, Any]) -> Iterable[SSEEvent | dict[str, Any] | str]: ...


async def translated_events(
    items: AsyncIterator[dict[str, Any]], events: EventTranslator
) -> AsyncIterator[dict[str, Any] | str | SSEEvent]:
    """The translator's opening events, then its events for each native object up to the done
    one; the native stream is closed however this ends (it holds the slot's channel)."""
    try:
        for event in events.start():
            yield event
        async for obj in items:
            for event in events.process(obj):
                yield event
            if obj.get("done"):
                return
    finally:
        await items.aclose()  # type: ignore[attr-defined]


def sse_response(
    items: AsyncIterable[dict[str, Any] | str | SSEEvent],
    *,
    dialect: str = OPENAI,
    typed: bool = False,
) -> Response:
    """Server-sent events for OpenAI and Anthropic clients; a str item is sent verbatim (e.g.
    `[DONE]`), an `SSEEvent` with its `event:` line. An error after the first byte is sent as
    one more event in `dialect`'s error shape (an `error` event when the stream is `typed`)."""
    response = Response(_framed(items, _sse_frame, dialect, typed), status=200, content_type=SSE)
    response.headers["Cache-Control"] = "no-cache"
    response.timeout = None
    return response


def json_response(obj: Any, *, status: int = 200, content_type: str | None = None) -> Response:
    return Response(
        dumps(obj), status=status, content_type=content_type or "application/json; charset=utf-8"
    )
