"""Running a parse tree with Go's rules: variables and scopes, `if`/`with`/`range`, pipelines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.prompting.gotemplate.errors import TemplateError
from appliance.prompting.gotemplate.funcs import call, go_truth
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
from appliance.prompting.gotemplate.printing import go_sprint
from appliance.prompting.gotemplate.values import MISSING, GoStruct, OrderedMap, go_type, map_key


def execute(nodes: list[Any], data: Any) -> str:
    """Execute `nodes` with `data` as dot and `$`; raises TemplateError on a run-time failure."""
    run = _Execution([], [["$", data]])
    run.walk_list(nodes, data)
    return "".join(run.out)


MAX_RENDER_STEPS = 2_000_000
"""Nodes one render may execute: `{{range 1000000000}}` in a client's template would otherwise
hold the event loop for minutes (a long chat's template takes a few hundred thousand)."""


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Execution:
    """The output and the variable stack of one execution."""

    def __init__(self, out: list[str], variables: list[list[Any]]) -> None:
        self.out = out
        self.vars = variables  # [name, value] pairs, innermost last
        self.steps = MAX_RENDER_STEPS

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

    def walk_list(self, nodes: list[Any], dot: Any) -> None:
        for node in nodes:
            self.step(getattr(node, "line", 0))
            if isinstance(node, Text):
                self.out.append(node.text)
            elif isinstance(node, Action):
                value = self.eval_pipe(node.pipe, dot)
                if not node.pipe.decl:
                    self.out.append(go_sprint(value))
            elif isinstance(node, Branch):
                self.walk_branch(node, dot)
            elif isinstance(node, LoopControl):
                raise _Break() if node.kind == "break" else _Continue()

    def walk_branch(self, node: Branch, dot: Any) -> None:
        mark = len(self.vars)
        try:
            if node.kind == "range":
                self.walk_range(node, dot)
                return
            value = self.eval_pipe(node.pipe, dot)
            if go_truth(value):
                self.walk_list(node.body, value if node.kind == "with" else dot)
            elif node.else_body is not None:
                self.walk_list(node.else_body, dot)
        finally:
            del self.vars[mark:]

    def walk_range(self, node: Branch, dot: Any) -> None:
        pipe = node.pipe
        items = _range_items(self.eval_pipe(pipe, dot), pipe.line)
        if not items:
            if node.else_body is not None:
                self.walk_list(node.else_body, dot)
            return
        for key, elem in items:
            mark = len(self.vars)
            # The declared variables were pushed (or assigned) by eval_pipe; set them per item.
            values = [elem] if len(pipe.decl) == 1 else [key, elem]
            for name, v in zip(pipe.decl, values):
                self.assign(name, v)
            try:
                self.walk_list(node.body, elem)
            except _Break:
                break
            except _Continue:
                continue
            finally:
                del self.vars[mark:]

    def eval_pipe(self, pipe: Pipe, dot: Any) -> Any:
        value: Any = MISSING
        for k, cmd in enumerate(pipe.cmds):
            value = self.eval_cmd(cmd, dot, value if k > 0 else MISSING, k > 0, pipe.line)
        for name in pipe.decl:
            if pipe.is_assign:
                self.assign(name, value)
            else:
                self.vars.append([name, value])
        return value

    def eval_cmd(self, cmd: Command, dot: Any, piped: Any, has_piped: bool, line: int) -> Any:
        first = cmd.args[0]
        if not isinstance(first, Func):
            return self.eval_arg(first, dot, line)
        thunks: list[Callable[[], Any]] = [
            (lambda a=a: self.eval_arg(a, dot, line)) for a in cmd.args[1:]
        ]
        if has_piped:
            thunks.append(lambda: piped)
        try:
            return call(first.name, thunks)
        except TemplateError as exc:
            raise TemplateError(f"line {line}: error calling {first.name}: {exc}") from None

    def eval_arg(self, node: Any, dot: Any, line: int) -> Any:
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Dot):
            return dot
        if isinstance(node, Field):
            return _fields(dot, node.names, line)
        if isinstance(node, Variable):
            return _fields(self.lookup(node.name), node.names, line)
        if isinstance(node, Pipe):
            return self.eval_pipe(node, dot)
        if isinstance(node, Chain):
            return _fields(self.eval_arg(node.node, dot, line), node.names, line)
        if isinstance(node, Func):
            return call(node.name, [])
        raise TemplateError(f"line {line}: can't evaluate {node!r}")


def _range_items(value: Any, line: int) -> Any:
    """(key, element) pairs `range` visits, in Go's order."""
    if value is MISSING or value is None:
        return []
    if isinstance(value, GoStruct):
        raise TemplateError(f"line {line}: range can't iterate over {go_sprint(value)}")
    if isinstance(value, OrderedMap):
        return list(value.items())
    if isinstance(value, dict):
        return [(k, value[k]) for k in sorted(value, key=map_key)]
    if isinstance(value, (list, tuple)):
        return list(enumerate(value))
    if isinstance(value, int) and not isinstance(value, bool):
        # Lazily: a huge count runs out of render steps, not of memory.
        return zip(range(value), range(value)) if value > 0 else []
    raise TemplateError(f"line {line}: range can't iterate over {go_sprint(value)}")


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
                f"line {line}: can't evaluate field {name} in type {go_type(value)}"
            )
    return value
