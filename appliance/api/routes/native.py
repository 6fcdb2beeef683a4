"""Ollama's native inference routes: /, version, generate, chat, embed, embeddings, ps.

Checks run in the order Ollama runs them (reference §2.2-§2.7), so the first error a client sees is
the one Ollama would answer with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import trio
from quart import Blueprint, Response

from appliance import OLLAMA_COMPAT_VERSION, __version__
from appliance.api.bodies.inference import (
    ChatRequest,
    Decoding,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    Message,
)
from appliance.api.context import services
from appliance.api.middleware.asgi import note_model
from appliance.api.requests import read_json_object
from appliance.api.streaming import json_response, ndjson_response
from appliance.errors import ApplianceError, BadRequest, NotFound
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
_Request = TypeVar("_Request")
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


async def _read(parse: Callable[[dict[str, Any]], _Request]) -> _Request:
    """The request body parsed by `parse`; a body refused still names its model in the log."""
    body = await read_json_object()
    try:
        return parse(body)
    except BadRequest:
        if isinstance(body.get("model"), str):
            note_model(body["model"].strip())
        raise


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


def _options(model: Any, requested: Mapping[str, Any]) -> Any:
    settings = services().settings
    return resolve_options(
        model.params or {},
        requested,
        default_num_ctx=settings.default_num_ctx,
        warned=services().warned,
    )


async def _template_for(model: Any, lease: Any, override: str | None = None) -> PromptTemplate:
    """The model's prompt template, parsed once per model (a request's `template` is not
    cached)."""
    return await services().extras["catalog"].prompt_template(model, lease, override)


def _adds_bos(lease: Any, text: str) -> bool:
    """Whether tokenizing `text` should add BOS: a rendered chat template usually writes BOS
    itself, and a second one is never added."""
    bos = lease.bos_text
    return not (bos and text.startswith(bos))


def _note_dropped_tools(model_name: str) -> None:
    """LLM_APPLIANCE_DROP_UNSUPPORTED_TOOLS: the tools go, logged once per model."""
    warned = services().warned
    if f"tools dropped: {model_name}" not in warned:
        warned.add(f"tools dropped: {model_name}")
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
    if model.model_path is not None:
        await services().scheduler.unload_idle(str(model.model_path))


def _sequence(lease: Any, tokens: list[int], options: Any, grammar: Any, decoding: Decoding) -> Any:
    """The sequence for a prompt, with the request's `truncate`, `logprobs`, `top_logprobs` and
    `shift`; top_logprobs only counts when logprobs is on, as in Ollama, and without shift the
    runner does not cut a prompt that is still too long (llm/llama_server.go)."""
    seq = sequence_request(
        tokens, options, grammar=grammar, num_ctx=lease.num_ctx, truncate=decoding.truncate
    )
    seq.logprobs = decoding.logprobs
    seq.top_logprobs = decoding.top_logprobs if decoding.logprobs else 0
    seq.shift = decoding.shift
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
        prompt_cached_count=chunk.prompt_cached,
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
    req = await _read(GenerateRequest.parse)
    return await _respond(await prepare_generate(req, Timing()), whole_generate)


async def prepare_generate(req: GenerateRequest, timing: Timing) -> NativeAnswer:
    """Everything /api/generate does before its first byte: checks in Ollama's order, model
    resolution, the lease, the prompt; shared with /v1/completions."""
    if not req.model:
        raise NotFound("model '' not found")
    model = await _resolve(req.model)
    if req.prompt == "" and req.decoding.keep_alive == 0:
        await _unload(model)
        return _generate_single(req, "unload")
    think = await _generate_checks(req, model)
    options = _options(model, req.decoding.options)
    grammar = grammar_for(req.decoding.format)
    lease = await services().scheduler.acquire(model, options, req.decoding.keep_alive)
    timing.mark_loaded()
    if req.prompt == "" and not req.suffix:
        lease.release()
        return _generate_single(req, "load")
    try:
        text, reply = await _generate_prompt(req, model, lease, think)
        tokens = await lease.tokenize(text, add_special=req.raw or _adds_bos(lease, text))
        seq = _sequence(lease, tokens, options, grammar, req.decoding)
    except BaseException:
        lease.release()
        raise
    chunks = await primed(run_sequence(lease, seq))
    items = _native_stream(
        chunks,
        reply,
        lambda part: _generate_obj(req.model, part.content, done=False, thinking=part.thinking),
        lambda chunk, tail: _generate_final(chunk, req.model, timing, tokens, not req.raw, tail),
    )
    return NativeAnswer(req.model, req.stream, items=items)


def _generate_single(req: GenerateRequest, done_reason: str) -> NativeAnswer:
    """The one object of a generate that only loads or unloads the model."""
    single = _generate_obj(req.model, "", done=True, done_reason=done_reason)
    return NativeAnswer(req.model, req.stream, single=single)


async def _generate_checks(req: GenerateRequest, model: Any) -> bool | None:
    """The request against its model, in Ollama's order; the `think` the template sees."""
    if req.raw and (req.template or req.system or req.context):
        raise BadRequest("raw mode does not support template, system, or context")
    caps = await services().extras["catalog"].capabilities(model)
    if "completion" not in caps:
        raise BadRequest(f'"{req.model}" does not support generate')
    if req.suffix and "insert" not in caps:
        raise BadRequest(f"{model.name.full()} does not support insert")
    if req.decoding.think_requested and "thinking" not in caps:
        raise BadRequest(f'"{req.model}" does not support thinking')
    _check_images(req.model, caps, req.images)
    if req.template:
        validate_template(req.template)  # a client's template: 400, before a slot is taken
    return req.decoding.think_setting(caps)


