"""Durations exactly as Ollama reads and prints them.

Clients send `keep_alive` as JSON numbers (seconds) or Go duration strings, and users write
`OLLAMA_KEEP_ALIVE=10m` or `=3600`; each source has its own asymmetric rules (reference §5, §7),
pinned by Ollama's TestKeepAlive and TestKeepAliveParsingFromJSON. Go's `time.ParseDuration` is
reproduced here, error messages included, because clients show those messages verbatim.

Durations travel through the appliance as float seconds; `FOREVER` (math.inf) stands for Go's
MaxInt64 nanoseconds.
"""

from __future__ import annotations

import math
from typing import Any

from appliance.errors import BadRequest
from appliance.gocompat.jsontypes import go_type_name
from appliance.gocompat.strconv import parse_int

FOREVER = math.inf

NANOSECOND = 1
MICROSECOND = 1_000
MILLISECOND = 1_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

MAX_NS = (1 << 63) - 1  # Go's time.Duration(math.MaxInt64): "forever"

_UNITS = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "\u00b5s": MICROSECOND,  # µ, micro sign
    "\u03bcs": MICROSECOND,  # μ, Greek mu
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}


class DurationError(ValueError):
    """A string Go's time.ParseDuration rejects; the message is Go's, word for word."""


def _go_quote(text: str) -> str:
    """Go's time.quote: non-ASCII and control bytes as \\x escapes, `"` and `\\` escaped."""
    out = ['"']
    for ch in text:
        if ord(ch) >= 0x80 or ch < " ":
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
        else:
            if ch in '"\\':
                out.append("\\")
            out.append(ch)
    out.append('"')
    return "".join(out)


def parse_go_duration_ns(text: str) -> int:
    """Go's `time.ParseDuration`, in integer nanoseconds (may be negative)."""
    invalid = DurationError(f"time: invalid duration {_go_quote(text)}")
    neg = bool(text) and text[0] == "-"
    s = text[1:] if text and text[0] in "+-" else text
    if s == "0":
        return 0
    if s == "":
        raise invalid
    total = 0
    while s:
        value, s = _duration_term(s, text, invalid)
        total += value
        if total > 1 << 63:
            raise invalid
    if neg:
        return -total
    if total > MAX_NS:
        raise invalid
    return total


def _duration_term(s: str, orig: str, invalid: DurationError) -> tuple[int, str]:
    """One `<number><unit>` of a duration (`1.5h`): its nanoseconds and the text after it."""
    if not (s[0] == "." or "0" <= s[0] <= "9"):
        raise invalid
    whole, rest = _leading_int(s, invalid)
    pre = len(rest) != len(s)
    frac, scale, post = 0, 1.0, False
    if rest and rest[0] == ".":
        after_dot = rest[1:]
        frac, scale, rest = _leading_fraction(after_dot)
        post = len(rest) != len(after_dot)
    if not pre and not post:
        raise invalid
    unit, rest = _leading_unit(rest, orig)
    if whole > (1 << 63) // unit:
        raise invalid
    value = whole * unit
    if frac > 0:
        value += int(float(frac) * (float(unit) / scale))
        if value > 1 << 63:
            raise invalid
    return value, rest


def _leading_int(s: str, invalid: DurationError) -> tuple[int, str]:
    """Go's leadingInt: the digits that start `s` as a number (past 1<<63 is invalid), the rest."""
    i = 0
    whole = 0
    while i < len(s) and "0" <= s[i] <= "9":
        if whole > (1 << 63) // 10:
            raise invalid
        whole = whole * 10 + ord(s[i]) - 48
        if whole > 1 << 63:
            raise invalid
        i += 1
    return whole, s[i:]


def _leading_fraction(s: str) -> tuple[int, float, str]:
    """Go's leadingFraction: the digits after a `.` as a number and its scale (digits past what
    int64 holds are dropped, not an error), and the rest."""
    i = 0
    frac, scale = 0, 1.0
    overflow = False
    while i < len(s) and "0" <= s[i] <= "9":
        if not overflow:
            if frac > ((1 << 63) - 1) // 10:
                overflow = True
            else:
                nxt = frac * 10 + ord(s[i]) - 48
                if nxt > 1 << 63:
                    overflow = True
                else:
                    frac = nxt
                    scale *= 10
        i += 1
    return frac, scale, s[i:]


