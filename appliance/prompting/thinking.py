"""Splitting a thinking model's output into `thinking` and `content` (Ollama `thinking/`).

A model that thinks writes its reasoning between an opening and a closing tag (`<think>` and
`</think>` for most). The tags come from the template the way Ollama infers them (`InferTags`: the
text around `.Thinking` inside the range over `.Messages`); a Jinja chat template, which Ollama
never sees, and a Go template where that inference finds nothing but that writes `<think>` and
`</think>` literally, get the literal pair. The splitter is fed the output piece by piece and never
lets a partial tag through; its whitespace rules are Ollama's: whitespace before the opening tag,
right after it and right after the closing tag is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from appliance.prompting.gotemplate import (
    Action,
    Branch,
    Field,
    Pipe,
    TemplateError,
    Text,
    parse_template,
)
from appliance.prompting.prompts import PromptTemplate

DEFAULT_OPENING = "<think>"
DEFAULT_CLOSING = "</think>"

_LOOKING, _STARTED_EATING, _THINKING, _DONE_EATING, _DONE = range(5)


class ThinkingParser:
    """Incremental `<think>...</think>` splitter: `add(piece) -> (thinking, content)`."""

    def __init__(self, opening: str = DEFAULT_OPENING, closing: str = DEFAULT_CLOSING) -> None:
        if not opening or not closing:
            raise ValueError("thinking tags must not be empty")
        self.opening = opening
        self.closing = closing
        self._state = _LOOKING
        self._acc = ""

    @property
    def in_thinking(self) -> bool:
        return self._state in (_STARTED_EATING, _THINKING)

    def add(self, piece: str) -> tuple[str, str]:
        """The thinking and the content this piece completes; held-back text waits for more."""
        self._acc += piece
        thinking: list[str] = []
        content: list[str] = []
        more = True
        while more:
            t, c, more = self._eat()
            thinking.append(t)
            content.append(c)
        return "".join(thinking), "".join(content)

    def flush(self) -> tuple[str, str]:
        """What is still held back when the output ends: a partial closing tag is thinking, a
        partial opening tag is content (Ollama drops both; a client would rather see them)."""
        rest, self._acc = self._acc, ""
        if self._state == _THINKING:
            return rest, ""
        if self._state == _LOOKING and rest.strip():
            self._state = _DONE
            return "", rest
        return "", ""

    def _eat(self) -> tuple[str, str, bool]:
        trimmed = self._acc.lstrip()
        state = self._state
        if state == _LOOKING:
            if trimmed.startswith(self.opening):
                after = trimmed[len(self.opening) :].lstrip()
                self._acc = after
                self._state = _THINKING if after else _STARTED_EATING
                return "", "", True
            if self.opening.startswith(trimmed):  # includes "": only whitespace so far
                return "", "", False
            self._state = _DONE
            untrimmed, self._acc = self._acc, ""
            return "", untrimmed, False
        if state == _STARTED_EATING:
            if not trimmed:
                return "", "", False
            self._state = _THINKING
            self._acc = trimmed
            return "", "", True
        if state == _THINKING:
            acc = self._acc
            idx = acc.find(self.closing)
            if idx != -1:
                remaining = acc[idx + len(self.closing) :].lstrip()
                self._acc = ""
                self._state = _DONE if remaining else _DONE_EATING
                return acc[:idx], remaining, False
            keep = _suffix_overlap(acc, self.closing)
            self._acc = acc[len(acc) - keep :] if keep else ""
            return acc[: len(acc) - keep], "", False
        if state == _DONE_EATING:
            if trimmed:
                self._state = _DONE
            self._acc = ""
            return "", trimmed, False
        rest, self._acc = self._acc, ""
        return "", rest, False


def _suffix_overlap(text: str, tag: str) -> int:
    """The length of the longest suffix of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag), len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


# ---- tags from the template ----------------------------------------------------------------------


def infer_go_tags(go_template: str) -> tuple[str, str]:
    """Ollama's `InferTags` for a template's text; ("", "") when it does not parse."""
    try:
        nodes = parse_template(go_template).nodes
    except TemplateError:
        return "", ""
    return go_tags(nodes)


def go_tags(nodes: list[Any]) -> tuple[str, str]:
    """Ollama's `InferTags`: the first and last text of the list around `.Thinking` inside a range
    over `.Messages` (the last such place wins); ("", "") when there is none."""
    opening = closing = ""
    for names, around, rng in _fields(nodes, None):
        if not names or names[0] != "Thinking" or rng is None:
            continue
        if not any(n and n[0] == "Messages" for n in _pipe_fields(rng.pipe)):
            continue
        if around and isinstance(around[0], Text):
            opening = around[0].text.strip()
        if around and isinstance(around[-1], Text):
            closing = around[-1].text.strip()
    return opening, closing


def _fields(
    nodes: list[Any], rng: Branch | None
) -> Iterator[tuple[list[str], list[Any], Branch | None]]:
    """Every field in an action or branch pipe, with the list holding it and the nearest range."""
    for node in nodes:
        if isinstance(node, Action):
            for names in _pipe_fields(node.pipe):
                yield names, nodes, rng
        elif isinstance(node, Branch):
            inner = node if node.kind == "range" else rng
            for names in _pipe_fields(node.pipe):
                yield names, nodes, inner
            yield from _fields(node.body, inner)
            if node.else_body is not None:
                yield from _fields(node.else_body, inner)


def _pipe_fields(pipe: Pipe) -> Iterator[list[str]]:
    for cmd in pipe.cmds:
        for arg in cmd.args:
            if isinstance(arg, Field):
                yield arg.names
            elif isinstance(arg, Pipe):
                yield from _pipe_fields(arg)


def thinking_tags(template: PromptTemplate) -> tuple[str, str] | None:
    """The (opening, closing) tags this model thinks between, or None when it has none; read
    from the template once and kept on it."""
    return template.derive(_thinking_tags)


def _thinking_tags(template: PromptTemplate) -> tuple[str, str] | None:
    if template.go_tree is not None:
        opening, closing = go_tags(template.go_tree.nodes)
        if opening and closing:
            return opening, closing
    source = template.source
    if DEFAULT_OPENING in source and DEFAULT_CLOSING in source:
        return DEFAULT_OPENING, DEFAULT_CLOSING
    return None


def thinking_parser(template: PromptTemplate, prompt: str) -> ThinkingParser | None:
    """A splitter for one answer; it starts inside the thinking when the prompt ends with the
    opening tag (templates that open the tag for the model), as Ollama's handlers do."""
    tags = thinking_tags(template)
    if tags is None:
        return None
    parser = ThinkingParser(*tags)
    if prompt.strip().endswith(tags[0]):
        parser.add(tags[0])
    return parser
