"""The parse tree: what the parser builds, the executor runs, and Ollama's tree queries read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