def _leading_unit(s: str, orig: str) -> tuple[int, str]:
    """The unit that follows a number (everything up to the next digit or `.`) in nanoseconds,
    and the rest; Go's message for a missing or unknown one."""
    i = 0
    while i < len(s) and not (s[i] == "." or "0" <= s[i] <= "9"):
        i += 1
    if i == 0:
        raise DurationError(f"time: missing unit in duration {_go_quote(orig)}")
    unit = _UNITS.get(s[:i])
    if unit is None:
        raise DurationError(f"time: unknown unit {_go_quote(s[:i])} in duration {_go_quote(orig)}")
    return unit, s[i:]


def parse_go_duration(text: str) -> float:
    """Go's `time.ParseDuration` in float seconds; DurationError carries Go's message."""
    return parse_go_duration_ns(text) / SECOND


def _ns_to_seconds(ns: int) -> float:
    if ns < 0 or ns >= MAX_NS:
        return FOREVER
    return ns / SECOND


def parse_keep_alive(value: Any) -> float | None:
    """A request's `keep_alive` (decoded JSON) in seconds, per Ollama's Duration.UnmarshalJSON.

    None for absent/null (the caller keeps its current duration); numbers are seconds; strings need
    Go units; anything negative is FOREVER. Bad input is a BadRequest with Go's message.
    """
    if value is None:
        return None
    if isinstance(value, (bool, dict, list)):
        raise BadRequest(f"Unsupported type: '{go_type_name(value)}'")
    if isinstance(value, (int, float)):
        if value < 0:
            return FOREVER
        # Go: time.Duration(t * float64(time.Second)), truncated to whole nanoseconds.
        product = float(value) * SECOND
        if not math.isfinite(product) or product >= MAX_NS:
            return FOREVER
        return _ns_to_seconds(int(product))
    if isinstance(value, str):
        try:
            ns = parse_go_duration_ns(value)
        except DurationError as exc:
            raise BadRequest(str(exc)) from None
        return _ns_to_seconds(ns)
    raise BadRequest(f"Unsupported type: '{go_type_name(value)}'")


def parse_env_duration(text: str | None, default: float) -> float:
    """An OLLAMA_* duration variable: Go duration, else integer seconds, else `default`.

    Negative values mean FOREVER. The caller trims (config's Var()) and warns when
    `env_duration_seconds` says the text is invalid.
    """
    if not text:
        return default
    seconds = env_duration_seconds(text)
    return default if seconds is None else seconds


def env_duration_seconds(text: str) -> float | None:
    """Seconds for an env-style duration (negative = FOREVER); None where Ollama falls back."""
    try:
        ns = parse_go_duration_ns(text)
    except DurationError:
        n = parse_int(text)
        if n is None:
            return None
        ns = n * SECOND
    if ns < 0:
        return FOREVER
    return _ns_to_seconds(ns)


def format_go_duration(seconds: float) -> str:
    """Go's Duration.String(): "5m0s", "1h0m0s", "1.5s", "500ms"; FOREVER prints MaxInt64."""
    if math.isinf(seconds):
        ns = MAX_NS if seconds > 0 else -MAX_NS - 1
    else:
        ns = round(seconds * SECOND)
        ns = max(-MAX_NS - 1, min(MAX_NS, ns))
    return _format_ns(ns)


def _format_frac(value: int, prec: int) -> tuple[str, int]:
    """Go's fmtFrac: the fraction of value/10**prec without trailing zeros, and the integer part."""
    digits = []
    printed = False
    for _ in range(prec):
        digit = value % 10
        printed = printed or digit != 0
        if printed:
            digits.append(str(digit))
        value //= 10
    frac = ("." + "".join(reversed(digits))) if printed else ""
    return frac, value


def _format_ns(ns: int) -> str:
    neg = ns < 0
    u = -ns if neg else ns
    if u < SECOND:
        if u == 0:
            return "0s"
        if u < MICROSECOND:
            frac, whole, unit = "", u, "ns"
        elif u < MILLISECOND:
            frac, whole = _format_frac(u, 3)
            unit = "\u00b5s"
        else:
            frac, whole = _format_frac(u, 6)
            unit = "ms"
        text = f"{whole}{frac}{unit}"
    else:
        frac, whole = _format_frac(u, 9)
        seconds = whole % 60
        minutes_total = whole // 60
        text = f"{seconds}{frac}s"
        if minutes_total > 0:
            text = f"{minutes_total % 60}m{text}"
            hours = minutes_total // 60
            if hours > 0:
                text = f"{hours}h{text}"
    return "-" + text if neg else text
