"""Go's template parser for the supported subset: tokens in, a list of nodes out.

Anything outside the subset fails here with the line, so an unsupported template is refused when
a model is created or loaded, never rendered wrongly.
"""

from __future__ import annotations

from typing import Any

from appliance.prompting.gotemplate.errors import TemplateError
from appliance.prompting.gotemplate.lexer import Tok, lex
from appliance.prompting.gotemplate.nodes import (
    Action,
    Branch,
    Chain,
    Command,
    Dot,
    Field,
    Func,
    Literal,
    LoopControl,
    Pipe,
    Text,
    Variable,
)

FUNCS = frozenset("and or not len index slice eq ne lt le gt ge print printf println json".split())
_UNSUPPORTED_KEYWORDS = frozenset("define template block".split())
_UNSUPPORTED_FUNCS = frozenset("html js urlquery call".split())
_KEYWORDS = frozenset("if else end range with break continue".split())


def parse_nodes(text: str) -> list[Any]:
    """The parse tree of `text`; raises TemplateError, naming the line, outside the subset."""
    return _Parser(text).parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self.items = list(lex(text))
        self.i = 0
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.pending_else: list[Tok] = []  # tokens after the last `else`/`end` keyword

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
            toks: list[Tok] = value
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

    def parse_branch(self, kind: str, toks: list[Tok], line: int) -> Branch:
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
        toks: list[Tok],
        line: int,
        context: str,
        *,
        allow_decl: bool,
        range_decl: bool = False,
    ) -> Pipe:
        decl: list[str] = []
        is_assign = False
        start = 0
        if allow_decl and toks and toks[0].kind == "var":
            decl, is_assign, start = self.parse_decl(toks, line, range_decl)
        cmds = self.parse_commands(toks[start:], line)
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

    def parse_decl(
        self, toks: list[Tok], line: int, range_decl: bool
    ) -> tuple[list[str], bool, int]:
        """Declarations: `$x :=`, `$x =`, `$i, $e :=` (two only in range); the variables, whether
        it assigns, and where the commands start (0 when the pipe declares nothing)."""
        k = 0
        names = [toks[0].value]
        if len(toks) > 2 and toks[1].kind == "," and toks[2].kind == "var" and range_decl:
            names.append(toks[2].value)
            k = 2
        if len(toks) > k + 1 and toks[k + 1].kind in (":=", "="):
            is_assign = toks[k + 1].kind == "="
            for name in names:
                if is_assign and name not in self.vars:
                    raise TemplateError(f'line {line}: undefined variable "{name}"')
            return names, is_assign, k + 2
        if len(names) == 2:
            raise TemplateError(f"line {line}: expected := or = after variables")
        return [], False, 0

    def parse_commands(self, toks: list[Tok], line: int) -> list[Command]:
        """The commands of a pipeline, split at `|`."""
        cmds: list[Command] = []
        args: list[Any] = []
        pos = 0
        while pos < len(toks):
            if toks[pos].kind == "|":
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
        return cmds

    def describe(self, node: Any) -> str:
        if isinstance(node, Field):
            return "." + ".".join(node.names)
        if isinstance(node, Variable):
            return node.name + "".join("." + n for n in node.names)
        if isinstance(node, Literal):
            return repr(node.value)
        return type(node).__name__.lower()

    def parse_operand(self, toks: list[Tok], pos: int, line: int) -> tuple[Any, int]:
        tok = toks[pos]
        pos += 1
        node: Any
        if tok.kind == "field":
            names, pos = self.adjacent_fields(toks, pos)
            return Field([tok.value, *names]), pos
        if tok.kind == "var":
            if tok.value not in self.vars:
                raise TemplateError(f'line {line}: undefined variable "{tok.value}"')
            names, pos = self.adjacent_fields(toks, pos)
            return Variable(tok.value, names), pos
        if tok.kind == "dot":
            node = Dot()
        elif tok.kind in ("string", "number"):
            node = Literal(tok.value)
        elif tok.kind == "ident":
            node = _word(tok.value, line)
        elif tok.kind == "(":
            node, pos = self.parse_paren(toks, pos, line)
        else:
            raise TemplateError(f"line {line}: unexpected {tok.value!r} in operand")
        names, pos = self.adjacent_fields(toks, pos)
        if names:
            if isinstance(node, Literal):
                raise TemplateError(f"line {line}: unexpected . after term {node.value!r}")
            node = Chain(node, names)
        return node, pos

    def parse_paren(self, toks: list[Tok], pos: int, line: int) -> tuple[Pipe, int]:
        """A parenthesized pipeline whose `(` is just before `pos`, and the offset after `)`."""
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
        pipe = self.parse_pipe(toks[pos:end], line, "parenthesized pipeline", allow_decl=False)
        return pipe, end + 1

    @staticmethod
    def adjacent_fields(toks: list[Tok], pos: int) -> tuple[list[str], int]:
        """The field tokens from `pos` on that follow with no space (`$m.Role`, `(x).A.B`)."""
        names: list[str] = []
        while pos < len(toks) and toks[pos].kind == "field" and _adjacent(toks, pos):
            names.append(toks[pos].value)
            pos += 1
        return names, pos


def _adjacent(toks: list[Tok], pos: int) -> bool:
    """True when field token `pos` follows the previous token with no space (`$m.Role`)."""
    return toks[pos].end - len(toks[pos].value) - 1 == toks[pos - 1].end


def _word(word: str, line: int) -> Any:
    """The node for an identifier operand: a constant or a builtin function."""
    if word in ("true", "false"):
        return Literal(word == "true")
    if word == "nil":
        return Literal(None)
    if word in FUNCS:
        return Func(word)
    if word in _UNSUPPORTED_FUNCS:
        raise TemplateError(f"line {line}: unsupported function {word!r}")
    if word in _UNSUPPORTED_KEYWORDS:
        raise TemplateError(f"line {line}: unsupported template construct {word!r}")
    if word in _KEYWORDS:
        raise TemplateError(f"line {line}: unexpected {word!r} in operand")
    raise TemplateError(f'line {line}: function "{word}" not defined')
