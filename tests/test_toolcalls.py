"""The incremental tool-call parser and the prefix it takes from a template (Ollama `tools/`).

Conventions: pure functions and objects, no server. Streaming is checked by feeding the same text
split at every position (two pieces) and one character at a time: the content and the calls must
not depend on where the pieces break, and no piece of a call may come out as content.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from appliance.prompting.prompts import PromptTemplate
from appliance.prompting.toolcalls import (
    ToolCallParser,
    go_tool_call_tag,
    jinja_tool_call_tag,
    new_call_id,
    tool_call_tag,
)


def tool(name: str, *props: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {"type": "object", "properties": {p: {"type": "string"} for p in props}},
        },
    }


TOOLS = [tool("get_weather", "city"), tool("get_time", "zone")]


def feed(tag: str, pieces: list[str], tools: list[dict[str, Any]] = TOOLS):
    parser = ToolCallParser(tag, tools)
    contents, calls = [], []
    for piece in pieces:
        content, found = parser.add(piece)
        contents.append(content)
        calls.extend(found)
    contents.append(parser.finish())
    return contents, calls


def splits(text: str):
    """`text` as two pieces at every position, and one character at a time."""
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
    yield list(text)


def plain(calls: list[dict[str, Any]]) -> list[tuple[int, str, dict[str, Any]]]:
    return [
        (c["function"]["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls
    ]


QWEN_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize("pieces", list(splits("Let me check." + QWEN_CALL)))
def test_prefixed_call_is_found_wherever_the_pieces_break(pieces):
    contents, calls = feed("<tool_call>", pieces)
    assert "".join(contents) == "Let me check."
    assert plain(calls) == [(0, "get_weather", {"city": "Paris"})]


BARE = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


@pytest.mark.parametrize("pieces", list(splits(BARE)))
def test_bare_json_call_is_found_wherever_the_pieces_break(pieces):
    contents, calls = feed("{", pieces)
    assert "".join(contents) == ""
    assert plain(calls) == [(0, "get_weather", {"city": "Paris"})]


@pytest.mark.parametrize("pieces", list(splits('The answer is {"city": "get_weather"} ok')))
def test_bare_json_tag_needs_the_object_first(pieces):
    contents, calls = feed("{", pieces)
    assert "".join(contents) == 'The answer is {"city": "get_weather"} ok' and calls == []


@pytest.mark.parametrize("pieces", list(splits('{"a": 1} and more')))
def test_bare_json_that_is_no_call_comes_back_as_content(pieces):
    contents, calls = feed("{", pieces)
    assert "".join(contents) == '{"a": 1} and more' and calls == []


@pytest.mark.parametrize("pieces", list(splits('<tool_call>{"name": "get_wea')))
def test_an_unfinished_call_never_becomes_content(pieces):
    contents, calls = feed("<tool_call>", pieces)
    assert "".join(contents) == "" and calls == []


@pytest.mark.parametrize("pieces", list(splits("hello <tool")))
def test_a_partial_prefix_is_held_back_and_dropped_at_the_end(pieces):
    contents, calls = feed("<tool_call>", pieces)
    assert "".join(contents) == "hello " and calls == []


def test_several_calls_are_indexed_in_order():
    text = (
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_time", "arguments": {"zone": "CET"}}]'
    )
    for pieces in splits(text):
        contents, calls = feed("[TOOL_CALLS]", pieces)
        assert "".join(contents) == ""
        assert plain(calls) == [
            (0, "get_weather", {"city": "Paris"}),
            (1, "get_time", {"zone": "CET"}),
        ]


@pytest.mark.parametrize(
    ("text", "args"),
    [
        ('{"name": "get_weather", "parameters": {"city": "Oslo"}}', {"city": "Oslo"}),
        ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}', {"city": "Rome"}),
        ('{"get_weather": {"city": "Lima"}}', {"city": "Lima"}),
        ('{"name": "get_weather", "arguments": {"city": "a}b{\\"c"}}', {"city": 'a}b{"c'}),
    ],
)
def test_argument_shapes_models_write(text, args):
    contents, calls = feed("{", [text])
    assert plain(calls) == [(0, "get_weather", args)] and "".join(contents) == ""


def test_arguments_keep_their_order():
    _, calls = feed("{", ['{"name": "get_weather", "arguments": {"z": 1, "a": 2, "m": 3}}'])
    assert list(calls[0]["function"]["arguments"]) == ["z", "a", "m"]


def test_a_longer_tool_name_is_not_cut_short():
    tools = [tool("get"), tool("get_weather", "city")]
    for pieces in splits('<tool_call>{"name": "get_weather", "arguments": {"city": "X"}}'):
        _, calls = feed("<tool_call>", pieces, tools)
        assert plain(calls) == [(0, "get_weather", {"city": "X"})]


def test_call_ids_look_like_ollamas():
    ids = {new_call_id() for _ in range(50)}
    assert len(ids) == 50 and all(re.fullmatch(r"call_[a-z0-9]{8}", i) for i in ids)
    _, calls = feed("{", [BARE])
    assert re.fullmatch(r"call_[a-z0-9]{8}", calls[0]["id"])


# ---- the prefix -----------------------------------------------------------------------------------

QWEN25 = """{{- range $i, $_ := .Messages }}
{{- if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ end }}{{ end }}"""

LLAMA31 = """{{- range .Messages }}{{- if eq .Role "assistant" }}<|start_header_id|>assistant
{{- if .ToolCalls }}
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}{{ .Content }}{{ end }}{{ end }}{{ end }}"""

MISTRAL = """{{- range .Messages }}{{- if .ToolCalls }}[TOOL_CALLS] [
{{- range .ToolCalls }}{"name": "{{ .Function.Name }}"}{{ end }}]{{ end }}{{ end }}"""


@pytest.mark.parametrize(
    ("template", "tag"),
    [
        (QWEN25, "<tool_call>"),
        (LLAMA31, "{"),
        (MISTRAL, "[TOOL_CALLS] ["),
        ("{{ .Prompt }}", "{"),
        ("{{ if .ToolCalls }}{{ .Content }}<call>{{ end }}", "{"),
    ],
)
def test_go_template_prefix_is_ollamas(template, tag):
    assert go_tool_call_tag(template) == tag


HERMES_JINJA = """{%- for message in messages %}{%- if message.tool_calls %}
{%- for tool_call in message.tool_calls %}{{- '<tool_call>\\n{"name": "' }}{{ tool_call.name }}
{%- endfor %}{%- endif %}{%- endfor %}"""

LLAMA31_JINJA = """{%- if tools %}<tools>{% endif %}{%- for message in messages %}
{%- if message.tool_calls %}{%- if tool_call.name in builtin_tools %}{{- '<|python_tag|>' }}
{%- else %}{{- '{"name": "' + tool_call.name + '", ' }}{% endif %}{% endif %}{% endfor %}"""


@pytest.mark.parametrize(
    ("source", "tag"),
    [(HERMES_JINJA, "<tool_call>"), (LLAMA31_JINJA, "{"), ("{{ messages }}", "{")],
)
def test_jinja_chat_template_prefix(source, tag):
    assert jinja_tool_call_tag(source) == tag


def test_the_go_template_wins_over_the_chat_template():
    both = PromptTemplate(go_template=QWEN25, chat_template=LLAMA31_JINJA)
    assert tool_call_tag(both) == "<tool_call>"
    assert tool_call_tag(PromptTemplate(chat_template=HERMES_JINJA)) == "<tool_call>"