async def _generate_prompt(
    req: GenerateRequest, model: Any, lease: Any, think: bool | None
) -> tuple[str, ReplyParser]:
    """The prompt text (the request's own when raw, else rendered, after the `context` tokens'
    text) and the parser its reply goes through."""
    if req.raw:
        return req.prompt, ReplyParser()
    tmpl = await _template_for(model, lease, req.template)
    try:
        text = tmpl.render_generate(
            req.prompt,
            system=req.system if req.system is not None else model.system,
            suffix=req.suffix or None,
            messages_before=() if req.context else list(model.messages or ()),
            think=think,
        )
    except PromptError as exc:
        if not req.template:
            raise
        raise BadRequest(exc.message) from None  # the client's own template failed
    reply = ReplyParser(thinking_parser(tmpl, text)) if think else ReplyParser()
    if req.context:
        text = await lease.detokenize(list(req.context)) + text
    return text, reply


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


async def _native_stream(
    chunks: AsyncIterator[Any],
    reply: ReplyParser,
    part_obj: Callable[[ReplyPart], dict[str, Any]],
    final_obj: Callable[[Any, ReplyPart], dict[str, Any]],
) -> AsyncIterator[dict[str, Any]]:
    """The native stream objects of /api/generate and /api/chat (the route's `part_obj` and
    `final_obj` shape them); text that may be the start of a tag or a tool call waits for the
    next chunk, and so do the log-probabilities of its tokens."""
    logprobs = _Logprobs()
    async for chunk in chunks:
        logprobs.add(chunk)
        if chunk.text:
            part = reply.add(chunk.text)
            if part:
                yield logprobs.attach(part_obj(part))
        if chunk.done:
            yield logprobs.attach(final_obj(chunk, reply.finish()))


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


@bp.route("/api/chat", methods=["POST"])
async def chat() -> Response:
    req = await _read(ChatRequest.parse)
    return await _respond(await prepare_chat(req, Timing()), whole_chat)


async def prepare_chat(
    req: ChatRequest,
    timing: Timing,
    *,
    relax_thinking: bool = False,
    render_only: bool = False,
) -> NativeAnswer:
    """Everything /api/chat does before its first byte; shared with /v1/chat/completions,
    /v1/responses and /v1/messages. `relax_thinking` (Anthropic clients, as Ollama's
    `relax_thinking`) drops a `think` the model cannot do instead of refusing the request;
    `render_only` stops once the prompt is tokenized (its `prompt_tokens`), generating nothing."""
    if not req.model:
        raise BadRequest("model is required")
    model = await _resolve(req.model)
    if not req.messages and req.decoding.keep_alive == 0:
        await _unload(model)
        return _chat_single(req, "unload")
    req, think = await _chat_checks(req, model, relax_thinking=relax_thinking)
    options = _options(model, req.decoding.options)
    grammar = grammar_for(req.decoding.format)
    lease = await services().scheduler.acquire(model, options, req.decoding.keep_alive)
    timing.mark_loaded()
    if not req.messages:
        lease.release()
        return _chat_single(req, "load")
    tools = list(req.tools) if req.tools else None
    try:
        tmpl = await _template_for(model, lease)
        history = _history(model, req.messages)
        text, tokens = await _fit_chat(lease, tmpl, history, tools, req.decoding.truncate, think)
        if render_only:
            lease.release()
            return _chat_single(req, "load", prompt_tokens=len(tokens))
        reply = ReplyParser(
            thinking_parser(tmpl, text) if think else None,
            tool_call_parser(tmpl, tools) if tools else None,
        )
        seq = _sequence(lease, tokens, options, grammar, req.decoding)
    except BaseException:
        lease.release()
        raise
    chunks = await primed(run_sequence(lease, seq))
    items = _native_stream(
        chunks,
        reply,
        lambda part: _chat_obj(req.model, "", done=False, part=part),
        lambda chunk, tail: _chat_final(chunk, req.model, timing, tail),
    )
    return NativeAnswer(req.model, req.stream, items=items, prompt_tokens=len(tokens))


