"""The subset of Go's `text/template` that Ollama model templates use: parse once, render often.

Ollama's TEMPLATE layer is a Go template, and a client notices any byte we render differently, so
this follows Go's rules (trim markers, truthiness, `and`/`or` short-circuit values, `eq` with
several arguments, sorted map iteration, `fmt`'s `%v` printing, `json.Marshal` escaping) rather
than Python's. Anything outside the subset fails in `parse_template` with the line, so an
unsupported template is refused when a model is created or loaded, never rendered wrongly.

Values: a `dict` is a Go `map[string]any` (a missing key prints `<no value>`, as in Go with
`missingkey=zero`, and ranges in sorted key order); `OrderedMap` keeps insertion order (Ollama's
tool arguments and properties); `GoStruct` is a Go struct (a field it lacks renders empty rather
than failing, and it prints as JSON when the Go type has a `String()` that marshals itself).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


class TemplateError(ValueError):
    """A template that is outside the supported subset, malformed, or fails while rendering."""


class _Missing:
    """Go's invalid `reflect.Value`: what a missing map key evaluates to."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class OrderedMap(dict):
    """A map whose JSON encoding and iteration keep insertion order (Ollama's ordered maps)."""


class GoStruct:
    """A Go struct value: fields by Go name, its `json.Marshal` form, how `{{ . }}` prints it."""

    __slots__ = ("fields", "json_value", "stringer")

    def __init__(self, fields: dict[str, Any], json_value: Any = None, *, stringer: bool = False):
        self.fields = fields
        self.json_value = json_value if json_value is not None else fields
        self.stringer = stringer

    def __repr__(self) -> str:
        return f"GoStruct({self.fields!r})"


class JSONList(list):
    """A Go slice type with a `String()` that marshals itself (Ollama's `api.Tools`)."""


# ---------------------------------------------------------------------------------------------
# Lexer

_SPACE = " \t\r\n"
_FUNCS = frozenset("and or not len index slice eq ne lt le gt ge print printf println json".split())
_UNSUPPORTED_KEYWORDS = frozenset("define template block".split())
_UNSUPPORTED_FUNCS = frozenset("html js urlquery call".split())
_KEYWORDS = frozenset("if else end range with break continue".split())
_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+"
    r"|(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class _Tok:
    kind: str  # field var ident string number char ( ) | := = , dot
    value: Any
    line: int
    end: int = 0  # offset just past the token, to see whether a field follows with no space


