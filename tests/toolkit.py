"""Templates, formats and tools the tool-call and thinking tests share: tiny models get a Go
template that renders tools (or <think> tags), and a JSON-schema `format` steers them into a call
(or a thought), so the parsers see exactly the text Ollama's would. Also the server-sent-event
reader the Anthropic and Responses tests share.
"""

# ruff: noqa: E501

from __future__ import annotations

import json
from typing import Any

import trio

# Llama 3.1 style: the calls are bare JSON objects, so the prefix Ollama derives is `{`.
TOOLS_TEMPLATE = """{{- if .Tools }}tools:{{ range .Tools }} {{ .Function.Name }}{{ end }}
{{ end }}
{{- range .Messages }}{{ .Role }}: {{ .Content }}
{{- if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}{{ end }}{{ end }}
{{ end }}assistant: """

# Thinking between <think> tags, the tag opened by the template when `think` is on.
THINK_TEMPLATE = """{{- range .Messages }}{{ .Role }}: {{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}
{{ end }}assistant: {{ if .Think }}<think>{{ end }}"""

CALL_FORMAT = {
    "type": "object",
    "properties": {
        "name": {"enum": ["get_weather"]},
        "arguments": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}

THOUGHT_FORMAT = {
    "type": "object",
    "properties": {"a": {"enum": ["plan</think>done"]}},
    "required": ["a"],
    "additionalProperties": False,
}

# get_weather's arguments as a JSON schema: `input_schema` (Anthropic), `parameters` (OpenAI).
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}

# The tool in the shape of Ollama's /api/chat and OpenAI's chat/completions.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER_PARAMETERS,
    },
}


async def sse_frames(app: Any, path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    """The (event, data) pairs of `body` streamed from `path`; asserts a 200 in text/event-stream
    and the `event: NAME` / `data: JSON` framing, each frame ended by a blank line."""
    with trio.fail_after(60):
        async with app.client() as client:
            async with client.stream("POST", path, json={**body, "stream": True}) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                text = (await r.aread()).decode()
    frames = text.split("\n\n")
    assert frames[-1] == ""
    out = []
    for frame in frames[:-1]:
        name_line, data_line = frame.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), frame
        out.append(
            (name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: ")))
        )
    return out
