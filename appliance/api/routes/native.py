"""Ollama's native inference routes: /, version, generate, chat, embed, embeddings, ps.

Checks run in the order Ollama runs them (reference §2.2-§2.7), so the first error a client sees is
the one Ollama would answer with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import trio
from quart import Blueprint, Response

from appliance import OLLAMA_COMPAT_VERSION, __version__
from appliance.api.context import services
from appliance.api.middleware.asgi import note_model
from appliance.api.requests import check_images, field_of_type, read_json_object
from appliance.api.streaming import json_response, ndjson_response
from appliance.errors import ApplianceError, BadRequest, NotFound
from appliance.gocompat.durations import parse_keep_alive
from appliance.gocompat.timefmt import go_time, utc_now_go
from appliance.options import resolve_options
from appliance.prompting.prompts import (
    PromptError,
    PromptTemplate,
    truncation_search,
)
from appliance.prompting.reply import ReplyParser, ReplyPart
from appliance.prompting.thinking import thinking_parser
from appliance.prompting.toolcalls import tool_call_parser
from appliance.serving.generation import (
    Timing,
    grammar_for,
    nonzero,
    primed,
    run_sequence,
    sequence_request,
)
from appliance.store.create import validate_template
from appliance.store.names import parse_model_name

bp = Blueprint("native", __name__)
log = logging.getLogger(__name__)


@bp.route("/", methods=["GET", "HEAD"])
async def root() -> Response:
    return Response("Ollama is running", content_type="text/plain; charset=utf-8")


@bp.route("/api/version", methods=["GET", "HEAD"])
async def version() -> Response:
    # `version` is the Ollama release whose API this is (clients gate features on it); our
    # own version rides along for `llm-appliance --version`.
    return json_response({"version": OLLAMA_COMPAT_VERSION, "appliance_version": __version__})


# ---- request pieces ------------------------------------------------------------------------------


def _common_checks(body: dict[str, Any]) -> float | None:
    """Decode-time checks shared by generate and chat: images, top_logprobs and keep_alive."""
    check_images(body)
    top = body.get("top_logprobs")
    if top is not None and (
        not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20
    ):
        raise BadRequest("top_logprobs must be between 0 and 20")
    return parse_keep_alive(body.get("keep_alive"))


def _model_field(body: dict[str, Any], *names: str) -> str:
    for name in names:
        value = field_of_type(body, name, str, "")
        if value.strip():
            return value.strip()
    return ""


async def _resolve(model_text: str, *, missing: str = "single"):  # type: ignore[no-untyped-def]
    note_model(model_text)
    parse_model_name(model_text)  # 400 invalid model name
    store = services().store
    try:
        return await trio.to_thread.run_sync(store.resolve, model_text)
    except NotFound:
        if missing == "pull":
            raise NotFound(f'model "{model_text}" not found, try pulling it first') from None
        raise NotFound(f"model '{model_text}' not found") from None


def _options(model: Any, body: dict[str, Any]) -> Any:
    raw = body.get("options")
    if raw is not None and not isinstance(raw, dict):
        raise BadRequest(
            "json: cannot unmarshal options into Go struct field of type map[string]any"
        )
    settings = services().settings
    return resolve_options(model.params or {}, raw or {}, default_num_ctx=settings.default_num_ctx)


def _think_requested(body: dict[str, Any]) -> bool:
    think = body.get("think")
    if think is None or think is False:
        return False
    if think is True or think in ("low", "medium", "high", "max"):
        return True
    raise BadRequest(
        f"invalid think value: {think!r} (must be a boolean or low, medium, high, max)"
    )


def _think_setting(body: dict[str, Any], caps: set[str]) -> bool | None:
    """The `think` the template sees (checked by `_think_requested` first): the request's, a
    level counting as on; unset on a thinking model means on (Ollama defaults it so)."""
    think = body.get("think")
    if think is None:
        return True if "thinking" in caps else None
    return think is not False


async def _template_for(model: Any, lease: Any, override: str | None = None) -> PromptTemplate:
    """The model's prompt template, parsed once per model (a request's `template` is not
    cached)."""
    return await services().extras["catalog"].prompt_template(model, lease, override)


async def _tokenize_prompt(lease: Any, text: str, *, raw: bool) -> list[int]:
    bos = lease.bos_text
    # A rendered chat template usually writes BOS itself; never add a second one.
    add_special = raw or not (bos and text.startswith(bos))
    return await lease.tokenize(text, add_special=add_special)


_tools_dropped_for: set[str] = set()


def _note_dropped_tools(model_name: str) -> None:
    """LLM_APPLIANCE_DROP_UNSUPPORTED_TOOLS: the tools go, logged once per model."""
    if model_name not in _tools_dropped_for:
        _tools_dropped_for.add(model_name)
        log.warning(
            "%s does not support tools; dropping the tools of its chat requests "
            "(LLM_APPLIANCE_DROP_UNSUPPORTED_TOOLS)",
            model_name,
        )


def _check_images(model_text: str, caps: set[str], images: list[Any]) -> None:
    """Images sent to a model without vision are refused (llama-server's words, which clients
    match on), never dropped in silence. Runs after the images were parsed and checked."""
    if images and "vision" not in caps:
        raise BadRequest(
            f'image input is not supported - "{model_text}" does not support vision '
            "(it has no vision projector)"
        )


async def _unload(model: Any) -> None:
    """keep_alive 0 without a prompt: an idle model is unloaded now and the answer waits until
    it is gone, so a client that lists /api/ps right after (Open WebUI's eject) no longer sees
    it. A model still generating for others goes when they finish; that is not waited for."""
    if model.model_path is None:
        return
    scheduler = services().scheduler
    key = str(model.model_path)
    runner = scheduler.runner_for(key)
    if not scheduler.unload(key) or runner is None:
        return
    if runner.ref_count == 0 and runner.state != "loading":
        await runner.exited.wait()


def _decode_fields(seq: Any, body: dict[str, Any]) -> Any:
    """The request's `logprobs`, `top_logprobs` and `shift` on its sequence (checked already by
    `_common_checks`); top_logprobs only counts when logprobs is on, as in Ollama, and without
    shift the runner does not cut a prompt that is still too long (llm/llama_server.go)."""
    seq.logprobs = field_of_type(body, "logprobs", bool, False)
    seq.top_logprobs = (body.get("top_logprobs") or 0) if seq.logprobs else 0
    seq.shift = field_of_type(body, "shift", bool, True)
    if not seq.shift:  # no shift, no token-level truncation: a prompt too long is a 400
        seq.truncate = False
    return seq


def logprob_json(entry: Any) -> dict[str, Any]:
    """One generated token as Ollama's `api.Logprob`: token, logprob, bytes, top_logprobs."""
    out = _token_logprob_json(entry)
    if entry.top:
        out["top_logprobs"] = [_token_logprob_json(t) for t in entry.top]
    return out