def _unquote(body: str, line: int) -> str:
    """Decode a Go interpreted string literal body (between the quotes)."""
    out: list[str] = []
    i = 0
    simple = {
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
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        if nxt in simple:
            out.append(simple[nxt])
            i += 2
        elif nxt in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[nxt]
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


def _lex_action(text: str, pos: int, line: int) -> tuple[list[_Tok], int, bool, int]:
    """Tokens of one action starting at `pos`; returns them, the end offset, trim-right, line."""
    toks: list[_Tok] = []
    n = len(text)
    while True:
        if pos >= n:
            raise TemplateError(f"line {line}: unclosed action")
        c = text[pos]
        if text.startswith("}}", pos):
            return toks, pos + 2, False, line
        if c in _SPACE:
            start = pos
            while pos < n and text[pos] in _SPACE:
                pos += 1
            if text.startswith("-}}", pos):
                line += text.count("\n", start, pos)
                return toks, pos + 3, True, line
            line += text.count("\n", start, pos)
            continue
        if c in "()|,":
            toks.append(_Tok(c, c, line, pos + 1))
            pos += 1
        elif text.startswith(":=", pos):
            toks.append(_Tok(":=", ":=", line, pos + 2))
            pos += 2
        elif c == "=":
            toks.append(_Tok("=", "=", line, pos + 1))
            pos += 1
        elif c == '"':
            end = pos + 1
            while end < n and text[end] != '"':
                if text[end] == "\\":
                    end += 1
                if end < n and text[end] == "\n":
                    raise TemplateError(f"line {line}: unterminated quoted string")
                end += 1
            if end >= n:
                raise TemplateError(f"line {line}: unterminated quoted string")
            toks.append(_Tok("string", _unquote(text[pos + 1 : end], line), line, end + 1))
            pos = end + 1
        elif c == "`":
            end = text.find("`", pos + 1)
            if end < 0:
                raise TemplateError(f"line {line}: unterminated raw quoted string")
            toks.append(_Tok("string", text[pos + 1 : end], line, end + 1))
            line += text.count("\n", pos, end)
            pos = end + 1
        elif c == "'":
            end = text.find("'", pos + 1)
            if end < 0:
                raise TemplateError(f"line {line}: unterminated character constant")
            decoded = _unquote(text[pos + 1 : end], line)
            if len(decoded) != 1:
                raise TemplateError(f"line {line}: malformed character constant")
            toks.append(_Tok("number", ord(decoded), line, end + 1))
            pos = end + 1
        elif c == "." and pos + 1 < n and (text[pos + 1].isalpha() or text[pos + 1] == "_"):
            m = _IDENT.match(text, pos + 1)
            assert m is not None
            toks.append(_Tok("field", m.group(), line, m.end()))
            pos = m.end()
        elif c == "$":
            m = _IDENT.match(text, pos + 1)
            name = "$" + (m.group() if m else "")
            end = m.end() if m else pos + 1
            toks.append(_Tok("var", name, line, end))
            pos = end
        elif c.isdigit() or (c in "+-." and pos + 1 < n and text[pos + 1].isdigit()):
            m = _NUMBER.match(text, pos)
            if not m:
                raise TemplateError(f"line {line}: bad number syntax")
            toks.append(_Tok("number", _number(m.group(), line), line, m.end()))
            pos = m.end()
        elif c == ".":
            toks.append(_Tok("dot", ".", line, pos + 1))
            pos += 1
        elif c.isalpha() or c == "_":
            m = _IDENT.match(text, pos)
            assert m is not None
            toks.append(_Tok("ident", m.group(), line, m.end()))
            pos = m.end()
        else:
            raise TemplateError(f"line {line}: unexpected {c!r} in action")


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


def _lex(text: str) -> Iterator[tuple[str, Any, int]]:
    """Yield ("text", str, line) and ("action", tokens, line) items, applying trim markers."""
    pos = 0
    line = 1
    trim_next = False
    n = len(text)
    while pos <= n:
        start = text.find("{{", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        if trim_next:
            chunk = chunk.lstrip(_SPACE)
        trim_next = False
        if start < 0:
            if chunk:
                yield "text", chunk, line
            return
        trim_left = text.startswith("{{-", start) and start + 3 < n and text[start + 3] in _SPACE
        if trim_left:
            chunk = chunk.rstrip(_SPACE)
        if chunk:
            yield "text", chunk, line
        line += text.count("\n", pos, start)
        inner = start + (3 if trim_left else 2)
        after_space = inner
        if trim_left:
            while after_space < n and text[after_space] in _SPACE:
                after_space += 1
        if text.startswith("/*", after_space) or text.startswith("/*", inner):
            cstart = after_space if text.startswith("/*", after_space) else inner
            cend = text.find("*/", cstart + 2)
            if cend < 0:
                raise TemplateError(f"line {line}: unclosed comment")
            line += text.count("\n", start, cend)
            rest = cend + 2
            if text.startswith("}}", rest):
                pos = rest + 2
            elif text.startswith(" -}}", rest):
                pos = rest + 4
                trim_next = True
            else:
                raise TemplateError(f"line {line}: comment ends before closing delimiter")
            continue
        toks, pos, trim_next, new_line = _lex_action(text, inner, line)
        yield "action", toks, line
        line = new_line


# ---------------------------------------------------------------------------------------------
# Parse tree


@dataclass
class Field:
    names: list[str]


@dataclass
class Variable:
    name: str
    names: list[str] = field(default_factory=list)  # fields after the variable: $m.Role


@dataclass
class Dot:
    pass


@dataclass
class Literal:
    value: Any


@dataclass
class Func:
    name: str


@dataclass
class Chain:
    node: Any
    names: list[str]


@dataclass
class Command:
    args: list[Any]


@dataclass
class Pipe:
    line: int
    decl: list[str]
    is_assign: bool
    cmds: list[Command]


@dataclass
class Text:
    text: str


@dataclass
class Action:
    pipe: Pipe


@dataclass
class Branch:
    kind: str  # if | range | with
    pipe: Pipe
    body: list[Any]
    else_body: list[Any] | None


@dataclass
class LoopControl:
    kind: str  # break | continue


class _Parser:
    def __init__(self, text: str) -> None:
        self.items = list(_lex(text))
        self.i = 0
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.pending_else: list[_Tok] = []  # tokens after the last `else`/`end` keyword

    def parse(self) -> list[Any]:
        nodes, stop, line = self.parse_list()
        if stop is not None:
            raise TemplateError(f"line {line}: unexpected {{{{{stop}}}}}")
        return nodes

    def parse_list(self) -> tuple[list[Any], str | None, int]:
        """Nodes until `end`/`else` (returned as the stop word) or the end of input (None)."""
        nodes: list[Any] = []
        while self.i < len(self.items):
            kind, value, line = self.items[self.i]
            self.i += 1
            if kind == "text":
                nodes.append(Text(value))
                continue
            toks: list[_Tok] = value
            if not toks:
                raise TemplateError(f"line {line}: missing value for command")
            head = toks[0]
            word = head.value if head.kind == "ident" else None
            if word in ("end", "else"):
                self.pending_else = toks[1:]
                return nodes, word, line
            if word in ("if", "range", "with"):
                nodes.append(self.parse_branch(word, toks[1:], line))
            elif word in ("break", "continue"):
                if len(toks) != 1:
                    raise TemplateError(f"line {line}: unexpected token in {{{{{word}}}}}")
                if self.range_depth == 0:
                    raise TemplateError(f"line {line}: {{{{{word}}}}} outside {{{{range}}}}")
                nodes.append(LoopControl(word))
            elif word in _UNSUPPORTED_KEYWORDS:
                raise TemplateError(f"line {line}: unsupported template construct {word!r}")
            else:
                nodes.append(Action(self.parse_pipe(toks, line, "command", allow_decl=True)))
        return nodes, None, self.items[-1][2] if self.items else 1

    def parse_branch(self, kind: str, toks: list[_Tok], line: int) -> Branch:
        mark = len(self.vars)
        pipe = self.parse_pipe(toks, line, kind, allow_decl=True, range_decl=kind == "range")
        if kind == "range":
            self.range_depth += 1
        body, stop, stop_line = self.parse_list()
        if kind == "range":
            self.range_depth -= 1
        if stop is None:
            raise TemplateError(f"line {line}: unexpected EOF: missing {{{{end}}}} for {kind}")
        else_body: list[Any] | None = None
        if stop == "else":
            rest = self.pending_else
            if rest and rest[0].kind == "ident" and rest[0].value in ("if", "with"):
                if rest[0].value != kind or kind == "range":
                    raise TemplateError(f"line {stop_line}: unexpected else {rest[0].value}")
                # `else if` / `else with` is a nested branch that shares this branch's `end`.
                else_body = [self.parse_branch(kind, rest[1:], stop_line)]
                del self.vars[mark:]
                return Branch(kind, pipe, body, else_body)
            if rest:
                raise TemplateError(f"line {stop_line}: unexpected token in {{{{else}}}}")
            else_body, stop, stop_line = self.parse_list()
            if stop != "end":
                raise TemplateError(
                    f"line {line}: missing {{{{end}}}} for {kind}"
                    if stop is None
                    else f"line {stop_line}: unexpected {{{{else}}}}"
                )
        if self.pending_else:
            raise TemplateError(f"line {stop_line}: unexpected token in {{{{end}}}}")
        del self.vars[mark:]
        return Branch(kind, pipe, body, else_body)

    def parse_pipe(
        self,
        toks: list[_Tok],
        line: int,
        context: str,
        *,
        allow_decl: bool,
        range_decl: bool = False,
    ) -> Pipe:
        decl: list[str] = []
        is_assign = False
        j = 0
        # Declarations: `$x :=`, `$x =`, `$i, $e :=` (two only in range).
        if allow_decl and toks and toks[0].kind == "var":
            k = 0
            names = [toks[0].value]
            if len(toks) > 2 and toks[1].kind == "," and toks[2].kind == "var" and range_decl:
                names.append(toks[2].value)
                k = 2
            if len(toks) > k + 1 and toks[k + 1].kind in (":=", "="):
                decl = names
                is_assign = toks[k + 1].kind == "="
                j = k + 2
                for name in decl:
                    if is_assign and name not in self.vars:
                        raise TemplateError(f'line {line}: undefined variable "{name}"')
            elif len(names) == 2:
                raise TemplateError(f"line {line}: expected := or = after variables")
        cmds: list[Command] = []
        args: list[Any] = []
        pos = j
        while pos < len(toks):
            tok = toks[pos]
            if tok.kind == "|":
                if not args:
                    raise TemplateError(f"line {line}: missing command before |")
                cmds.append(Command(args))
                args = []
                pos += 1
                continue
            node, pos = self.parse_operand(toks, pos, line)
            args.append(node)
        if args:
            cmds.append(Command(args))
        elif cmds:
            raise TemplateError(f"line {line}: missing command after |")
        if not cmds:
            raise TemplateError(f"line {line}: missing value for {context}")
        for k, cmd in enumerate(cmds):
            first = cmd.args[0]
            if isinstance(first, Literal) and first.value is None and len(cmd.args) == 1:
                raise TemplateError(f"line {line}: nil is not a command")
            if not isinstance(first, Func) and (len(cmd.args) > 1 or k > 0):
                raise TemplateError(
                    f"line {line}: can't give argument to non-function {self.describe(first)}"
                )
        if decl and not is_assign:
            self.vars.extend(decl)
        return Pipe(line, decl, is_assign, cmds)

    def describe(self, node: Any) -> str:
        if isinstance(node, Field):
            return "." + ".".join(node.names)
        if isinstance(node, Variable):
            return node.name + "".join("." + n for n in node.names)
        if isinstance(node, Literal):
            return repr(node.value)
        return type(node).__name__.lower()

    def parse_operand(self, toks: list[_Tok], pos: int, line: int) -> tuple[Any, int]:
        tok = toks[pos]
        pos += 1
        node: Any
        if tok.kind == "field":
            names = [tok.value]
            while pos < len(toks) and toks[pos].kind == "field" and self.adjacent(toks, pos):
                names.append(toks[pos].value)
                pos += 1
            return Field(names), pos
        if tok.kind == "var":
            if tok.value not in self.vars:
                raise TemplateError(f'line {line}: undefined variable "{tok.value}"')
            node = Variable(tok.value)
            while pos < len(toks) and toks[pos].kind == "field" and self.adjacent(toks, pos):
                node.names.append(toks[pos].value)
                pos += 1
            return node, pos
        if tok.kind == "dot":
            node = Dot()
        elif tok.kind in ("string", "number"):
            node = Literal(tok.value)
        elif tok.kind == "ident":
            word = tok.value
            if word in ("true", "false"):
                node = Literal(word == "true")
            elif word == "nil":
                node = Literal(None)
            elif word in _FUNCS:
                node = Func(word)
            elif word in _UNSUPPORTED_FUNCS:
                raise TemplateError(f"line {line}: unsupported function {word!r}")
            elif word in _UNSUPPORTED_KEYWORDS:
                raise TemplateError(f"line {line}: unsupported template construct {word!r}")
            elif word in _KEYWORDS:
                raise TemplateError(f"line {line}: unexpected {word!r} in operand")
            else:
                raise TemplateError(f'line {line}: function "{word}" not defined')
        elif tok.kind == "(":
            depth = 1
            end = pos
            while end < len(toks):
                if toks[end].kind == "(":
                    depth += 1
                elif toks[end].kind == ")":
                    depth -= 1
                    if depth == 0:
                        break
                end += 1
            if depth:
                raise TemplateError(f"line {line}: unclosed left paren")
            node = self.parse_pipe(toks[pos:end], line, "parenthesized pipeline", allow_decl=False)
            pos = end + 1
        else:
            raise TemplateError(f"line {line}: unexpected {tok.value!r} in operand")
        names: list[str] = []
        while pos < len(toks) and toks[pos].kind == "field" and self.adjacent(toks, pos):
            names.append(toks[pos].value)
            pos += 1
        if names:
            if isinstance(node, Literal):
                raise TemplateError(f"line {line}: unexpected . after term {node.value!r}")
            node = Chain(node, names)
        return node, pos

    @staticmethod
    def adjacent(toks: list[_Tok], pos: int) -> bool:
        """True when field token `pos` follows the previous token with no space (`$m.Role`)."""
        return toks[pos].end - len(toks[pos].value) - 1 == toks[pos - 1].end


# ---------------------------------------------------------------------------------------------
# Execution


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


MAX_RENDER_STEPS = 2_000_000
"""Nodes one render may execute: `{{range 1000000000}}` in a client's template would otherwise
hold the event loop for minutes (a long chat's template takes a few hundred thousand)."""


@dataclass
class _State:
    out: list[str]
    vars: list[list[Any]]  # [name, value] pairs, innermost last
    steps: int = MAX_RENDER_STEPS

    def step(self, line: int) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise TemplateError(f"line {line}: template runs more than {MAX_RENDER_STEPS} steps")

    def lookup(self, name: str) -> Any:
        for pair in reversed(self.vars):
            if pair[0] == name:
                return pair[1]
        raise TemplateError(f'undefined variable "{name}"')

    def assign(self, name: str, value: Any) -> None:
        for pair in reversed(self.vars):
            if pair[0] == name:
                pair[1] = value
                return
        raise TemplateError(f'undefined variable "{name}"')


class Template:
    """A parsed template; `render` is pure, so one parse serves every request."""

    def __init__(self, nodes: list[Any], source: str) -> None:
        self.nodes = nodes
        self.source = source

    def render(self, data: Any) -> str:
        """Execute with `data` as dot and `$`; raises TemplateError on a run-time failure."""
        state = _State([], [["$", data]])
        self._walk_list(state, self.nodes, data)
        return "".join(state.out)

    # -- tree queries Ollama's template package needs -----------------------------------------

    def identifiers(self) -> set[str]:
        """Lower-cased field and variable names used in actions and branch pipes (Ollama `Vars`)."""
        found: set[str] = set()

        def pipe(p: Pipe) -> None:
            for cmd in p.cmds:
                for arg in cmd.args:
                    if isinstance(arg, Field):
                        found.update(n.lower() for n in arg.names)
                    elif isinstance(arg, Variable):
                        found.update(n.lower() for n in [arg.name, *arg.names])
                    elif isinstance(arg, Pipe):
                        pipe(arg)

        def walk(nodes: list[Any]) -> None:
            for node in nodes:
                if isinstance(node, Action):
                    pipe(node.pipe)
                elif isinstance(node, Branch):
                    pipe(node.pipe)
                    walk(node.body)
                    if node.else_body is not None:
                        walk(node.else_body)

        walk(self.nodes)
        return found

    def with_response_appended(self) -> Template:
        """This template followed by `{{ .Response }}` (Ollama does so when neither is used)."""
        response = Action(Pipe(0, [], False, [Command([Field(["Response"])])]))
        return Template([*self.nodes, response], self.source)

    def cut_after_response(self) -> Template:
        """Drop every node after the first `.Response` action, as Ollama does for the last turn.

        Mirrors Ollama's `deleteNode`: the walk visits branch bodies but not branch conditions,
        and keeps the action holding `.Response` itself.
        """
        cut = False

        def pipe(p: Pipe) -> Pipe | None:
            nonlocal cut
            cmds: list[Command] = []
            for cmd in p.cmds:
                args: list[Any] = []
                for arg in cmd.args:
                    if cut:
                        continue
                    if isinstance(arg, Field) and "Response" in arg.names:
                        cut = True
                        args.append(arg)
                    elif isinstance(arg, Pipe):
                        inner = pipe(arg)
                        if inner is not None:
                            args.append(inner)
                    else:
                        args.append(arg)
                if args:
                    cmds.append(Command(args))
                else:
                    return None
            return Pipe(p.line, p.decl, p.is_assign, cmds) if cmds else None

        def walk(nodes: list[Any]) -> list[Any]:
            kept: list[Any] = []
            for node in nodes:
                if cut:
                    continue
                if isinstance(node, Action):
                    new_pipe = pipe(node.pipe)
                    if new_pipe is not None:
                        kept.append(Action(new_pipe))
                elif isinstance(node, Branch):
                    body = walk(node.body)
                    else_body = None if node.else_body is None else walk(node.else_body)
                    kept.append(Branch(node.kind, node.pipe, body, else_body))
                else:
                    kept.append(node)
            return kept

        return Template(walk(self.nodes), self.source)

    # -- execution ----------------------------------------------------------------------------

    def _walk_list(self, state: _State, nodes: list[Any], dot: Any) -> None:
        for node in nodes:
            state.step(getattr(node, "line", 0))
            if isinstance(node, Text):
                state.out.append(node.text)
            elif isinstance(node, Action):
                value = self._eval_pipe(state, node.pipe, dot)
                if not node.pipe.decl:
                    state.out.append(go_sprint(value))
            elif isinstance(node, Branch):
                self._walk_branch(state, node, dot)
            elif isinstance(node, LoopControl):
                raise _Break() if node.kind == "break" else _Continue()

    def _walk_branch(self, state: _State, node: Branch, dot: Any) -> None:
        mark = len(state.vars)
        try:
            if node.kind == "range":
                self._walk_range(state, node, dot)
                return
            value = self._eval_pipe(state, node.pipe, dot)
            if go_truth(value):
                self._walk_list(state, node.body, value if node.kind == "with" else dot)
            elif node.else_body is not None:
                self._walk_list(state, node.else_body, dot)
        finally:
            del state.vars[mark:]

    def _walk_range(self, state: _State, node: Branch, dot: Any) -> None:
        pipe = node.pipe
        value = self._eval_pipe(state, pipe, dot)
        items: list[tuple[Any, Any]]
        if value is MISSING or value is None:
            items = []
        elif isinstance(value, GoStruct):
            raise TemplateError(f"line {pipe.line}: range can't iterate over {go_sprint(value)}")
        elif isinstance(value, OrderedMap):
            items = list(value.items())
        elif isinstance(value, dict):
            items = [(k, value[k]) for k in sorted(value, key=_map_key)]
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            # Lazily: a huge count runs out of render steps, not of memory.
            items = zip(range(value), range(value)) if value > 0 else []  # type: ignore[assignment]
        else:
            raise TemplateError(f"line {pipe.line}: range can't iterate over {go_sprint(value)}")
        if not items:
            if node.else_body is not None:
                self._walk_list(state, node.else_body, dot)
            return
        for key, elem in items:
            mark = len(state.vars)
            # The declared variables were pushed (or assigned) by _eval_pipe; set them per item.
            values = [elem] if len(pipe.decl) == 1 else [key, elem]
            for name, v in zip(pipe.decl, values):
                state.assign(name, v)
            try:
                self._walk_list(state, node.body, elem)
            except _Break:
                break
            except _Continue:
                continue
            finally:
                del state.vars[mark:]

    def _eval_pipe(self, state: _State, pipe: Pipe, dot: Any) -> Any:
        value: Any = MISSING
        for k, cmd in enumerate(pipe.cmds):
            value = self._eval_cmd(state, cmd, dot, value if k > 0 else MISSING, k > 0, pipe.line)
        for name in pipe.decl:
            if pipe.is_assign:
                state.assign(name, value)
            else:
                state.vars.append([name, value])
        return value

    def _eval_cmd(
        self, state: _State, cmd: Command, dot: Any, piped: Any, has_piped: bool, line: int
    ) -> Any:
        first = cmd.args[0]
        if not isinstance(first, Func):
            return self._eval_arg(state, first, dot, line)
        thunks: list[Callable[[], Any]] = [
            (lambda a=a: self._eval_arg(state, a, dot, line)) for a in cmd.args[1:]
        ]
        if has_piped:
            thunks.append(lambda: piped)
        try:
            return _call(first.name, thunks)
        except TemplateError as exc:
            raise TemplateError(f"line {line}: error calling {first.name}: {exc}") from None

    def _eval_arg(self, state: _State, node: Any, dot: Any, line: int) -> Any:
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Dot):
            return dot
        if isinstance(node, Field):
            return _fields(dot, node.names, line)
        if isinstance(node, Variable):
            return _fields(state.lookup(node.name), node.names, line)
        if isinstance(node, Pipe):
            return self._eval_pipe(state, node, dot)
        if isinstance(node, Chain):
            return _fields(self._eval_arg(state, node.node, dot, line), node.names, line)
        if isinstance(node, Func):
            return _call(node.name, [])
        raise TemplateError(f"line {line}: can't evaluate {node!r}")


def parse_template(text: str) -> Template:
    """Parse `text`; raises TemplateError, naming the line, for anything outside the subset."""
    parser = _Parser(text)
    return Template(parser.parse(), text)


def _fields(value: Any, names: list[str], line: int) -> Any:
    for name in names:
        if isinstance(value, GoStruct):
            value = value.fields.get(name, "")
        elif isinstance(value, dict):
            value = value.get(name, MISSING)
        elif value is MISSING or value is None:
            raise TemplateError(f"line {line}: nil pointer evaluating interface {{}}.{name}")
        else:
            raise TemplateError(
                f"line {line}: can't evaluate field {name} in type {_go_type(value)}"
            )
    return value


def _map_key(key: Any) -> Any:
    return (str(type(key)), key)


def _go_type(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float64", str: "string"}.get(
        type(value), type(value).__name__
    )


# ---------------------------------------------------------------------------------------------
# Go semantics: truth, comparison, printing, JSON


def go_truth(value: Any) -> bool:
    """Go's `if`: false for the zero value of its kind, nil, and a missing value."""
    if value is MISSING or value is None:
        return False
    if isinstance(value, GoStruct):
        return True
    if isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    return True


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if value is None or value is MISSING:
        return "nil"
    return "other"


def _eq(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        if ka == "nil" or kb == "nil":
            return False
        raise TemplateError("incompatible types for comparison")
    if ka == "nil":
        return True
    if ka == "other":
        raise TemplateError(f"non-comparable type {_go_type(a)}")
    return a == b


def _compare(a: Any, b: Any) -> int:
    ka, kb = _kind(a), _kind(b)
    if ka in ("bool", "nil", "other") or kb in ("bool", "nil", "other"):
        raise TemplateError("invalid type for comparison")
    if ka != kb:
        raise TemplateError("incompatible types for comparison")
    return (a > b) - (a < b)


def _call(name: str, thunks: list[Callable[[], Any]]) -> Any:
    if name in ("and", "or"):
        if not thunks:
            raise TemplateError(f"wrong number of args for {name}: want at least 1 got 0")
        value: Any = MISSING
        for thunk in thunks:
            value = thunk()
            if go_truth(value) == (name == "or"):
                return value
        return value
    args = [t() for t in thunks]

    def arity(n: int) -> None:
        if len(args) != n:
            raise TemplateError(f"wrong number of args for {name}: want {n} got {len(args)}")

    if name == "not":
        arity(1)
        return not go_truth(args[0])
    if name == "eq":
        if len(args) < 2:
            raise TemplateError("missing argument for comparison")
        return any(_eq(args[0], other) for other in args[1:])
    if name == "ne":
        arity(2)
        return not _eq(args[0], args[1])
    if name in ("lt", "le", "gt", "ge"):
        arity(2)
        c = _compare(args[0], args[1])
        return {"lt": c < 0, "le": c <= 0, "gt": c > 0, "ge": c >= 0}[name]
    if name == "len":
        arity(1)
        v = args[0]
        if isinstance(v, str):
            return len(v.encode())
        if isinstance(v, (list, tuple, dict)):
            return len(v)
        raise TemplateError(f"len of type {_go_type(v)}")
    if name == "index":
        if not args:
            raise TemplateError("wrong number of args for index: want at least 1 got 0")
        return _index(args[0], args[1:])
    if name == "slice":
        if not args:
            raise TemplateError("wrong number of args for slice: want at least 1 got 0")
        return _slice(args[0], args[1:])
    if name == "print":
        return go_sprint_args(args)
    if name == "println":
        return " ".join(go_sprint(a) for a in args) + "\n"
    if name == "printf":
        if not args or not isinstance(args[0], str):
            raise TemplateError("printf needs a format string")
        return go_sprintf(args[0], args[1:])
    if name == "json":
        arity(1)
        return go_json(args[0])
    raise TemplateError(f'function "{name}" not defined')


def _int_arg(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TemplateError(f"cannot index slice/array with type {_go_type(value)}")
    return value


def _index(item: Any, keys: list[Any]) -> Any:
    for key in keys:
        if isinstance(item, dict):
            item = item.get(key, MISSING)
        elif isinstance(item, (list, tuple)):
            i = _int_arg(key)
            if not 0 <= i < len(item):
                raise TemplateError(f"index out of range: {i}")
            item = item[i]
        elif isinstance(item, str):
            data = item.encode()
            i = _int_arg(key)
            if not 0 <= i < len(data):
                raise TemplateError(f"index out of range: {i}")
            item = data[i]
        elif item is None or item is MISSING:
            raise TemplateError("index of untyped nil")
        else:
            raise TemplateError(f"can't index item of type {_go_type(item)}")
    return item


def _slice(item: Any, idx: list[Any]) -> Any:
    if len(idx) > 3:
        raise TemplateError(f"too many slice indexes: {len(idx)}")
    if isinstance(item, str):
        if len(idx) == 3:
            raise TemplateError("cannot 3-index slice a string")
        data = item.encode()
        size = len(data)
    elif isinstance(item, (list, tuple)):
        size = len(item)
    elif item is None or item is MISSING:
        raise TemplateError("slice of untyped nil")
    else:
        raise TemplateError(f"can't slice item of type {_go_type(item)}")
    bounds = [_int_arg(i) for i in idx]
    lo = bounds[0] if bounds else 0
    hi = bounds[1] if len(bounds) > 1 else size
    if not 0 <= lo <= hi <= size:
        raise TemplateError(f"index out of range: {hi if hi > size else lo}")
    if isinstance(item, str):
        return data[lo:hi].decode(errors="replace")
    return type(item)(item[lo:hi]) if isinstance(item, JSONList) else list(item[lo:hi])


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
        keys = sorted(value, key=_map_key)
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
        extra = ", ".join(f"{_go_type(a)}={go_sprint(a)}" for a in args[argi:])
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
    return f"%!{verb}({_go_type(arg)}={go_sprint(arg)})"


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
