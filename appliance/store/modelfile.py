"""Modelfiles: parse them (for `create` on the command line) and write them (for `/api/show`).

The grammar is Ollama's parser/parser.go: one `INSTRUCTION args` per line, case-insensitive
instructions, `#` comment lines, values unquoted (to the end of the line, trimmed) or quoted with
`"` or `\"\"\"` (which may span lines; the inside is kept as is). Errors read `(line N): <msg>`.
The server never parses Modelfiles: the client turns one into an `/api/create` body
(`create_request`), uploading local files as blobs first, as `ollama create` does (§6.4).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import BadRequest
from appliance.options import format_params

INSTRUCTIONS = (
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
)
MESSAGE_ROLES = ("system", "user", "assistant")


class ModelfileError(BadRequest):
    pass


@dataclass
class Command:
    name: str  # lower-case instruction; for PARAMETER the parameter key
    args: str
    line: int = 0
    role: str = ""  # MESSAGE only


@dataclass
class Modelfile:
    commands: list[Command] = field(default_factory=list)

    def first(self, name: str) -> str | None:
        return next((c.args for c in self.commands if c.name == name), None)


def _error(line: int, message: str) -> ModelfileError:
    return ModelfileError(f"(line {line}): {message}")


def parse_modelfile(text: str) -> Modelfile:
    """Parse Modelfile text; `ModelfileError` (a 400) with Ollama's wording on bad input."""
    mf = Modelfile()
    pos, line, n = 0, 1, len(text)
    if text.startswith("\ufeff"):
        pos = 1
    while pos < n:
        ch = text[pos]
        if ch == "\n":
            line += 1
            pos += 1
            continue
        if ch in " \t\r":
            pos += 1
            continue
        if ch == "#":
            end = text.find("\n", pos)
            pos = n if end < 0 else end
            continue
        start_line = line
        end = pos
        while end < n and (text[end].isalnum() or text[end] == "_"):
            end += 1
        word = text[pos:end].lower()
        if word not in INSTRUCTIONS or end >= n or text[end] not in " \t":
            raise _error(
                start_line,
                'command must be one of "from", "license", "template", '
                '"system", "adapter", "renderer", "parser", "parameter", "message", '
                'or "requires"',
            )
        pos = end
        key = role = ""
        if word in ("parameter", "message"):
            pos = _skip_blanks(text, pos)
            end = pos
            while end < n and text[end] not in " \t\r\n":
                end += 1
            key = text[pos:end]
            pos = end
            if word == "parameter" and not key.replace("_", "a").isalnum():
                raise _error(start_line, f"invalid parameter name '{key}'")
            if word == "message":
                role = key.lower()
                if role not in MESSAGE_ROLES:
                    raise _error(
                        start_line, 'message role must be one of "system", "user", or "assistant"'
                    )
        value, pos, line = _read_value(text, _skip_blanks(text, pos), line, start_line)
        if not value and word not in ("system", "template", "license", "message"):
            raise _error(start_line, f"missing value for [{word}]")
        name = key if word == "parameter" else word
        mf.commands.append(Command(name=name, args=value, line=start_line, role=role))
        if word == "parameter":
            mf.commands[-1].role = "parameter"
    if not any(c.name == "from" for c in mf.commands):
        raise ModelfileError("no FROM line")
    return mf


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _read_value(text: str, pos: int, line: int, start_line: int) -> tuple[str, int, int]:
    for quote in ('"""', '"'):
        if text.startswith(quote, pos):
            close = text.find(quote, pos + len(quote))
            if close < 0:
                raise _error(start_line, "unterminated quote")
            value = text[pos + len(quote) : close]
            line += value.count("\n")
            end = text.find("\n", close)
            end = len(text) if end < 0 else end
            if text[close + len(quote) : end].strip():
                raise _error(line, "unexpected text after closing quote")
            return value, end, line
    end = text.find("\n", pos)
    end = len(text) if end < 0 else end
    return text[pos:end].strip(), end, line


