"""Prompt rendering: Ollama's Go-template rules, Hugging Face's Jinja rules, the fallbacks.

Conventions: templates are written out in the test that uses them, in the shape of the model
family's Ollama template; the conversations and expected strings of the `test_ollama_*` tests
come from Ollama's own template tests (template/template_test.go), so they pin Ollama's bytes.
No I/O except reading real GGUF headers (the generated tiny model, and the reference model
behind the `reference` mark); no clock.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.prompting.prompts import (
    GEMMA3_CHAT_TEMPLATE,
    PromptError,
    PromptTemplate,
    template_source,
    truncate_messages,
)
from engine.gguf import read_gguf_info

HELLO = [
    {"role": "user", "content": "Hello friend!"},
    {"role": "assistant", "content": "Hello human!"},
    {"role": "user", "content": "What is your name?"},
]
SYSTEM_HELLO = [{"role": "system", "content": "You are a helpful assistant!"}, *HELLO]
SHOWCASE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello, how are you?"},
    {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
    {"role": "user", "content": "I'd like to show off how chat templating works!"},
]

MISTRAL_LEGACY = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] "
MISTRAL_LEGACY_RESPONSE = MISTRAL_LEGACY + "{{ .Response }}"
MISTRAL_MESSAGES = (
    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n"
    "{{- range .Messages }}\n"
    '{{- if eq .Role "user" }}{{ .Content }}[/INST] '
    '{{ else if eq .Role "assistant" }}{{ .Content }}[INST] {{ end }}\n'
    "{{- end }}"
)

CHATML = (
    "{{- if .Messages }}\n"
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}\n"
    '{{- range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}\n'
    "{{ .Content }}<|im_end|>\n{{ end }}{{ end }}<|im_start|>assistant\n"
    "{{ else }}\n"
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
    "{{- end }}"
)

PHI3_LEGACY = (
    "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}"
    "{{ if .Prompt }}<|user|>\n{{ .Prompt }}<|end|>\n{{ end }}"
    "<|assistant|>\n{{ .Response }}<|end|>\n"
)

GEMMA_MESSAGES = (
    "{{- range $index, $_ := .Messages }}\n"
    '{{- if eq .Role "system" }}{{ continue }}{{ end }}<start_of_turn>\n'
    '{{- if eq .Role "user" }}user\n'
    "{{- if and $.System (eq $index 1) }}\n{{ $.System }}\n{{- end }}\n"
    '{{- else if eq .Role "assistant" }}model\n'
    "{{- end }}\n"
    "{{ .Content }}<end_of_turn>\n"
    "{{ end }}<start_of_turn>model\n"
)

LLAMA31_TOOLS = """{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

You are a helpful assistant with tool calling capabilities.
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}

Given the following functions, respond with a JSON function call.