def _chat_single(req: ChatRequest, done_reason: str, *, prompt_tokens: int = 0) -> NativeAnswer:
    """The one object of a chat that only loads or unloads the model (or only counts tokens)."""
    single = _chat_obj(req.model, "", done=True, done_reason=done_reason)
    return NativeAnswer(req.model, req.stream, single=single, prompt_tokens=prompt_tokens)


async def _chat_checks(
    req: ChatRequest, model: Any, *, relax_thinking: bool
) -> tuple[ChatRequest, bool | None]:
    """The request against its model, in Ollama's order: the request as it will run (tools
    dropped if the setting says so, `think` dropped if relaxed) and the `think` the template
    sees."""
    svc = services()
    caps = await svc.extras["catalog"].capabilities(model)
    if "completion" not in caps:
        raise BadRequest(f'"{req.model}" does not support chat')
    if req.tools and "tools" not in caps:
        if not svc.settings.drop_unsupported_tools:
            raise BadRequest(f"{model.name.full()} does not support tools")
        _note_dropped_tools(model.name.full())
        req = replace(req, tools=None)
    if relax_thinking and "thinking" not in caps:
        req = replace(req, decoding=replace(req.decoding, think=None))
    _check_images(req.model, caps, req.images)
    if req.decoding.think_requested and "thinking" not in caps:
        raise BadRequest(f'"{req.model}" does not support thinking')
    return req, req.decoding.think_setting(caps)


def _history(model: Any, messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """The model's own messages (Modelfile MESSAGE) and system prompt, then the request's."""
    history = list(model.messages or []) + [m.as_dict() for m in messages]
    if model.system and messages[0].role != "system":
        history.insert(0, {"role": "system", "content": model.system})
    return history


async def _fit_chat(
    lease: Any,
    tmpl: PromptTemplate,
    history: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    truncate: bool,
    think: bool | None = None,
) -> tuple[str, list[int]]:
    """Render and tokenize; drop the oldest whole turns while the prompt exceeds the context
    (unless `truncate` is off).

    Each candidate history is rendered and tokenized in its own worker-thread call (tokenizing
    reads only the vocabulary, safe beside a running decode), so a client that hangs up stops the
    search within one render, and `truncation_search` needs O(log n) of them. A template that
    refuses the history (Gemma's "roles must alternate") is the client's 400, never a 500.
    """
    num_ctx = lease.num_ctx

    def probe(messages: list[dict[str, Any]]) -> tuple[str, list[int]]:
        try:
            text = tmpl.render_chat(messages, tools=tools, think=think)
        except PromptError as exc:
            raise BadRequest(exc.message) from None
        return text, lease.tokenize_blocking(text, add_special=_adds_bos(lease, text))

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


async def whole_chat(items: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed answer: the final object carrying the whole message."""
    return await _whole(items, lambda obj: obj["message"])


# ---- embeddings ----------------------------------------------------------------------------------


@bp.route("/api/embed", methods=["POST"])
async def embed() -> Response:
    req = await _read(EmbedRequest.parse)
    return json_response(await embed_answer(req, Timing()))


async def embed_answer(req: EmbedRequest, timing: Timing) -> dict[str, Any]:
    """The /api/embed answer object; shared with /v1/embeddings."""
    if not req.model:
        raise NotFound("model '' not found")
    model = await _resolve(req.model, missing="pull")
    options = _options(model, req.options)
    lease = await services().scheduler.acquire(model, options, req.keep_alive)
    timing.mark_loaded()
    try:
        if not req.inputs:
            return {"model": req.model, "embeddings": []}
        vectors, count = await lease.embed(
            list(req.inputs),
            truncate=req.truncate,
            normalize=True,
            dimensions=req.dimensions or None,
        )
    finally:
        lease.release()
    return {
        "model": req.model,
        "embeddings": vectors,
        **nonzero(
            total_duration=timing.total_duration(),
            load_duration=timing.load_duration(),
            prompt_eval_count=count,
        ),
    }


@bp.route("/api/embeddings", methods=["POST"])
async def embeddings() -> Response:
    req = await _read(EmbeddingsRequest.parse)
    if not req.model:
        raise BadRequest("model is required")
    model = await _resolve(req.model, missing="pull")
    options = _options(model, req.options)
    lease = await services().scheduler.acquire(model, options, req.keep_alive)
    try:
        if not req.prompt:
            return json_response({"embedding": []})
        vectors, _ = await lease.embed(
            [req.prompt], truncate=True, normalize=False, dimensions=None
        )
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
