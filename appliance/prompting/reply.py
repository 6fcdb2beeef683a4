"""From a model's raw output to the parts of an answer: content, thinking, tool calls.

The order is Ollama's chat handler's: the thinking splitter sees the raw text first, and the
tool-call parser sees only what is left as content. Shared by /api/chat and /api/generate (which
has no tools) and, through them, by the OpenAI routes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.prompting.thinking import ThinkingParser
from appliance.prompting.toolcalls import ToolCallParser


@dataclass
class ReplyPart:
    content: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.thinking or self.tool_calls)

    def message_fields(self) -> dict[str, Any]:
        """`content` always, `thinking` and `tool_calls` when non-empty (Go `omitempty`)."""
        out: dict[str, Any] = {"content": self.content}
        if self.thinking:
            out["thinking"] = self.thinking
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        return out


class ReplyParser:
    """Feeds pieces of output through the splitter and the finder the request asked for."""

    def __init__(
        self, thinking: ThinkingParser | None = None, tools: ToolCallParser | None = None
    ) -> None:
        self.thinking = thinking
        self.tools = tools

    def add(self, text: str) -> ReplyPart:
        """What this piece completes; empty while a tag or a call may still be forming."""
        thought, content = self.thinking.add(text) if self.thinking else ("", text)
        return self._with_tools(thought, content)

    def finish(self) -> ReplyPart:
        """Whatever is still held back once the output has ended."""
        thought, content = self.thinking.flush() if self.thinking else ("", "")
        part = self._with_tools(thought, content)
        if self.tools is not None:
            part.content += self.tools.finish()
        return part

    def _with_tools(self, thought: str, content: str) -> ReplyPart:
        if self.tools is None or not content:
            return ReplyPart(content, thought)
        content, calls = self.tools.add(content)
        return ReplyPart(content, thought, calls)
