"""Incremental text for streaming: whole UTF-8 characters only, and stop strings never leaked.

A token's piece can end in the middle of a multi-byte character, and a stop string can span
several pieces. Both classes below hold back just enough to be right and emit the rest at once,
so per-token work stays proportional to the piece, not to the generation so far.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable


class Utf8Stream:
    """Feed raw bytes, get back only complete characters; invalid bytes become U+FFFD."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data, final=False)

    def flush(self) -> str:
        """Whatever is still held (an incomplete character ends up as U+FFFD)."""
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Feed generated text; emits what is safe and reports the first stop string it completes.

    Text that could be the start of a stop string is held back until the next piece decides it.
    On a match, the text before the stop is emitted and the stop (and anything after it) is not.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops: tuple[str, ...] = tuple(s for s in stops if s)
        self._hold_max = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit now, whether a stop string was completed)."""
        if self.matched is not None:
            return "", True
        if not self.stops:
            return text, False
        buf = self._pending + text
        first = -1
        for stop in self.stops:
            idx = buf.find(stop)
            if idx != -1 and (first == -1 or idx < first):
                first, self.matched = idx, stop
        if first != -1:
            self._pending = ""
            return buf[:first], True
        hold = self._held_suffix(buf)
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        """Held text, released when generation ends without completing a stop."""
        if self.matched is not None:
            return ""
        pending, self._pending = self._pending, ""
        return pending

    def _held_suffix(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that begins some stop string."""
        for k in range(min(len(buf), self._hold_max), 0, -1):
            tail = buf[-k:]
            if any(stop.startswith(tail) for stop in self.stops):
                return k
        return 0
