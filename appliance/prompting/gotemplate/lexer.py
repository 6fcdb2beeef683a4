"""Go's template lexer: text and actions, trim markers, comments, and the tokens of an action."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from appliance.prompting.gotemplate.errors import TemplateError

SPACE = " \t\r\n"
_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+"
    r"|(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
}
_HEX_WIDTH = {"x": 2, "u": 4, "U": 8}


@dataclass
class Tok:
    kind: str  # field var ident string number char ( ) | := = , dot
    value: Any
    line: int
    end: int = 0  # offset just past the token, to see whether a field follows with no space


def lex(text: str) -> Iterator[tuple[str, Any, int]]:
    """Yield ("text", str, line) and ("action", tokens, line) items, applying trim markers."""
    pos = 0
    line = 1
    trim_next = False
    n = len(text)
    while pos <= n:
        start = text.find("{{", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        if trim_next:
            chunk = chunk.lstrip(SPACE)
        trim_next = False
        if start < 0:
            if chunk:
                yield "text", chunk, line
            return
        trim_left = text.startswith("{{-", start) and start + 3 < n and text[start + 3] in SPACE
        if trim_left:
            chunk = chunk.rstrip(SPACE)
        if chunk:
            yield "text", chunk, line
        line += text.count("\n", pos, start)
        inner = start + (3 if trim_left else 2)
        comment = _comment_start(text, inner, trim_left)
        if comment is not None:
            pos, trim_next, line = _skip_comment(text, start, comment, line)
            continue
        toks, pos, trim_next, new_line = _lex_action(text, inner, line)
        yield "action", toks, line
        line = new_line


def _comment_start(text: str, inner: int, trim_left: bool) -> int | None:
    """Where `/*` opens a comment action (after `{{` or `{{- `), or None for a normal action."""
    after_space = inner
    if trim_left:
        while after_space < len(text) and text[after_space] in SPACE:
            after_space += 1
    if text.startswith("/*", after_space):
        return after_space
    if text.startswith("/*", inner):
        return inner
    return None


def _skip_comment(text: str, start: int, cstart: int, line: int) -> tuple[int, bool, int]:
    """The offset after a comment action, whether it trims the text after it, and the line."""
    cend = text.find("*/", cstart + 2)
    if cend < 0:
        raise TemplateError(f"line {line}: unclosed comment")
    line += text.count("\n", start, cend)
    rest = cend + 2
    if text.startswith("}}", rest):
        return rest + 2, False, line
    if text.startswith(" -}}", rest):
        return rest + 4, True, line
    raise TemplateError(f"line {line}: comment ends before closing delimiter")


def _lex_action(text: str, pos: int, line: int) -> tuple[list[Tok], int, bool, int]:
    """Tokens of one action starting at `pos`; returns them, the end offset, trim-right, line."""
    toks: list[Tok] = []
    n = len(text)
    while True:
        if pos >= n:
            raise TemplateError(f"line {line}: unclosed action")
        if text.startswith("}}", pos):
            return toks, pos + 2, False, line
        if text[pos] in SPACE:
            start = pos
            while pos < n and text[pos] in SPACE:
                pos += 1
            line += text.count("\n", start, pos)
            if text.startswith("-}}", pos):
                return toks, pos + 3, True, line
            continue
        tok, line = _lex_token(text, pos, line)
        toks.append(tok)
        pos = tok.end


def _lex_token(text: str, pos: int, line: int) -> tuple[Tok, int]:
    """The token at `pos` (not a space, not `}}`) and the line after it."""
    c = text[pos]
    nxt = text[pos + 1 : pos + 2]
    if c in "()|,":
        return Tok(c, c, line, pos + 1), line
    if text.startswith(":=", pos):
        return Tok(":=", ":=", line, pos + 2), line
    if c == "=":
        return Tok("=", "=", line, pos + 1), line
    if c == '"':
        return _lex_quoted(text, pos, line), line
    if c == "`":
        end = text.find("`", pos + 1)
        if end < 0:
            raise TemplateError(f"line {line}: unterminated raw quoted string")
        tok = Tok("string", text[pos + 1 : end], line, end + 1)
        return tok, line + text.count("\n", pos, end)
    if c == "'":
        return _lex_char(text, pos, line), line
    if c == "." and (nxt.isalpha() or nxt == "_"):
        m = _IDENT.match(text, pos + 1)
        assert m is not None
        return Tok("field", m.group(), line, m.end()), line
    if c == "$":
        m = _IDENT.match(text, pos + 1)
        name = "$" + (m.group() if m else "")
        return Tok("var", name, line, m.end() if m else pos + 1), line
    if c.isdigit() or (c in "+-." and nxt.isdigit()):
        m = _NUMBER.match(text, pos)
        if not m:
            raise TemplateError(f"line {line}: bad number syntax")
        return Tok("number", _number(m.group(), line), line, m.end()), line
    if c == ".":
        return Tok("dot", ".", line, pos + 1), line
    if c.isalpha() or c == "_":
        m = _IDENT.match(text, pos)
        assert m is not None
        return Tok("ident", m.group(), line, m.end()), line
    raise TemplateError(f"line {line}: unexpected {c!r} in action")


def _lex_quoted(text: str, pos: int, line: int) -> Tok:
    """An interpreted string literal `"..."` starting at `pos`; it may not span lines."""
    n = len(text)
    end = pos + 1
    while end < n and text[end] != '"':
        if text[end] == "\\":
            end += 1
        if end < n and text[end] == "\n":
            raise TemplateError(f"line {line}: unterminated quoted string")
        end += 1
    if end >= n:
        raise TemplateError(f"line {line}: unterminated quoted string")
    return Tok("string", _unquote(text[pos + 1 : end], line), line, end + 1)


def _lex_char(text: str, pos: int, line: int) -> Tok:
    """A character constant `'x'`: a number token holding the code point, as in Go."""
    end = text.find("'", pos + 1)
    if end < 0:
        raise TemplateError(f"line {line}: unterminated character constant")
    decoded = _unquote(text[pos + 1 : end], line)
    if len(decoded) != 1:
        raise TemplateError(f"line {line}: malformed character constant")
    return Tok("number", ord(decoded), line, end + 1)


def _unquote(body: str, line: int) -> str:
    """Decode a Go interpreted string literal body (between the quotes)."""
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        if nxt in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[nxt])
            i += 2
        elif nxt in _HEX_WIDTH:
            width = _HEX_WIDTH[nxt]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise TemplateError(f"line {line}: invalid escape in string literal")
            out.append(chr(int(digits, 16)))
            i += 2 + width
        elif nxt.isdigit():
            digits = body[i + 1 : i + 4]
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            raise TemplateError(f"line {line}: unknown escape sequence in string literal")
    return "".join(out)


def _number(text: str, line: int) -> int | float:
    clean = text.replace("_", "")
    try:
        if re.fullmatch(r"[+-]?0[xXbBoO].*", clean):
            return int(clean, 0)
        if re.fullmatch(r"[+-]?\d+", clean):
            return int(clean, 10)
        return float(clean)
    except ValueError:
        raise TemplateError(f"line {line}: bad number syntax: {text!r}") from None
