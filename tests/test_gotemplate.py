"""Go `text/template` subset: each test pins one rule of Go's parser or executor.

Conventions: pure functions, no I/O, no clock. Expected strings are what Go's `text/template`
(with Ollama's `json` function and `missingkey=zero`) prints for the same template and data.
"""

from __future__ import annotations

import pytest

from appliance.prompting.gotemplate import (
    GoStruct,
    JSONList,
    OrderedMap,
    TemplateError,
    go_format_float,
    go_json,
    parse_template,
)


def render(text: str, data: object = None) -> str:
    return parse_template(text).render({} if data is None else data)


def test_text_without_actions_renders_unchanged() -> None:
    assert render("hello\n  world {not an action}") == "hello\n  world {not an action}"


def test_trim_markers_remove_adjacent_whitespace() -> None:
    assert render("a \n\t {{- .X -}} \n b", {"X": "x"}) == "axb"


def test_dash_without_space_is_a_negative_number_not_a_trim_marker() -> None:
    assert render("a {{-3}} b") == "a -3 b"


def test_comments_render_nothing_and_may_trim() -> None:
    assert render("a {{/* note */}} b {{- /* trimmed */ -}} c") == "a  bc"


def test_nested_fields_and_root_variable() -> None:
    data = {"M": {"Function": {"Name": "f"}}, "L": [1]}
    text = "{{ .M.Function.Name }} {{ range .L }}{{ $.M.Function.Name }}{{ end }}"
    assert render(text, data) == "f f"


def test_missing_map_key_prints_no_value_and_is_false() -> None:
    assert render("{{ .Nope }}|{{ if .Nope }}yes{{ else }}no{{ end }}") == "<no value>|no"


def test_missing_struct_field_renders_empty() -> None:
    assert render("[{{ .S.Nope }}]", {"S": GoStruct({"Role": "user"})}) == "[]"


def test_variables_declare_and_assign_across_scopes() -> None:
    text = "{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ $y := 3 }}{{ $y }}{{ end }}{{ $x }}"
    assert render(text) == "32"


def test_variable_declared_in_a_block_is_undefined_after_it() -> None:
    with pytest.raises(TemplateError, match=r'line 2: undefined variable "\$y"'):
        parse_template("{{ if true }}{{ $y := 1 }}{{ end }}\n{{ $y }}")


def test_if_else_if_else_chain() -> None:
    text = '{{ if eq .R "a" }}A{{ else if eq .R "b" }}B{{ else }}C{{ end }}'
    assert [render(text, {"R": r}) for r in "abz"] == ["A", "B", "C"]


def test_go_truthiness_of_zero_values() -> None:
    text = "{{ range .V }}{{ if . }}T{{ else }}F{{ end }}{{ end }}"
    values = [0, 1, 0.0, "", "x", [], [0], {}, {"k": 1}, False, True, None, GoStruct({})]
    assert render(text, {"V": values}) == "FTFFTFTFTFTFT"


def test_range_with_index_and_element_variables() -> None:
    text = "{{ range $i, $m := .L }}{{ $i }}={{ $m.Role }};{{ end }}"
    assert render(text, {"L": [{"Role": "user"}, {"Role": "assistant"}]}) == "0=user;1=assistant;"


def test_range_over_empty_runs_else() -> None:
    assert render("{{ range .L }}x{{ else }}empty{{ end }}", {"L": []}) == "empty"


def test_range_over_map_is_sorted_by_key_and_ordered_map_keeps_order() -> None:
    text = "{{ range $k, $v := .M }}{{ $k }}{{ $v }}{{ end }}"
    assert render(text, {"M": {"b": 2, "a": 1}}) == "a1b2"
    assert render(text, {"M": OrderedMap([("b", 2), ("a", 1)])}) == "b2a1"


def test_break_and_continue_in_range() -> None:
    text = (
        "{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}"
        "{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}"
    )
    assert render(text, {"L": [1, 2, 3, 4, 5]}) == "13"


def test_with_sets_dot_and_else_runs_on_empty() -> None:
    text = "{{ with .A }}[{{ . }}]{{ else }}none{{ end }}"
    assert render(text, {"A": "x"}) == "[x]"
    assert render(text, {"A": ""}) == "none"


def test_and_or_return_operands_and_short_circuit() -> None:
    # `index nil 1` would fail if evaluated: Go stops at the first deciding operand.
    text = '{{ and 1 0 "x" }}|{{ or 0 "" "y" }}|{{ and 0 (index .N 1) }}'
    assert render(text, {"N": None}) == "0|y|0"


def test_eq_accepts_several_candidates() -> None:
    text = '{{ if eq .R "system" "user" }}yes{{ else }}no{{ end }}'
    assert render(text, {"R": "user"}) == "yes"
    assert render(text, {"R": "tool"}) == "no"


def test_eq_of_incompatible_types_is_a_render_error() -> None:
    with pytest.raises(TemplateError, match="incompatible types for comparison"):
        render('{{ eq 1 "1" }}')


def test_ordering_comparisons() -> None:
    assert render("{{ lt 1 2 }} {{ le 2 2 }} {{ gt 1 2 }} {{ ge 3 2 }} {{ ne 1 2 }}") == (
        "true true false true true"
    )


def test_len_slice_and_index() -> None:
    data = {"L": ["a", "b", "c"], "M": {"k": "v"}}
    text = (
        '{{ len .L }} {{ len (slice .L 1) }} {{ index .L 2 }} {{ index .M "k" }} '
        '{{ slice "hello" 1 3 }}'
    )
    assert render(text, data) == "3 2 c v el"


