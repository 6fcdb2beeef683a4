"""Finding tool calls in a model's streamed output (Ollama `tools/tools.go`, `tools/template.go`).

The model announces a tool call with a prefix its template shows it: the first text inside the
template's `{{ if .ToolCalls }}` block, cut before any `{` (`<tool_call>` for Qwen and Hermes,
`[TOOL_CALLS]` for Mistral); a template whose block starts with the JSON itself (Llama 3.1) gives
`{`, and so does a template with no such block. Text before the prefix is content; from the prefix
on, the text is held back and searched for a tool name followed by a JSON object of arguments, so
a partial call never reaches the client as content. With `{` as the prefix, output counts as tool
calls only when it starts with the object; a balanced object that is no call is content after all.
"""

from __future__ import annotations

import json
import secrets
import string
from typing import Any

from appliance.prompting.gotemplate import (
    Action,
    Branch,
    Field,
    TemplateError,
    Text,
    parse_template,
)
from appliance.prompting.prompts import PromptTemplate

JSON_TAG = "{"
_ID_ALPHABET = string.ascii_lowercase + string.digits

# Tool-call prefixes chat templates (Jinja) write; Ollama only reads Go templates, so for a model
# with just a GGUF chat template the prefix is the first of these the template writes after it
# first mentions `tool_calls` (Llama 3.1's `<|python_tag|>` is for built-in tools only: left out).
JINJA_TAGS = (
    "<tool_call>",
    "[TOOL_CALLS]",
    "<|tool_call_start|>",
    "<|tool_calls_section_begin|>",
    "<｜tool▁calls▁begin｜>",
    "<function_call>",
    "<tool_calls>",
    "functools[",
)

_LOOKING, _CALLING, _DONE = range(3)


def new_call_id() -> str:
    """Ollama's `toolCallId`: `call_` and 8 characters from [a-z0-9]."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


class ToolCallParser:
    """Incremental tool-call finder: `add(piece) -> (content to emit now, tool calls found)`.

    Calls are native `api.ToolCall` objects: `{"id", "function": {"index", "name", "arguments"}}`,
    `index` counting the calls of one answer from 0. Call `finish()` when the output ends.
    """

    def __init__(self, tag: str, tools: list[dict[str, Any]]) -> None:
        self.tag = tag or JSON_TAG
        self.tools = [t for t in tools if isinstance(t, dict)]
        self._names = [_tool_name(t) for t in self.tools]
        self._state = _LOOKING
        self._buffer = ""
        self._n = 0

    def add(self, piece: str) -> tuple[str, list[dict[str, Any]]]:
        if self._state == _DONE:
            return piece, []
        self._buffer += piece
        content = ""
        if self._state == _LOOKING:
            index, found = self._find_tag()
            if index == -1:
                content, self._buffer = self._buffer, ""
            else:
                content, self._buffer = self._buffer[:index], self._buffer[index:]
            if self.tag in ("{", "[") and content.strip():
                # a bare-JSON call must come first; text before it means a plain answer
                self._state = _DONE
                rest, self._buffer = self._buffer, ""
                return content + rest, []
            if not found:
                return content, []
            self._state = _CALLING
        calls = []
        while (call := self._parse_call()) is not None:
            calls.append(call)
        if self._closed():
            self._state = _DONE
            content, self._buffer = self._buffer, ""
        return content, calls

    def finish(self) -> str:
        """Content still held back at the end (Ollama `Content`): a bare-JSON answer that was no
        call; nothing once a call was found or after a real prefix."""
        if self._n > 0 or self.tag not in ("{", "["):
            return ""
        rest, self._buffer = self._buffer, ""
        return rest

    def _find_tag(self) -> tuple[int, bool]:
        index = self._buffer.find(self.tag)
        if index != -1:
            return index, True
        for n in range(min(len(self._buffer), len(self.tag)), 0, -1):
            if self._buffer.endswith(self.tag[:n]):
                return len(self._buffer) - n, False
        return -1, False

    def _parse_call(self) -> dict[str, Any] | None:
        found = self._find_tool()
        if found is None:
            return None
        tool, name_end = found
        parsed = _find_arguments(_tool_name(tool), self._buffer)
        if parsed is None:
            return None
        args, args_end = parsed
        self._buffer = self._buffer[max(name_end, args_end) :]
        call = {
            "id": new_call_id(),
            "function": {"index": self._n, "name": _tool_name(tool), "arguments": args},
        }
        self._n += 1
        return call

    def _find_tool(self) -> tuple[dict[str, Any], int] | None:
        """The earliest (then longest) tool name in the buffer; None while the buffer ends with
        what may be the start of a longer name."""
        buf = self._buffer
        if not buf:
            return None
        longest = max((len(n) for n in self._names), default=0)
        for i in range(1, min(len(buf), longest) + 1):
            tail = buf[-i:]
            if any(len(tail) < len(n) and n.startswith(tail) for n in self._names):
                return None
        best: tuple[dict[str, Any], int] | None = None
        start = best_len = -1
        for tool, name in zip(self.tools, self._names):
            if not name:
                continue
            pos = buf.find(name)
            if pos == -1:
                continue
            if best is not None and (pos > start or (pos == start and len(name) <= best_len)):
                continue
            best, start, best_len = (tool, pos + len(name)), pos, len(name)
        return best

    def _closed(self) -> bool:
        """For `{`/`[` prefixes: the held-back text closes its bracket, so parsing stops."""
        pairs = {"{": ("{", "}"), "[": ("[", "]")}
        if self.tag not in pairs:
            return False
        open_, close = pairs[self.tag]
        depth = 0
        for c in self._buffer:
            if c == open_:
                depth += 1
            elif c == close:
                depth -= 1
                if depth == 0:
                    return True
        return False


def _tool_name(tool: dict[str, Any]) -> str:
    function = tool.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else ""


def _find_arguments(tool_name: str, buffer: str) -> tuple[dict[str, Any], int] | None:
    """The first JSON object in `buffer` that holds the arguments, and where it ends.

    `{"name": .., "arguments": {..}}` (or `parameters`, or arguments as a JSON string) gives its
    arguments; `{"<tool name>": {..}}` gives the inner object; a nested object is searched; any
    other object is itself the arguments. None while no complete object is there yet.
    """
    start = -1
    depth = 0
    in_string = escaped = False
    for i, c in enumerate(buffer):
        if escaped:
            escaped = False
            continue
        if c == "\\":
            escaped = True
            continue
        if c == '"':
            in_string = not in_string
            continue
        if in_string:
            continue
        if c == "{":
            if depth == 0:
                start = i
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0 and start != -1:
                try:
                    data = json.loads(buffer[start : i + 1])
                except json.JSONDecodeError:
                    start = -1
                    continue
                if not isinstance(data, dict):
                    start = -1
                    continue
                found, args = _find_object(tool_name, data)
                if found:
                    return (args, i + 1) if args is not None else None
                return data, i + 1
            depth = max(depth, 0)
    return None


def _find_object(tool_name: str, obj: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    if "name" in obj:
        for key in ("arguments", "parameters"):
            args = _as_map(obj.get(key))
            if args is not None:
                return True, args
        return True, None
    args = _as_map(obj.get(tool_name))
    if args is not None:
        return True, args
    for value in obj.values():
        children = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
        for child in children:
            if isinstance(child, dict):
                found, args = _find_object(tool_name, child)
                if found:
                    return True, args
    return False, None


def _as_map(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return None
        return decoded if isinstance(decoded, dict) else None
    return None


# ---- the prefix from the template ----------------------------------------------------------------


def go_tool_call_tag(go_template: str) -> str:
    """Ollama's `parseTag`: the first non-blank text in the `{{ if .ToolCalls }}` block, cut
    before `{` and trimmed; `{` when there is none."""
    try:
        nodes = parse_template(go_template).nodes
    except TemplateError:
        return JSON_TAG
    return go_tag(nodes)


def go_tag(nodes: list[Any]) -> str:
    """`go_tool_call_tag` for a parsed template's nodes."""
    block = _find_tool_calls_if(nodes)
    if block is None:
        return JSON_TAG
    text = _first_text(block.body)
    if text is None:
        return JSON_TAG
    tag = text.replace("\r\n", "\n").split("{", 1)[0].strip()
    return tag or JSON_TAG


