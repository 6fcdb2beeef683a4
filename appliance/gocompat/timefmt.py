"""Timestamps formatted the way Go's `time.Time` marshals to JSON (RFC3339 with nanoseconds).

Clients parse `created_at`/`modified_at`/`expires_at` with Go or with lenient parsers; Go writes
fractional seconds with trailing zeros trimmed (`.5`, `.123456789`, none at all when whole) and `Z`
for a zero offset, so we do the same.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def go_time(dt: datetime, *, nanosecond: int | None = None) -> str:
    """`dt` as Go's RFC3339Nano; `nanosecond` (0..999999999) overrides the microsecond field.

    A naive datetime is taken as local time, as Go's `time.Local` would show it.
    """
    if dt.tzinfo is None:
        dt = dt.astimezone()
    frac = dt.microsecond * 1000 if nanosecond is None else nanosecond
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    offset = dt.utcoffset()
    seconds = int(offset.total_seconds()) if offset is not None else 0
    if seconds == 0:
        return text + "Z"
    sign = "+" if seconds > 0 else "-"
    seconds = abs(seconds)
    return f"{text}{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}"


def go_time_ns(epoch_ns: int) -> str:
    """A Unix time in nanoseconds (e.g. `st_mtime_ns`) in the local zone, at full precision."""
    dt = datetime.fromtimestamp(epoch_ns // 1_000_000_000, tz=UTC).astimezone()
    return go_time(dt, nanosecond=epoch_ns % 1_000_000_000)


def utc_now_go() -> str:
    """Now in UTC, as Ollama writes `created_at` (`...Z`)."""
    ns = time.time_ns()
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC)
    return go_time(dt, nanosecond=ns % 1_000_000_000)
