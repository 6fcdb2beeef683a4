"""Go's strconv integer parsing, base 10: the one place that says which text is a Go integer.

Ollama reads integers from the environment, OLLAMA_HOST's port and Modelfile parameters with
`strconv.ParseInt` / `ParseUint`; Python's `int()` takes more (`_`, spaces, non-ASCII digits), so
every such read goes through here.
"""

from __future__ import annotations

import re

_UNSIGNED = re.compile(r"[0-9]+")
_SIGNED = re.compile(r"[+-]?[0-9]+")
_BOOLS = {
    "1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
    "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False,
}  # fmt: skip


_MAX_DIGITS = 39
"""More significant digits than any 128-bit value has: out of range for every size Go parses, and
read without `int()`, which refuses texts over 4,300 digits (a ValueError, not Go's range error)."""


def _decimal(text: str) -> int:
    """The value of a checked decimal text; past `_MAX_DIGITS`, a value beyond every bound."""
    digits = text.lstrip("+-").lstrip("0") or "0"
    negative = text.startswith("-")
    if len(digits) > _MAX_DIGITS:
        return -(1 << 128) if negative else 1 << 128
    return -int(digits) if negative else int(digits)


def parse_bool(text: str) -> bool | None:
    """strconv.ParseBool: the accepted spellings, or None."""
    return _BOOLS.get(text)


def parse_int(text: str, bits: int = 64) -> int | None:
    """strconv.ParseInt(text, 10, bits), or None where Go returns an error (syntax or range)."""
    if not _SIGNED.fullmatch(text):
        return None
    value = _decimal(text)
    bound = 1 << (bits - 1)
    return value if -bound <= value < bound else None


def parse_int_clamped(text: str, bits: int = 64) -> int | None:
    """`n, _ := strconv.ParseInt(text, 10, bits)` where only bad syntax counts: None for that,
    and out of range the nearest bound, as Go returns it beside ErrRange."""
    if not _SIGNED.fullmatch(text):
        return None
    bound = 1 << (bits - 1)
    return max(-bound, min(bound - 1, _decimal(text)))


def parse_uint(text: str, bits: int = 64) -> int | None:
    """strconv.ParseUint(text, 10, bits), or None where Go returns an error (no sign allowed)."""
    if not _UNSIGNED.fullmatch(text):
        return None
    value = _decimal(text)
    return value if value < 1 << bits else None