# -- client side: Modelfile -> /api/create body ---------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1024 * 1024):
            h.update(block)
    return "sha256:" + h.hexdigest()


def create_request(
    mf: Modelfile, base_dir: Path, model: str
) -> tuple[dict[str, Any], dict[str, Path]]:
    """The `/api/create` body for `mf`, and {digest: local file} to POST to /api/blobs first.

    FROM/ADAPTER naming an existing file (relative to `base_dir`) become `files`/`adapters`;
    any other FROM is a model name. PARAMETER lines are typed as Ollama's FormatParams does.
    """
    body: dict[str, Any] = {"model": model}
    uploads: dict[str, Path] = {}
    params: list[tuple[str, str]] = []
    licenses: list[str] = []
    messages: list[dict[str, str]] = []
    for cmd in mf.commands:
        if cmd.role == "parameter":
            params.append((cmd.name, cmd.args))
        elif cmd.name in ("from", "adapter"):
            path = (base_dir / Path(cmd.args).expanduser()).resolve()
            if path.is_file():
                digest = sha256_file(path)
                uploads[digest] = path
                body.setdefault("files" if cmd.name == "from" else "adapters", {})[path.name] = (
                    digest
                )
            elif cmd.name == "from":
                body["from"] = cmd.args
            else:
                raise ModelfileError(f"(line {cmd.line}): adapter file {cmd.args} not found")
        elif cmd.name == "license":
            licenses.append(cmd.args)
        elif cmd.name == "message":
            messages.append({"role": cmd.role, "content": cmd.args})
        else:
            body[cmd.name] = cmd.args
    try:
        typed = format_params(params)
    except BadRequest as exc:
        raise ModelfileError(exc.message) from None
    if typed:
        body["parameters"] = typed
    if licenses:
        body["license"] = licenses
    if messages:
        body["messages"] = messages
    return body, uploads


# -- server side: the Modelfile text of /api/show -------------------------------------------------


def _quote(s: str) -> str:
    """Ollama's `quote`: quote values that span lines or have edge spaces."""
    if "\n" in s or s.startswith(" ") or s.endswith(" "):
        return f'"""{s}"""' if '"' in s else f'"{s}"'
    return s


def go_value(value: Any) -> str:
    """fmt's `%v` of a JSON-decoded value."""
    from appliance.prompting.gotemplate import go_sprint

    return go_sprint(value)


def go_sharp_value(value: Any) -> str:
    """fmt's `%#v` of a JSON-decoded value (strings Go-quoted)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return go_value(value)


def param_lines(params: dict[str, Any]) -> list[tuple[str, Any]]:
    """(key, value) per PARAMETER line: lists expand to one line per item."""
    out: list[tuple[str, Any]] = []
    for key, value in params.items():
        if isinstance(value, list):
            out.extend((key, item) for item in value)
        else:
            out.append((key, value))
    return out


def render_modelfile(
    *,
    short_name: str,
    model_path: str,
    adapters: list[str],
    projectors: list[str],
    template: str | None,
    system: str,
    params: dict[str, Any],
    licenses: list[str],
    messages: list[dict[str, Any]],
    renderer: str = "",
    parser: str = "",
) -> str:
    """The `modelfile` field of `/api/show` (Ollama's `Model.String()` with its header)."""
    lines = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {short_name}",
        "",
        f"FROM {model_path}",
    ]
    lines += [f"ADAPTER {_quote(a)}" for a in adapters]
    lines += [f"FROM {p}" for p in projectors]
    if template is not None:
        lines.append(f"TEMPLATE {_quote(template)}")
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    if renderer:
        lines.append(f"RENDERER {_quote(renderer)}")
    if parser:
        lines.append(f"PARSER {_quote(parser)}")
    lines += [f"PARAMETER {k} {_quote(go_value(v))}" for k, v in param_lines(params)]
    lines += [f"LICENSE {_quote(text)}" for text in licenses]
    for m in messages:
        lines.append(f"MESSAGE {m.get('role', '')} {_quote(str(m.get('content', '')))}")
    return "\n".join(lines) + "\n"