{{ range $.Tools }}
{{- . }}
{{ end }}
Question: {{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}
{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""

QWEN_TOOLS = """{{- if .Tools }}<|im_start|>system
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools><|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ if $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather <now> & later",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
        },
    },
}
WEATHER_JSON = (
    '{"type":"function","function":{"name":"get_weather","description":'
    '"Weather \\u003cnow\\u003e \\u0026 later","parameters":{"type":"object","required":["city"],'
    '"properties":{"city":{"type":"string","description":"City name"},'
    '"unit":{"type":"string","enum":["c","f"]}}}}}'
)


# -- Go templates: Ollama's three execution forms ---------------------------------------------


@pytest.mark.parametrize("template", [MISTRAL_LEGACY, MISTRAL_LEGACY_RESPONSE, MISTRAL_MESSAGES])
def test_ollama_mistral_forms_render_the_same_conversation(template: str) -> None:
    rendered = PromptTemplate(go_template=template).render_chat(HELLO)
    assert rendered == "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "


@pytest.mark.parametrize("template", [MISTRAL_LEGACY, MISTRAL_LEGACY_RESPONSE, MISTRAL_MESSAGES])
def test_ollama_mistral_forms_place_the_system_prompt_in_the_first_turn(template: str) -> None:
    rendered = PromptTemplate(go_template=template).render_chat(SYSTEM_HELLO)
    assert rendered == (
        "[INST] You are a helpful assistant!\n\n"
        "Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
    )


def test_ollama_legacy_template_continues_a_trailing_assistant_message() -> None:
    prefill = [*HELLO, {"role": "assistant", "content": "My name is Ollama and I"}]
    rendered = PromptTemplate(go_template="[INST] {{ .Prompt }}[/INST] ").render_chat(prefill)
    assert rendered == (
        "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
        "My name is Ollama and I"
    )


@pytest.mark.parametrize("use_messages", [True, False])
def test_ollama_chatml_messages_and_legacy_forms_agree(use_messages: bool) -> None:
    template = (
        CHATML if use_messages else CHATML.split("{{ else }}\n")[1].removesuffix("{{- end }}")
    )
    rendered = PromptTemplate(go_template=template).render_chat(SYSTEM_HELLO)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n"
        "<|im_start|>user\nHello friend!<|im_end|>\n"
        "<|im_start|>assistant\nHello human!<|im_end|>\n"
        "<|im_start|>user\nWhat is your name?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_ollama_suffix_fills_prompt_and_suffix_instead_of_messages() -> None:
    fim = PromptTemplate(
        go_template="{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n"
        "{{- else }}{{ .Prompt }}\n{{- end }}"
    )
    assert fim.render_generate("def add(", system=None, suffix="return x") == (
        "<PRE> def add( <SUF>return x <MID>"
    )
    assert fim.render_generate("hello", system=None) == "hello"
    assert fim.capabilities() == {"insert"}


def test_legacy_phi3_template_renders_each_turn_and_stops_after_the_response() -> None:
    rendered = PromptTemplate(go_template=PHI3_LEGACY).render_chat(SHOWCASE)
    assert rendered == (
        "<|system|>\nYou are a helpful assistant.<|end|>\n"
        "<|user|>\nHello, how are you?<|end|>\n"
        "<|assistant|>\nI'm doing great. How can I help you today?<|end|>\n"
        "<|user|>\nI'd like to show off how chat templating works!<|end|>\n"
        "<|assistant|>\n"
    )


def test_template_without_prompt_response_or_messages_gets_response_appended() -> None:
    bare = PromptTemplate(go_template="{{ .Prompt }}")
    assert bare.render_chat(HELLO) == "Hello friend!Hello human!What is your name?"


def test_gemma_messages_template_folds_the_system_prompt_into_the_first_user_turn() -> None:
    rendered = PromptTemplate(go_template=GEMMA_MESSAGES).render_chat(SHOWCASE)
    assert rendered == (
        "<start_of_turn>user\nYou are a helpful assistant.\nHello, how are you?<end_of_turn>\n"
        "<start_of_turn>model\nI'm doing great. How can I help you today?<end_of_turn>\n"
        "<start_of_turn>user\nI'd like to show off how chat templating works!<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_consecutive_messages_of_a_role_are_merged_but_tool_messages_are_not() -> None:
    tmpl = PromptTemplate(go_template="{{ range .Messages }}[{{ .Role }}:{{ .Content }}]{{ end }}")
    msgs = [
        {"role": "user", "content": "Hello"},
        {"role": "USER", "content": "How are you?"},
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "72F"},
    ]
    assert tmpl.render_chat(msgs) == "[user:Hello\n\nHow are you?][tool:sunny][tool:72F]"


def test_all_system_messages_are_joined_into_dot_system() -> None:
    tmpl = PromptTemplate(go_template="{{ .System }}|{{ len .Messages }}")
    msgs = [
        {"role": "system", "content": "one"},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "two"},
    ]
    assert tmpl.render_chat(msgs) == "one\n\ntwo|3"


def test_llama31_tools_are_listed_as_go_json_for_the_last_user_turn() -> None:
    tmpl = PromptTemplate(go_template=LLAMA31_TOOLS)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Paris?"}]
    assert tmpl.render_chat(msgs, tools=[WEATHER_TOOL]) == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.\n\n"
        "You are a helpful assistant with tool calling capabilities.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, respond with a JSON function call.\n\n"
        f"{WEATHER_JSON}\n\n"
        "Question: Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert tmpl.capabilities() == {"tools"}


def test_llama31_tool_calls_print_arguments_as_json_in_the_callers_order() -> None:
    tmpl = PromptTemplate(go_template=LLAMA31_TOOLS)
    call = {"function": {"name": "get_weather", "arguments": {"unit": "c", "city": "Paris"}}}
    msgs = [
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "22C"},
    ]
    assert tmpl.render_chat(msgs) == (
        "<|start_header_id|>user<|end_header_id|>\n\nParis?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"unit":"c","city":"Paris"}}<|eot_id|>'
        "<|start_header_id|>ipython<|end_header_id|>\n\n22C<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_qwen_tools_print_each_function_as_its_json() -> None:
    tmpl = PromptTemplate(go_template=QWEN_TOOLS)
    rendered = tmpl.render_chat([{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL])
    function_json = WEATHER_JSON.removeprefix('{"type":"function","function":').removesuffix("}")
    assert rendered == (
        "<|im_start|>system\n<tools>\n"
        f'{{"type": "function", "function": {function_json}}}\n'
        "</tools><|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_think_flags_reach_the_template() -> None:
    tmpl = PromptTemplate(
        go_template="{{ range .Messages }}{{ .Content }}{{ end }}"
        "{{ if and .IsThinkSet (not .Think) }} /no_think{{ end }}"
    )
    msgs = [{"role": "user", "content": "q"}]
    assert tmpl.render_chat(msgs) == "q"
    assert tmpl.render_chat(msgs, think=False) == "q /no_think"
    assert tmpl.render_chat(msgs, think=True) == "q"
    assert tmpl.capabilities() == {"thinking"}


def test_generate_renders_system_then_modelfile_messages_then_the_prompt() -> None:
    tmpl = PromptTemplate(go_template="{{ range .Messages }}<{{ .Role }}>{{ .Content }}{{ end }}")
    rendered = tmpl.render_generate(
        "now",
        system="sys",
        messages_before=[{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}],
    )
    assert rendered == "<system>sys<user>u1<assistant>a1<user>now"


def test_broken_go_template_fails_when_the_prompt_template_is_built() -> None:
    with pytest.raises(PromptError, match=r"template error: line 2: function \"nope\" not defined"):
        PromptTemplate(go_template="ok\n{{ nope .Prompt }}")


def test_go_template_failing_at_render_raises_prompt_error() -> None:
    tmpl = PromptTemplate(go_template="{{ range .Messages }}{{ eq .Role 1 }}{{ end }}")
    with pytest.raises(PromptError, match="incompatible types"):
        tmpl.render_chat([{"role": "user", "content": "x"}])


# -- Jinja chat templates from the GGUF ---------------------------------------------------------


def test_gemma3_chat_template_renders_a_conversation_exactly() -> None:
    tmpl = PromptTemplate(chat_template=GEMMA3_CHAT_TEMPLATE, bos_token="<bos>")
    assert tmpl.render_chat(SHOWCASE) == (
        "<bos><start_of_turn>user\nYou are a helpful assistant.\n\nHello, how are you?"
        "<end_of_turn>\n<start_of_turn>model\nI'm doing great. How can I help you today?"
        "<end_of_turn>\n<start_of_turn>user\nI'd like to show off how chat templating works!"
        "<end_of_turn>\n<start_of_turn>model\n"
    )


def test_jinja_raise_exception_becomes_prompt_error() -> None:
    tmpl = PromptTemplate(chat_template=GEMMA3_CHAT_TEMPLATE, bos_token="<bos>")
    with pytest.raises(PromptError, match="Conversation roles must alternate"):
        tmpl.render_chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_jinja_tojson_behaves_like_hugging_face() -> None:
    tmpl = PromptTemplate(
        chat_template="{{ tools | tojson }}|{{ messages[0] | tojson(indent=2) }}"
        "|{{ strftime_now('%Y') | length }}|{{ add_generation_prompt }}"
    )
    rendered = tmpl.render_chat([{"role": "user", "content": "<é>"}], tools=[{"b": 1, "a": 2}])
    assert rendered == ('[{"b": 1, "a": 2}]|{\n  "role": "user",\n  "content": "<é>"\n}|4|True')


def test_jinja_template_is_sandboxed() -> None:
    tmpl = PromptTemplate(chat_template="{{ messages.append(1) }}")
    with pytest.raises(PromptError):
        tmpl.render_chat([{"role": "user", "content": "x"}])


def test_go_template_is_preferred_over_the_gguf_chat_template() -> None:
    tmpl = PromptTemplate(go_template="GO {{ .Prompt }}", chat_template="JINJA")
    assert tmpl.render_generate("p", system=None) == "GO p"


def test_template_source_is_go_then_gguf_chat_template_then_built_in() -> None:
    assert template_source("GO", "JINJA", "gemma3") == ("go", "GO")
    assert template_source(None, "JINJA", "gemma3") == ("jinja", "JINJA")
    assert template_source("", None, "gemma3") == ("jinja", GEMMA3_CHAT_TEMPLATE)
    assert template_source(None, "", "llama") == ("none", "")


def test_tiny_gguf_chat_template_renders_with_its_bos(tiny_gguf: Path) -> None:
    info = read_gguf_info(tiny_gguf)
    tmpl = PromptTemplate(chat_template=info.chat_template, bos_token="<s>", eos_token="</s>")
    assert tmpl.render_generate("hi", system="be kind") == (
        "<s><|system|>be kind\n<|user|>hi\n<|assistant|>"
    )


@pytest.mark.reference
@pytest.mark.slow
def test_reference_gemma3_gguf_has_no_chat_template_so_the_builtin_renders(
    reference_gguf: Path,
) -> None:
    info = read_gguf_info(reference_gguf)
    tokens = info.metadata["tokenizer.ggml.tokens"]
    bos = tokens[info.metadata["tokenizer.ggml.bos_token_id"]]
    assert info.chat_template is None
    tmpl = PromptTemplate(
        chat_template=info.chat_template, bos_token=bos, architecture=info.architecture
    )
    assert tmpl.render_chat(SHOWCASE) == (
        "<bos><start_of_turn>user\nYou are a helpful assistant.\n\nHello, how are you?"
        "<end_of_turn>\n<start_of_turn>model\nI'm doing great. How can I help you today?"
        "<end_of_turn>\n<start_of_turn>user\nI'd like to show off how chat templating works!"
        "<end_of_turn>\n<start_of_turn>model\n"
    )


# -- fallbacks, capabilities, truncation --------------------------------------------------------


def test_without_any_template_chat_is_a_role_tagged_transcript() -> None:
    assert PromptTemplate().render_chat(SHOWCASE[:2]) == (
        "System: You are a helpful assistant.\nUser: Hello, how are you?\nAssistant:"
    )


def test_without_any_template_a_plain_generate_prompt_is_sent_verbatim() -> None:
    assert PromptTemplate().render_generate("Once upon a time", system=None) == "Once upon a time"


def test_suffix_without_a_go_template_is_refused() -> None:
    with pytest.raises(PromptError, match="insert"):
        PromptTemplate(chat_template="{{ messages }}").render_generate("a", system=None, suffix="b")


def test_jinja_capabilities_come_from_the_template_text() -> None:
    tmpl = PromptTemplate(chat_template="{% if tools %}T{% endif %}<think>")
    assert tmpl.capabilities() == {"tools", "thinking"}
    assert PromptTemplate().capabilities() == set()


def test_truncation_drops_the_oldest_whole_turns_until_it_fits() -> None:
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
    ]
    kept = truncate_messages(msgs, lambda c: len(c) <= 3)
    assert [m["content"] for m in kept] == ["s", "u2"]


def test_truncation_keeps_every_system_message_and_the_last_one_even_if_too_long() -> None:
    msgs = [
        {"role": "system", "content": "s1"},
        {"role": "user", "content": "u1"},
        {"role": "system", "content": "s2"},
        {"role": "user", "content": "u2"},
    ]
    kept = truncate_messages(msgs, lambda c: False)
    assert [m["content"] for m in kept] == ["s1", "s2", "u2"]


def test_truncation_stops_at_the_first_message_that_overflows() -> None:
    sizes = {"old": 1, "big": 100, "new": 1, "last": 1}
    msgs = [{"role": "user", "content": c} for c in sizes]
    kept = truncate_messages(msgs, lambda c: sum(sizes[m["content"]] for m in c) <= 10)
    assert [m["content"] for m in kept] == ["new", "last"]


def test_truncation_keeps_everything_that_fits() -> None:
    msgs = [{"role": "user", "content": str(i)} for i in range(4)]
    assert truncate_messages(msgs, lambda c: True) == msgs
    assert truncate_messages([], lambda c: True) == []


def test_truncation_never_starts_the_kept_history_at_an_assistant_turn() -> None:
    msgs = [{"role": "system", "content": "s"}]
    for i in range(40):
        msgs += [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"a{i}"}]
    msgs.append({"role": "user", "content": "last"})
    for budget in range(2, len(msgs) + 1):
        kept = truncate_messages(msgs, lambda c, b=budget: len(c) <= b)
        assert kept[0]["content"] == "s" and kept[1]["role"] == "user", budget
        assert len(kept) in (budget, budget - 1), budget  # only whole turns are dropped


def test_truncation_of_a_long_history_needs_logarithmically_many_renders() -> None:
    msgs = [{"role": "user", "content": str(i)} for i in range(20_001)]
    tried: list[int] = []

    def fits(candidate: list[dict[str, str]]) -> bool:
        tried.append(len(candidate))
        return len(candidate) <= 777

    kept = truncate_messages(msgs, fits)
    assert [m["content"] for m in kept] == [str(i) for i in range(20_001 - 777, 20_001)]
    assert len(tried) <= 2 * 16  # gallop + bisect: about 2 log2(777)
    assert max(tried) <= 2 * 777  # no render is much bigger than what is kept


def test_truncation_tries_a_short_history_whole_first() -> None:
    tried: list[int] = []
    assert truncate_messages(HELLO, lambda c: tried.append(len(c)) or True) == HELLO
    assert tried == [3]


def test_truncation_keeps_the_history_as_sent_when_it_fits_even_if_it_starts_with_a_reply() -> None:
    msgs = [{"role": "assistant", "content": f"a{i}"} for i in range(3)] + [
        m for i in range(20) for m in ({"role": "user", "content": f"u{i}"},)
    ]
    assert truncate_messages(msgs, lambda c: True) == msgs