def _token_logprob_json(entry: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"token": entry.token, "logprob": max(entry.logprob, -1e30)}
    if entry.bytes:
        out["bytes"] = list(entry.bytes)
    return out


class _Logprobs:
    """Log-probabilities of tokens whose text is not out yet: they go with the next object."""

    def __init__(self) -> None:
        self.pending: list[dict[str, Any]] = []

    def add(self, chunk: Any) -> None:
        if chunk.logprobs:
            self.pending.extend(logprob_json(e) for e in chunk.logprobs)

    def attach(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.pending:
            obj["logprobs"], self.pending = self.pending, []
        return obj


def _final_metrics(chunk: Any, timing: Timing) -> dict[str, int]:
    """Ollama's counts and durations (omitted when zero), plus `prompt_cached_count`: the prompt
    tokens served from the prompt cache, not evaluated (the other APIs' cached tokens)."""
    return nonzero(
        total_duration=timing.total_duration(),
        load_duration=timing.load_duration(),
        prompt_eval_count=chunk.prompt_eval_count,
        prompt_eval_duration=chunk.prompt_eval_ns,
        eval_count=chunk.eval_count,
        eval_duration=chunk.eval_ns,
        prompt_cached_count=getattr(chunk, "prompt_cached", 0),
    )


# ---- generate ------------------------------------------------------------------------------------


@dataclass
class NativeAnswer:
    """A validated native request, ready to answer: `single` when no generation runs (a preload or
    an unload, answered as one object even when streaming was asked), else `items`, the native
    stream objects (the last one `done`), holding the runner's slot until exhausted or closed."""

    model: str
    stream: bool
    single: dict[str, Any] | None = None
    items: AsyncIterator[dict[str, Any]] | None = None
    prompt_tokens: int = 0  # known before the first byte (Anthropic's message_start usage)


async def _respond(
    answer: NativeAnswer,
    whole: Callable[[AsyncIterator[dict[str, Any]]], Awaitable[dict[str, Any]]],
) -> Response:
    """A preload/unload object, an NDJSON stream, or the stream folded into one object."""
    if answer.single is not None:
        return json_response(answer.single)
    assert answer.items is not None
    if answer.stream:
        return ndjson_response(answer.items)
    return json_response(await whole(answer.items))


@bp.route("/api/generate", methods=["POST"])
async def generate() -> Response:
    answer = await prepare_generate(await read_json_object(), Timing())
    return await _respond(answer, whole_generate)


async def prepare_generate(body: dict[str, Any], timing: Timing) -> NativeAnswer:
    """Everything /api/generate does before its first byte: checks in Ollama's order, model
    resolution, the lease, the prompt; shared with /v1/completions."""
    keep_alive = _common_checks(body)
    model_text = _model_field(body, "model")
    if not model_text:
        raise NotFound("model '' not found")
    model = await _resolve(model_text)
    prompt = field_of_type(body, "prompt", str, "")
    suffix = field_of_type(body, "suffix", str, "")
    system = field_of_type(body, "system", str, None)
    template = field_of_type(body, "template", str, None)
    context = field_of_type(body, "context", list, None)
    raw = field_of_type(body, "raw", bool, False)
    stream = field_of_type(body, "stream", bool, True)
    svc = services()

    if prompt == "" and keep_alive == 0 and "keep_alive" in body:
        await _unload(model)
        single = _generate_obj(model_text, "", done=True, done_reason="unload")
        return NativeAnswer(model_text, stream, single=single)

    if raw and (template or system or context):
        raise BadRequest("raw mode does not support template, system, or context")
    caps = await svc.extras["catalog"].capabilities(model)
    if "completion" not in caps:
        raise BadRequest(f'"{model_text}" does not support generate')
    if suffix and "insert" not in caps:
        raise BadRequest(f"{model.name.full()} does not support insert")
    if _think_requested(body) and "thinking" not in caps:
        raise BadRequest(f'"{model_text}" does not support thinking')
    _check_images(model_text, caps, field_of_type(body, "images", list, None) or [])
    think = _think_setting(body, caps)
    if context is not None and not all(
        isinstance(t, int) and not isinstance(t, bool) for t in context
    ):
        raise BadRequest("json: cannot unmarshal context into Go struct field of type []int")
    if template:
        validate_template(template)  # a client's template: 400, before a slot is taken
    options = _options(model, body)
    grammar = grammar_for(body.get("format"))

    lease = await svc.scheduler.acquire(model, options, keep_alive)
    timing.mark_loaded()
    if prompt == "" and not suffix:
        lease.release()
        single = _generate_obj(model_text, "", done=True, done_reason="load")
        return NativeAnswer(model_text, stream, single=single)
    reply = ReplyParser()
    try:
        if raw:
            text = prompt
        else:
            tmpl = await _template_for(model, lease, template)
            try:
                text = tmpl.render_generate(
                    prompt,
                    system=system if system is not None else model.system,
                    suffix=suffix or None,
                    messages_before=() if context else list(model.messages or ()),
                    think=think,
                )
            except PromptError as exc:
                if not template:
                    raise
                raise BadRequest(exc.message) from None  # the client's own template failed
            if think:
                reply = ReplyParser(thinking_parser(tmpl, text))
            if context:
                text = await lease.detokenize(list(context)) + text
        tokens = await _tokenize_prompt(lease, text, raw=raw)
        seq = sequence_request(
            tokens,
            options,
            grammar=grammar,
            num_ctx=lease.num_ctx,
            truncate=field_of_type(body, "truncate", bool, True),
        )
        _decode_fields(seq, body)
    except BaseException:
        lease.release()
        raise
    chunks = await primed(run_sequence(lease, seq))
    want_context = not raw
    return NativeAnswer(
        model_text,
        stream,
        items=_generate_stream(chunks, model_text, timing, tokens, want_context, reply),
    )


def _generate_obj(
    model: str, response: str, *, done: bool, thinking: str = "", **extra: Any
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "model": model,
        "created_at": utc_now_go(),
        "response": response,
    }
    if thinking:
        obj["thinking"] = thinking
    obj["done"] = done
    obj.update(extra)
    return obj


def _generate_final(
    chunk: Any,
    model: str,
    timing: Timing,
    prompt_tokens: list[int],
    want_context: bool,
    tail: ReplyPart,
) -> dict[str, Any]:
    final = _generate_obj(model, tail.content, done=True, thinking=tail.thinking)
    if chunk.done_reason:
        final["done_reason"] = chunk.done_reason
    if want_context:
        final["context"] = list(prompt_tokens) + list(chunk.tokens or [])
    final.update(_final_metrics(chunk, timing))
    return final


async def _generate_stream(
    chunks: AsyncIterator[Any],
    model: str,
    timing: Timing,
    prompt_tokens: list[int],
    want_context: bool,
    reply: ReplyParser,
) -> AsyncIterator[dict[str, Any]]:
    logprobs = _Logprobs()
    async for chunk in chunks:
        logprobs.add(chunk)
        if chunk.text:
            part = reply.add(chunk.text)
            if part:
                obj = _generate_obj(model, part.content, done=False, thinking=part.thinking)
                yield logprobs.attach(obj)
        if chunk.done:
            final = _generate_final(
                chunk, model, timing, prompt_tokens, want_context, reply.finish()
            )
            yield logprobs.attach(final)


async def whole_generate(items: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed answer: the final object carrying the whole text and thinking."""
    return await _whole(items, lambda obj: obj)


async def _whole(items: AsyncIterator[dict[str, Any]], fields_of: Any) -> dict[str, Any]:
    """The final object with `content`/`response` and `thinking` concatenated and every tool call
    collected (Ollama's non-stream mode); `fields_of` picks the dict that holds them."""
    texts: dict[str, list[str]] = {}
    calls: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] = []
    try:
        async for obj in items:
            logprobs.extend(obj.get("logprobs") or [])
            fields = fields_of(obj)
            for key in ("response", "content", "thinking"):
                if key in fields:
                    texts.setdefault(key, []).append(fields[key])
            calls.extend(fields.get("tool_calls") or [])
            if obj.get("done"):
                for key, parts in texts.items():
                    if key != "thinking" or any(parts):
                        fields[key] = "".join(parts)
                if calls:
                    fields["tool_calls"] = calls
                if logprobs:
                    obj["logprobs"] = logprobs
                return obj
    finally:
        await items.aclose()  # type: ignore[attr-defined]
    raise ApplianceError("generation ended without a final chunk")


# ---- chat ----------------------------------------------------------------------------------------


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("messages")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest(
            "json: cannot unmarshal messages into Go struct field ChatRequest.messages"
            " of type []api.Message"
        )
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise BadRequest("json: cannot unmarshal message into Go value of type api.Message")
        role = item.get("role", "")
        content = item.get("content", "")
        if not isinstance(role, str) or (content is not None and not isinstance(content, str)):
            raise BadRequest(
                "json: cannot unmarshal message field into Go struct field of type string"
            )
        message = dict(item)
        message["role"] = role.lower()
        message["content"] = content or ""
        out.append(message)
    return out


@bp.route("/api/chat", methods=["POST"])
async def chat() -> Response:
    answer = await prepare_chat(await read_json_object(), Timing())
    return await _respond(answer, whole_chat)


async def prepare_chat(
    body: dict[str, Any],
    timing: Timing,
    *,
    relax_thinking: bool = False,
    render_only: bool = False,
) -> NativeAnswer:
    """Everything /api/chat does before its first byte; shared with /v1/chat/completions,
    /v1/responses and /v1/messages. `relax_thinking` (Anthropic clients, as Ollama's
    `relax_thinking`) drops a `think` the model cannot do instead of refusing the request;
    `render_only` stops once the prompt is tokenized (its `prompt_tokens`), generating nothing."""
    keep_alive = _common_checks(body)
    model_text = _model_field(body, "model")
    if not model_text:
        raise BadRequest("model is required")
    messages = _messages(body)
    model = await _resolve(model_text)
    stream = field_of_type(body, "stream", bool, True)
    tools = field_of_type(body, "tools", list, None)
    svc = services()

    if not messages and keep_alive == 0 and "keep_alive" in body:
        await _unload(model)
        return NativeAnswer(
            model_text, stream, single=_chat_obj(model_text, "", done=True, done_reason="unload")
        )

    caps = await svc.extras["catalog"].capabilities(model)
    if "completion" not in caps:
        raise BadRequest(f'"{model_text}" does not support chat')
    if tools and "tools" not in caps:
        if not svc.settings.drop_unsupported_tools:
            raise BadRequest(f"{model.name.full()} does not support tools")
        _note_dropped_tools(model.name.full())
        tools = None
    if relax_thinking and "thinking" not in caps:
        body = {**body, "think": None}
    _check_images(model_text, caps, [img for m in messages for img in m.get("images") or ()])
    if _think_requested(body) and "thinking" not in caps:
        raise BadRequest(f'"{model_text}" does not support thinking')
    think = _think_setting(body, caps)
    options = _options(model, body)
    grammar = grammar_for(body.get("format"))

    lease = await svc.scheduler.acquire(model, options, keep_alive)
    timing.mark_loaded()
    if not messages:
        lease.release()
        return NativeAnswer(
            model_text, stream, single=_chat_obj(model_text, "", done=True, done_reason="load")
        )
    try:
        tmpl = await _template_for(model, lease)
        history = list(model.messages or []) + messages
        if model.system and messages[0]["role"] != "system":
            history.insert(0, {"role": "system", "content": model.system})
        text, tokens = await _fit_chat(lease, tmpl, history, tools, body, think)
        if render_only:
            lease.release()
            single = _chat_obj(model_text, "", done=True, done_reason="load")
            return NativeAnswer(model_text, stream, single=single, prompt_tokens=len(tokens))
        reply = ReplyParser(
            thinking_parser(tmpl, text) if think else None,
            tool_call_parser(tmpl, tools) if tools else None,
        )
        seq = sequence_request(
            tokens,
            options,
            grammar=grammar,
            num_ctx=lease.num_ctx,
            truncate=field_of_type(body, "truncate", bool, True),
        )
        _decode_fields(seq, body)
    except BaseException:
        lease.release()
        raise
    chunks = await primed(run_sequence(lease, seq))
    return NativeAnswer(
        model_text,
        stream,
        items=_chat_stream(chunks, model_text, timing, reply),
        prompt_tokens=len(tokens),
    )


async def _fit_chat(
    lease: Any,
    tmpl: PromptTemplate,
    history: list[dict[str, Any]],
    tools: Any,
    body: dict[str, Any],
    think: bool | None = None,
) -> tuple[str, list[int]]:
    """Render and tokenize; drop the oldest whole turns while the prompt exceeds the context.

    Each candidate history is rendered and tokenized in its own worker-thread call (tokenizing
    reads only the vocabulary, safe beside a running decode), so a client that hangs up stops the
    search within one render, and `truncation_search` needs O(log n) of them. A template that
    refuses the history (Gemma's "roles must alternate") is the client's 400, never a 500.
    """
    num_ctx = lease.num_ctx
    truncate = field_of_type(body, "truncate", bool, True)
    bos = lease.bos_text or ""

    def probe(messages: list[dict[str, Any]]) -> tuple[str, list[int]]:
        try:
            text = tmpl.render_chat(messages, tools=tools, think=think)
        except PromptError as exc:
            raise BadRequest(exc.message) from None
        add_special = not (bos and text.startswith(bos))
        return text, lease.tokenize_blocking(text, add_special=add_special)

    if not truncate:
        return await trio.to_thread.run_sync(probe, history)
    search = truncation_search(history)
    rendered: dict[int, tuple[str, list[int]]] = {}
    try:
        candidate = next(search)
        while True:
            result = await trio.to_thread.run_sync(probe, candidate)
            rendered[len(candidate)] = result
            candidate = search.send(len(result[1]) <= num_ctx)
    except StopIteration as done:
        kept = done.value
    if len(kept) in rendered:  # kept histories differ in length, so this is the one rendered
        return rendered[len(kept)]
    return await trio.to_thread.run_sync(probe, kept)


def _chat_obj(
    model: str, content: str, *, done: bool, part: ReplyPart | None = None, **extra: Any
) -> dict[str, Any]:
    message = {"role": "assistant", **(part.message_fields() if part else {"content": content})}
    obj: dict[str, Any] = {
        "model": model,
        "created_at": utc_now_go(),
        "message": message,
        "done": done,
    }
    obj.update(extra)
    return obj


def _chat_final(chunk: Any, model: str, timing: Timing, tail: ReplyPart) -> dict[str, Any]:
    final = _chat_obj(model, "", done=True, part=tail)
    if chunk.done_reason:
        final["done_reason"] = chunk.done_reason
    final.update(_final_metrics(chunk, timing))
    return final


async def _chat_stream(
    chunks: AsyncIterator[Any], model: str, timing: Timing, reply: ReplyParser
) -> AsyncIterator[dict[str, Any]]:
    """Message chunks; text that may be the start of a tag or a tool call waits for the next."""
    logprobs = _Logprobs()
    async for chunk in chunks:
        logprobs.add(chunk)
        if chunk.text:
            part = reply.add(chunk.text)
            if part:
                yield logprobs.attach(_chat_obj(model, "", done=False, part=part))
        if chunk.done:
            yield logprobs.attach(_chat_final(chunk, model, timing, reply.finish()))


async def whole_chat(items: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed answer: the final object carrying the whole message."""
    return await _whole(items, lambda obj: obj["message"])


# ---- embeddings ----------------------------------------------------------------------------------


@bp.route("/api/embed", methods=["POST"])
async def embed() -> Response:
    return json_response(await embed_answer(await read_json_object(), Timing()))


async def embed_answer(body: dict[str, Any], timing: Timing) -> dict[str, Any]:
    """The /api/embed answer object; shared with /v1/embeddings."""
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    model_text = _model_field(body, "model")
    raw_input = body.get("input")
    if raw_input is None or isinstance(raw_input, str):
        inputs = [raw_input] if raw_input else []
    elif isinstance(raw_input, list) and all(isinstance(x, str) for x in raw_input):
        inputs = list(raw_input)
    else:
        raise BadRequest("invalid input type")
    if not model_text:
        raise NotFound("model '' not found")
    model = await _resolve(model_text, missing="pull")
    truncate = field_of_type(body, "truncate", bool, True)
    dimensions = field_of_type(body, "dimensions", int, None)
    options = _options(model, body)
    svc = services()
    lease = await svc.scheduler.acquire(model, options, keep_alive)
    timing.mark_loaded()
    try:
        if not inputs:
            return {"model": model_text, "embeddings": []}
        try:
            vectors, count = await lease.embed(
                inputs, truncate=truncate, normalize=True, dimensions=dimensions or None
            )
        except ApplianceError as exc:
            raise ApplianceError(
                exc.message, status=exc.status if exc.status != 500 else 400
            ) from None
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    finally:
        lease.release()
    return {
        "model": model_text,
        "embeddings": vectors,
        **nonzero(
            total_duration=timing.total_duration(),
            load_duration=timing.load_duration(),
            prompt_eval_count=count,
        ),
    }


@bp.route("/api/embeddings", methods=["POST"])
async def embeddings() -> Response:
    body = await read_json_object()
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    model_text = _model_field(body, "model")
    if not model_text:
        raise BadRequest("model is required")
    model = await _resolve(model_text, missing="pull")
    prompt = field_of_type(body, "prompt", str, "")
    options = _options(model, body)
    lease = await services().scheduler.acquire(model, options, keep_alive)
    try:
        if not prompt:
            return json_response({"embedding": []})
        vectors, _ = await lease.embed([prompt], truncate=True, normalize=False, dimensions=None)
    finally:
        lease.release()
    return json_response({"embedding": vectors[0]})


# ---- ps ------------------------------------------------------------------------------------------


@bp.route("/api/ps", methods=["GET"])
async def ps() -> Response:
    svc = services()
    now = time.time()
    entries = []
    for runner in svc.scheduler.runners:
        model = runner.model
        expires_seconds = runner.expires_at_wall(now)
        entries.append(
            (
                expires_seconds,
                {
                    "name": model.name.display_shortest(),
                    "model": model.name.display_shortest(),
                    "size": runner.spec.memory_bytes,
                    "digest": model.digest,
                    "details": model.details(),
                    "expires_at": _expires_text(expires_seconds),
                    "size_vram": 0,
                    "context_length": runner.spec.num_ctx,
                },
            )
        )
    entries.sort(key=lambda e: e[0], reverse=True)
    return json_response({"models": [e[1] for e in entries]})


def _expires_text(epoch_seconds: float) -> str:
    base = datetime.fromtimestamp(0, tz=UTC)
    return go_time((base + timedelta(seconds=epoch_seconds)).astimezone())
