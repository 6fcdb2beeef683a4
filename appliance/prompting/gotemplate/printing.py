"""How Go prints values: fmt's `%v`, `Sprint`, `Sprintf`, and `json.Marshal` (Ollama's `json`).

Stringers print by their `String()`, which for Ollama's tool types marshals the value, so printing
and JSON live together.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from appliance.prompting.gotemplate.errors import TemplateError
from appliance.prompting.gotemplate.values import (
    MISSING,
    GoStruct,
    JSONList,
    OrderedMap,
    go_type,
    map_key,
)


def go_format_float(f: float) -> str:
    """fmt's `%v` for a float64 (strconv 'g' with the shortest digits)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    digits, exp = _shortest(f)
    sign = "-" if f < 0 else ""
    if exp < -4 or exp >= 6:  # strconv's 'g' with shortest digits decides at precision 6
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return sign + _positional(digits, exp)


def _shortest(f: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of |f| and the exponent of the first digit."""
    text = repr(abs(f))
    if "e" in text:
        mant, _, exp_text = text.partition("e")
        exp = int(exp_text)
        digits = mant.replace(".", "")
    else:
        whole, _, frac = text.partition(".")
        frac = frac.rstrip("0")
        if whole != "0":
            digits = (whole + frac).rstrip("0") or "0"
            exp = len(whole) - 1
        else:
            stripped = frac.lstrip("0")
            exp = -(len(frac) - len(stripped)) - 1
            digits = stripped
    return digits.rstrip("0") or "0", exp


def _positional(digits: str, exp: int) -> str:
    if exp < 0:
        return "0." + "0" * (-exp - 1) + digits
    if len(digits) <= exp + 1:
        return digits + "0" * (exp + 1 - len(digits))
    return digits[: exp + 1] + "." + digits[exp + 1 :]


def go_sprint(value: Any) -> str:
    """How `{{ value }}` prints: fmt's `%v`, with Stringers printed by their `String()`."""
    if value is MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        v = go_format_float(value)
        return v
    if isinstance(value, GoStruct):
        if value.stringer:
            return go_json(value)
        return "{" + " ".join(go_sprint(v) for v in value.fields.values()) + "}"
    if isinstance(value, JSONList):
        return go_json(value)
    if isinstance(value, OrderedMap):
        return "map[" + " ".join(f"{go_sprint(k)}:{go_sprint(v)}" for k, v in value.items()) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=map_key)
        return "map[" + " ".join(f"{go_sprint(k)}:{go_sprint(value[k])}" for k in keys) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_sprint(v) for v in value) + "]"
    if isinstance(value, bytes):
        return "[" + " ".join(str(b) for b in value) + "]"
    return str(value)


def go_sprint_args(args: list[Any]) -> str:
    """fmt.Sprint: a space between operands when neither side is a string."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if i > 0 and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(go_sprint(arg))
    return "".join(out)


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def go_sprintf(fmt: str, args: list[Any]) -> str:
    """fmt.Sprintf for the basic verbs %v %s %d %q %t %f %g %e %x %X %c and %%."""
    out: list[str] = []
    pos = 0
    argi = 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[argi]
        argi += 1
        if prec is not None and _too_large(prec):
            out.append("%!(BADPREC)")  # Go's fmt refuses widths and precisions over 1e6
            prec = None
        text = _format_verb(verb, arg, prec)
        if width and _too_large(width):
            out.append("%!(BADWIDTH)" + text)
            continue
        if width:
            w = int(width)
            if "-" in flags:
                text = text.ljust(w)
            elif "0" in flags and verb in "dfegxX":
                neg = text.startswith("-")
                text = ("-" if neg else "") + text.lstrip("-").rjust(w - neg, "0")
            else:
                text = text.rjust(w)
        out.append(text)
    out.append(fmt[pos:])
    if argi < len(args):
        extra = ", ".join(f"{go_type(a)}={go_sprint(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _too_large(digits: str) -> bool:
    return len(digits) > 7 or int(digits) > 1_000_000


def _format_verb(verb: str, arg: Any, prec: str | None) -> str:
    if verb in ("v", "s"):
        text = go_sprint(arg)
        return text[: int(prec)] if prec is not None and verb == "s" else text
    if verb == "q" and isinstance(arg, str):
        return json.dumps(arg, ensure_ascii=False)
    if verb == "t" and isinstance(arg, bool):
        return "true" if arg else "false"
    if verb == "d" and isinstance(arg, int) and not isinstance(arg, bool):
        return str(arg)
    if verb == "c" and isinstance(arg, int) and not isinstance(arg, bool):
        return chr(arg)
    if verb in "xX" and isinstance(arg, (int, str)) and not isinstance(arg, bool):
        text = format(arg, "x") if isinstance(arg, int) else arg.encode().hex()
        return text.upper() if verb == "X" else text
    if verb in "feEgG" and isinstance(arg, (int, float)) and not isinstance(arg, bool):
        if verb in "gG" and prec is None:
            return go_format_float(float(arg))
        p = 6 if prec is None else int(prec)
        text = format(float(arg), f".{p}{verb}")
        return re.sub(r"e([+-])(\d)$", r"e\g<1>0\2", text)
    return f"%!{verb}({go_type(arg)}={go_sprint(arg)})"


def go_json(value: Any) -> str:
    """`json.Marshal` as Go does it: compact, map keys sorted, `<`, `>`, `&` escaped."""
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts)


_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _encode(value: Any, out: list[str]) -> None:
    if isinstance(value, GoStruct):
        _encode(value.json_value, out)
    elif value is None or value is MISSING:
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_json_float(value))
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        out.append(re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group()], text))
    elif isinstance(value, dict):
        keys = list(value) if isinstance(value, OrderedMap) else sorted(value, key=str)
        out.append("{")
        for i, k in enumerate(keys):
            if i:
                out.append(",")
            _encode(str(k), out)
            out.append(":")
            _encode(value[k], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            _encode(v, out)
        out.append("]")
    else:
        raise TemplateError(f"json: unsupported type {type(value).__name__}")


def _json_float(f: float) -> str:
    if math.isnan(f) or math.isinf(f):
        raise TemplateError(f"json: unsupported value: {f}")
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    digits, exp = _shortest(f)
    sign = "-" if f < 0 else ""
    if abs(f) < 1e-6 or abs(f) >= 1e21:
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mant}e{'-' if exp < 0 else '+'}{abs(exp)}"
    return sign + _positional(digits, exp)
