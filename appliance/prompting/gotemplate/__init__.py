"""The subset of Go's `text/template` that Ollama model templates use: parse once, render often.

Ollama's TEMPLATE layer is a Go template, and a client notices any byte we render differently, so
this follows Go's rules (trim markers, truthiness, `and`/`or` short-circuit values, `eq` with
several arguments, sorted map iteration, `fmt`'s `%v` printing, `json.Marshal` escaping) rather
than Python's. Anything outside the subset fails in `parse_template` with the line, so an
unsupported template is refused when a model is created or loaded, never rendered wrongly.

Values: a `dict` is a Go `map[string]any` (a missing key prints `<no value>`, as in Go with
`missingkey=zero`, and ranges in sorted key order); `OrderedMap` keeps insertion order (Ollama's
tool arguments and properties); `GoStruct` is a Go struct (a field it lacks renders empty rather
than failing, and it prints as JSON when the Go type has a `String()` that marshals itself).

One module per stage: `lexer` (text, actions, tokens), `parser` into `nodes`, `executor` (the
node dispatch), `funcs` (Go's builtin functions and truth), `printing` (fmt and `json.Marshal`),
`values` (Go values), `template` (the parsed `Template` and its tree queries). Nothing here
imports the rest of the appliance.
"""

from __future__ import annotations

from appliance.prompting.gotemplate.errors import TemplateError
from appliance.prompting.gotemplate.nodes import Action, Branch, Field, Pipe, Text
from appliance.prompting.gotemplate.printing import go_format_float, go_json, go_sprint
from appliance.prompting.gotemplate.template import Template, parse_template
from appliance.prompting.gotemplate.values import GoStruct, JSONList, OrderedMap

__all__ = [
    "Action",
    "Branch",
    "Field",
    "GoStruct",
    "JSONList",
    "OrderedMap",
    "Pipe",
    "Template",
    "TemplateError",
    "Text",
    "go_format_float",
    "go_json",
    "go_sprint",
    "parse_template",
]
