"""Templates and formats the tool-call and thinking tests share: tiny models get a Go template
that renders tools (or <think> tags), and a JSON-schema `format` steers them into a call (or a
thought), so the parsers see exactly the text Ollama's would.
"""

# ruff: noqa: E501

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
