"""The incremental thinking splitter and the tags it takes from a template (Ollama `thinking/`).

Conventions: pure functions and objects, no server. Streaming is checked by feeding the same text
split at every position (two pieces) and one character at a time: the split must not depend on
where the pieces break, and no part of a tag may come out.
"""

from __future__ import annotations

import pytest

from appliance.prompting.prompts import PromptTemplate
from appliance.prompting.thinking import (
    ThinkingParser,
    infer_go_tags,
    thinking_parser,
    thinking_tags,
)


def splits(text: str):
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
    yield list(text)


def run(text_pieces: list[str], parser: ThinkingParser | None = None) -> tuple[str, str]:
    parser = parser or ThinkingParser()
    thinking, content = [], []
    for piece in text_pieces:
        t, c = parser.add(piece)
        thinking.append(t)
        content.append(c)
    t, c = parser.flush()
    return "".join(thinking) + t, "".join(content) + c


@pytest.mark.parametrize(
    ("text", "thinking", "content"),
    [
        ("<think>reasoning</think>answer", "reasoning", "answer"),
        (
            "  \n<think>\n  step one\nstep two</think>\n\n the answer",
            "step one\nstep two",
            "the answer",
        ),
        ("no thinking here", "", "no thinking here"),
        ("  plain with leading space", "", "  plain with leading space"),
        ("<thinking is not a tag", "", "<thinking is not a tag"),
        ("<think>a < b </ c</think>ok", "a < b </ c", "ok"),
        ("answer <think>late</think>", "", "answer <think>late</think>"),
    ],
)
def test_split_does_not_depend_on_where_pieces_break(text, thinking, content):
    for pieces in splits(text):
        assert run(pieces) == (thinking, content), pieces


def test_a_model_already_inside_thinking_needs_no_opening_tag():
    for pieces in splits("still thinking</think>\n\nanswer"):
        parser = ThinkingParser()
        parser.add("<think>")
        assert run(pieces, parser) == ("still thinking", "answer")


def test_thinking_cut_off_before_the_closing_tag_stays_thinking():
    for pieces in splits("<think>half a thought</thi"):
        assert run(pieces) == ("half a thought</thi", "")


def test_custom_tags():
    for pieces in splits("<|begin_thought|>hmm<|end_thought|>yes"):
        parser = ThinkingParser("<|begin_thought|>", "<|end_thought|>")
        assert run(pieces, parser) == ("hmm", "yes")


QWEN3 = """{{- range $i, $_ := .Messages }}
{{- if eq .Role "assistant" }}<|im_start|>assistant
{{ if (and $.IsThinkSet .Thinking) -}}
<think>{{ .Thinking }}</think>
{{ end -}}{{ .Content }}<|im_end|>
{{ end }}{{ end }}<|im_start|>assistant
{{ if and $.IsThinkSet (not $.Think) }}<think>

</think>

{{ end }}"""

CUSTOM = """{{ range .Messages }}{{ if .Thinking }}<|begin_thought|>{{ .Thinking }}<|end_thought|>
{{ end }}{{ .Content }}{{ end }}"""


def test_go_tags_are_inferred_around_thinking_in_the_messages_range():
    assert infer_go_tags(QWEN3) == ("<think>", "</think>")
    assert infer_go_tags(CUSTOM) == ("<|begin_thought|>", "<|end_thought|>")
    assert infer_go_tags("{{ .Thinking }}<think>") == ("", "")


def test_tags_for_templates_of_every_kind():
    assert thinking_tags(PromptTemplate(go_template=QWEN3)) == ("<think>", "</think>")
    assert thinking_tags(PromptTemplate(go_template="{{ .Prompt }}")) is None
    jinja = "{% for m in messages %}<think>{{ m.reasoning }}</think>{% endfor %}"
    assert thinking_tags(PromptTemplate(chat_template=jinja)) == ("<think>", "</think>")
    assert thinking_tags(PromptTemplate(chat_template="{{ messages }}")) is None


def test_parser_starts_inside_when_the_prompt_opens_the_tag():
    template = PromptTemplate(go_template=CUSTOM)
    inside = thinking_parser(template, "user: hi\nassistant: <|begin_thought|>\n")
    assert inside is not None and inside.in_thinking
    outside = thinking_parser(template, "user: hi\nassistant: ")
    assert outside is not None and not outside.in_thinking
    assert thinking_parser(PromptTemplate(go_template="{{ .Prompt }}"), "x") is None