def _find_tool_calls_if(nodes: list[Any]) -> Branch | None:
    for node in nodes:
        if not isinstance(node, Branch):
            continue
        if node.kind == "if" and any(
            isinstance(arg, Field) and "ToolCalls" in arg.names
            for cmd in node.pipe.cmds
            for arg in cmd.args
        ):
            return node
        for body in (node.body, node.else_body or []):
            found = _find_tool_calls_if(body)
            if found is not None:
                return found
    return None


def _first_text(nodes: list[Any]) -> str | None:
    """Depth-first first text, stopping at an action or after a nested block (Ollama)."""
    for node in nodes:
        if isinstance(node, Text):
            if node.text.strip():
                return node.text
        elif isinstance(node, Branch):
            for body in (node.body, node.else_body or []):
                found = _first_text(body)
                if found is not None:
                    return found
            return None
        elif isinstance(node, Action):
            return None
    return None


def jinja_tool_call_tag(chat_template: str) -> str:
    """The prefix a Jinja chat template writes before a call (see JINJA_TAGS); `{` otherwise."""
    start = chat_template.find("tool_calls")
    if start == -1:
        return JSON_TAG
    hits = [(i, tag) for tag in JINJA_TAGS if (i := chat_template.find(tag, start)) != -1]
    return min(hits)[1] if hits else JSON_TAG


def tool_call_tag(template: PromptTemplate) -> str:
    """The tool-call prefix of the template a model's prompts come from; read from the template
    once and kept on it."""
    return template.derive(_tool_call_tag)


def _tool_call_tag(template: PromptTemplate) -> str:
    if template.go_tree is not None:
        return go_tag(template.go_tree.nodes)
    if template.source_kind == "jinja":
        return jinja_tool_call_tag(template.source)
    return JSON_TAG


def tool_call_parser(template: PromptTemplate, tools: list[dict[str, Any]]) -> ToolCallParser:
    """A tool-call finder for one answer, with the prefix of the model's template."""
    return ToolCallParser(tool_call_tag(template), tools)
