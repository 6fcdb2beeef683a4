"""Bounds on a `format` JSON schema, checked before it becomes a grammar.

The schema-to-GBNF converter writes every repetition out: `{"type": "array", "minItems": 10**8}`
becomes a 1.7 GB grammar after 21 s on the event loop, and `"pattern": "^(a{1000}){1000}$"` a
million copies of `a`. Ollama (llama.cpp's converter) has no bound. Here the counts a schema
asks for are added up (nested pattern quantifiers multiply) and a schema past `MAX_REPEATS` is a
400 before any grammar is built; real schemas ask for hundreds or a few thousand.
"""

from __future__ import annotations

import re
from typing import Any

from appliance.errors import BadRequest

MAX_REPEATS = 100_000
"""Repetitions a schema may ask for in all (each costs a few bytes of grammar, about 2 MB)."""

COUNT_KEYWORDS = (
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
_QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def check_format_bounds(schema: Any) -> None:
    """400 when `schema` (a decoded `format` object) would expand past `MAX_REPEATS`."""
    total = 0
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key in COUNT_KEYWORDS and isinstance(value, (int, float)):
                total += max(0, int(min(value, MAX_REPEATS + 1)))
            elif key == "pattern" and isinstance(value, str):
                total += pattern_cost(value)
            elif isinstance(value, (dict, list)):
                stack.append(value)
        if total > MAX_REPEATS:
            raise BadRequest(
                f"invalid JSON schema in format: it asks for more than {MAX_REPEATS} "
                "repetitions in all (minItems, maxLength, pattern counts...)"
            )


def pattern_cost(pattern: str) -> int:
    """About how many atoms a regex expands to when every `{n,m}` is written out.

    Each atom costs 1; a quantifier multiplies the atom or group before it by its largest count
    (`*`, `+`, `?` add nothing: the grammar loops instead of expanding). Counts are capped, so a
    hostile pattern cannot make this arithmetic itself expensive.
    """
    cap = MAX_REPEATS + 1
    groups: list[list[int]] = [[]]  # costs of the atoms of each open group
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            groups[-1].append(1)
            i += 2
            continue
        if ch == "[":
            end = pattern.find("]", i + 2)
            groups[-1].append(1)
            i = len(pattern) if end < 0 else end + 1
            continue
        if ch == "(":
            groups.append([])
        elif ch == ")" and len(groups) > 1:
            inner = min(sum(groups.pop()), cap)
            groups[-1].append(inner)
        elif ch == "{":
            match = _QUANTIFIER.match(pattern, i)
            if match and groups[-1]:
                digits = match.group(2) or match.group(1)
                count = int(digits) if len(digits) <= 9 else cap
                groups[-1][-1] = min(groups[-1][-1] * min(count, cap), cap)
                i = match.end()
                continue
            groups[-1].append(1)
        elif ch not in "*+?|^$":
            groups[-1].append(1)
        i += 1
    return min(sum(sum(g) for g in groups), cap)
