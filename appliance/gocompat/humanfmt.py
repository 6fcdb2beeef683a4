"""Ollama's `format` package for numbers: one rule for `/api/show`'s parameter size and the CLI."""

from __future__ import annotations

import math


def human_number(n: int) -> str:
    """Ollama's format.HumanNumber (parameter counts): 8B, 3.2B, 270.37M, 12K, 999."""
    if n >= 10**9:
        v = n / 10**9
        return f"{v:.0f}B" if v == math.floor(v) else f"{v:.1f}B"
    if n >= 10**6:
        v = n / 10**6
        return f"{v:.0f}M" if v == math.floor(v) else f"{v:.2f}M"
    if n >= 10**3:
        return f"{n / 10**3:.0f}K"
    return str(n)