def test_len_of_string_counts_utf8_bytes() -> None:
    assert render('{{ len "héllo" }}') == "6"


def test_pipelines_pass_the_value_as_last_argument() -> None:
    assert render('{{ .L | len }} {{ "x" | printf "%s-%s" "a" }}', {"L": [1, 2]}) == "2 a-x"


def test_parenthesised_pipeline_with_field_access() -> None:
    assert render("{{ (index .L 0).Name }}", {"L": [{"Name": "n"}]}) == "n"


def test_print_printf_println_follow_fmt() -> None:
    text = (
        '{{ print 1 2 "s" 3 }}|{{ printf "%s=%d %q %v %5.2f" "a" 3 "q" true 3.14159 }}'
        '|{{ println "a" 1 }}'
    )
    assert render(text) == '1 2s3|a=3 "q" true  3.14|a 1\n'


def test_literals_strings_numbers_bools_nil() -> None:
    text = (
        "{{ \"a\\tb\" }} {{ `raw\\n` }} {{ 0x1F }} {{ 1.5 }} {{ true }} {{ 'a' }} {{ eq .X nil }}"
    )
    assert render(text, {"X": None}) == "a\tb raw\\n 31 1.5 true 97 true"


def test_values_print_like_fmt_v() -> None:
    data = {"L": ["a", 1, None], "M": {"b": 1, "a": "x"}, "F": 1e6}
    assert render("{{ .L }} {{ .M }} {{ .F }}", data) == "[a 1 <nil>] map[a:x b:1] 1e+06"


def test_float_formatting_matches_go() -> None:
    cases = {0.5: "0.5", 3.0: "3", 123456.0: "123456", 1234567.0: "1.234567e+06", 1e-5: "1e-05"}
    assert {f: go_format_float(f) for f in cases} == cases


def test_json_matches_go_marshal() -> None:
    value = {"b": "<a&b>", "a": [1, 2.5, None, True, 1e-7]}
    assert go_json(value) == '{"a":[1,2.5,null,true,1e-7],"b":"\\u003ca\\u0026b\\u003e"}'
    assert go_json(OrderedMap([("z", 1), ("a", "é")])) == '{"z":1,"a":"é"}'


def test_stringer_structs_print_as_their_json() -> None:
    tool = GoStruct({"Type": "function"}, OrderedMap([("type", "function")]), stringer=True)
    data = {"T": tool, "Tools": JSONList([tool])}
    assert render("{{ .T }} {{ json .T }} {{ .Tools }}", data) == (
        '{"type":"function"} {"type":"function"} [{"type":"function"}]'
    )


def test_field_of_nil_is_a_render_error() -> None:
    with pytest.raises(TemplateError, match="nil pointer evaluating"):
        render("{{ .A.B }}", {"A": None})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('a\n{{ define "x" }}{{ end }}', "line 2: unsupported template construct 'define'"),
        ('{{ template "x" }}', "line 1: unsupported template construct 'template'"),
        ("\n\n{{ html .X }}", "line 3: unsupported function 'html'"),
        ("{{ frobnicate .X }}", 'line 1: function "frobnicate" not defined'),
        ("{{ if .X }}never closed", "line 1: unexpected EOF"),
        ("x\n{{ end }}", "line 2: unexpected {{end}}"),
        ("{{ .X ", "line 1: unclosed action"),
        ("{{ }}", "line 1: missing value"),
        ("{{ break }}", "line 1: {{break}} outside {{range}}"),
        ("{{ .X 1 }}", "can't give argument to non-function"),
        ("{{ range .L }}{{ else if .X }}{{ end }}", "unexpected else if"),
        ("{{/* open", "line 1: unclosed comment"),
    ],
)
def test_unsupported_or_malformed_templates_fail_at_parse_with_the_line(
    text: str, message: str
) -> None:
    with pytest.raises(TemplateError) as info:
        parse_template(text)
    assert message in str(info.value)


def test_identifiers_are_the_lowercased_fields_and_variables_ollama_reports() -> None:
    # The cases of Ollama's TestParse (template/template_test.go), before `.Response` is added.
    assert parse_template("{{ .System }} {{ .Prompt }}").identifiers() == {"system", "prompt"}
    text = (
        '{{ range .Messages }}{{ if eq .Role "tool" }}{{ .ToolName }} {{ .Content }}'
        "{{ end }}{{ end }}"
    )
    assert parse_template(text).identifiers() == {"messages", "role", "toolname", "content"}
    assert parse_template("{{ with .Tools }}{{ . }}{{ end }}").identifiers() == {"tools"}
    assert parse_template("{{ $.Messages }}").identifiers() == {"$", "messages"}


def test_cut_after_response_keeps_response_and_drops_everything_after() -> None:
    tmpl = parse_template(
        "{{ if .System }}S{{ end }}[{{ .Prompt }}] {{ .Response }}</s>{{ if true }}x{{ end }}"
    )
    data = {"System": "", "Prompt": "p", "Response": "r"}
    assert tmpl.cut_after_response().render(data) == "[p] r"


def test_response_in_a_condition_does_not_cut() -> None:
    tmpl = parse_template("{{ if .Response }}R{{ end }}after {{ .Response }}end")
    assert tmpl.cut_after_response().render({"Response": ""}) == "after "
