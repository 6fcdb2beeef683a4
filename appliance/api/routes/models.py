"""Model management routes: tags, show, copy, delete, create, blobs (reference §2.6, §2.8, §2.9).

Shapes, statuses and messages are Ollama's; every filesystem step runs in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import trio
from quart import Blueprint, Response, request

from appliance.api.bodies.models import (
    CopyRequest,
    DeleteRequest,
    ShowRequest,
    parse_create,
)
from appliance.api.context import services
from appliance.api.middleware.asgi import note_model
from appliance.api.requests import read_json_object
from appliance.api.streaming import json_response, ndjson_response
from appliance.errors import NotFound
from appliance.gocompat.timefmt import go_time_ns
from appliance.prompting.prompts import template_source
from appliance.store.create import create_model
from appliance.store.modelfile import go_sharp_value, param_lines, render_modelfile
from appliance.store.store import LocalModel, Store, model_capabilities

log = logging.getLogger(__name__)

bp = Blueprint("models", __name__)

UPLOAD_FLUSH_BYTES = 4 * 1024 * 1024
MAX_SHOWN_ARRAY = 5


def _store() -> Store:
    return services().store


def _noprune() -> bool:
    return services().settings.noprune


def _empty_ok(status: int = 200) -> Response:
    return Response(b"", status=status)


# ---- tags ----------------------------------------------------------------------------------------


def _tag_entry(store: Store, m: LocalModel) -> dict[str, Any]:
    shown = m.name.display_shortest()
    entry: dict[str, Any] = {
        "name": shown,
        "model": shown,
        "modified_at": go_time_ns(m.modified_ns),
        "size": m.size,
        "digest": m.digest,
        "details": m.details(),
    }
    caps = store.capabilities(m)
    if caps:
        entry["capabilities"] = caps
    return entry


def list_tags(store: Store) -> dict[str, Any]:
    """The `/api/tags` body (blocking: reads manifests and, once per blob, GGUF headers)."""
    return {"models": [_tag_entry(store, m) for m in store.list_models()]}


@bp.route("/api/tags", methods=["GET", "HEAD"])
async def tags() -> Response:
    body = await trio.to_thread.run_sync(list_tags, _store())
    return json_response(body)


# ---- show ----------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """GGUF metadata values as JSON (numpy scalars and arrays become Python values)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def model_info(info: Any, *, verbose: bool) -> dict[str, Any]:
    """Ollama's `model_info`: the KV map without general.name and the chat template, keys sorted,
    arrays longer than 5 emptied unless verbose."""
    out: dict[str, Any] = {}
    for key, value in info.metadata.items():
        if key in ("general.name", "tokenizer.chat_template"):
            continue
        value = _plain(value)
        if isinstance(value, list) and len(value) > MAX_SHOWN_ARRAY and not verbose:
            value = []
        out[key] = value
    out.setdefault("general.parameter_count", info.parameter_count)
    return dict(sorted(out.items()))


def show_model(store: Store, text: str, *, verbose: bool, system: str) -> dict[str, Any]:
    """The `/api/show` body for the model named `text` (blocking)."""
    m = store.resolve(text)
    info = None
    if m.model_path is not None:
        try:
            info = store.gguf_info(m.model_path)
        except (OSError, ValueError) as exc:
            log.warning("cannot read GGUF of %s: %s", m.name, exc)
    body = _shown_layers(m, info, system or m.system)
    body["details"] = m.details(with_parent=True)
    if m.messages:
        body["messages"] = m.messages
    body["model_info"] = {}  # always present: several integrations crash without it (Ollama)
    if info is not None:
        body.update(_shown_gguf(store, m, info, verbose=verbose))
    caps = model_capabilities(m, info, store.template_caps(m.template))  # the header read above
    if caps:
        body["capabilities"] = caps
    body["modified_at"] = go_time_ns(m.modified_ns)
    if m.config.get("requires"):
        body["requires"] = m.config["requires"]
    return body


def _shown_layers(m: LocalModel, info: Any, system: str) -> dict[str, Any]:
    """license, modelfile, parameters, template, system, renderer and parser, in Ollama's order."""
    # The template in use, decided as rendering decides it: the TEMPLATE layer, else the GGUF's
    # own, else the built-in one for its architecture (the reference Gemma 3 GGUF ships none and
    # renders with Gemma 3's published one).
    kind, source = template_source(
        m.template,
        info.chat_template if info is not None else None,
        info.architecture if info is not None else None,
    )
    template = source if kind != "none" else m.template
    params = "\n".join(f"{k:<30} {go_sharp_value(v)}" for k, v in param_lines(m.params))
    body: dict[str, Any] = {}
    if m.license:
        body["license"] = "\n".join(m.license)
    body["modelfile"] = render_modelfile(
        short_name=m.name.display_shortest(),
        model_path=str(m.model_path or ""),
        adapters=[str(p) for p in m.adapters],
        projectors=[str(p) for p in m.projector_paths],
        template=m.template,
        system=system,
        params=m.params,
        licenses=m.license,
        messages=m.messages,
        renderer=str(m.config.get("renderer") or ""),
        parser=str(m.config.get("parser") or ""),
    )
    if params:
        body["parameters"] = params
    if template:
        body["template"] = template
    if system:
        body["system"] = system
    for key in ("renderer", "parser"):
        if m.config.get(key):
            body[key] = m.config[key]
    return body


def _shown_gguf(store: Store, m: LocalModel, info: Any, *, verbose: bool) -> dict[str, Any]:
    """model_info, projector_info and tensors, read from the GGUF headers."""
    body: dict[str, Any] = {"model_info": model_info(info, verbose=verbose)}
    if m.projector_path is not None:
        try:
            body["projector_info"] = model_info(store.gguf_info(m.projector_path), verbose=verbose)
        except (OSError, ValueError) as exc:
            log.warning("cannot read projector of %s: %s", m.name, exc)
    body["tensors"] = [
        {"name": name, "type": kind, "shape": list(shape)} for name, kind, shape in info.tensors
    ]
    return body


@bp.route("/api/show", methods=["POST"])
async def show() -> Response:
    req = ShowRequest.parse(await read_json_object())
    note_model(req.model)
    result = await trio.to_thread.run_sync(
        lambda: show_model(_store(), req.model, verbose=req.verbose, system=req.system)
    )
    agent = request.headers.get("User-Agent", "")
    if agent.startswith("GitHubCopilotChat/") and "model_info" in result:
        result["model_info"]["general.basename"] = req.model
    return json_response(result)


# ---- copy, delete --------------------------------------------------------------------------------


@bp.route("/api/copy", methods=["POST"])
async def copy() -> Response:
    req = CopyRequest.parse(await read_json_object())
    store = _store()

    def run() -> None:
        s = store.existing_name(req.source)
        d = store.existing_name(req.destination)
        if not store.manifest_path(s).is_file():
            raise NotFound(f'model "{req.source_text}" not found')
        store.copy(s, d)

    await trio.to_thread.run_sync(run)
    return _empty_ok()


@bp.route("/api/delete", methods=["DELETE"])
async def delete() -> Response:
    req = DeleteRequest.parse(await read_json_object())
    store = _store()

    def run() -> tuple[Any, list[LocalModel]]:
        existing = store.existing_name(req.name)
        try:
            store.delete(existing)
        except FileNotFoundError:
            raise NotFound(f"model '{req.model}' not found") from None
        return existing, store.list_models()

    deleted, remaining = await trio.to_thread.run_sync(run)
    scheduler = services().scheduler
    if scheduler is not None:
        scheduler.forget_name(deleted, remaining)
    return _empty_ok()


# ---- blobs ---------------------------------------------------------------------------------------


@bp.route("/api/blobs/<path:digest>", methods=["HEAD"])
async def head_blob(digest: str) -> Response:
    store = _store()
    path = store.blob_path(digest)
    if not await trio.to_thread.run_sync(path.is_file):
        raise NotFound(f'blob "{digest}" not found')
    return _empty_ok()


@bp.route("/api/blobs/<path:digest>", methods=["POST"])
async def post_blob(digest: str) -> Response:
    """Stream the body to a temp file while hashing; publish only if the digest matches."""
    store = _store()
    path = store.blob_path(digest)  # 400 invalid digest format
    if await trio.to_thread.run_sync(path.is_file):
        return _empty_ok(200)
    writer = await trio.to_thread.run_sync(store.new_blob_writer, digest)
    with writer:  # any exit but commit (error, cancellation, disconnect) removes the temp file
        pending = bytearray()
        async for chunk in request.body:
            pending += chunk
            if len(pending) >= UPLOAD_FLUSH_BYTES:
                data, pending = bytes(pending), bytearray()
                await trio.to_thread.run_sync(writer.write, data)
        if pending:
            await trio.to_thread.run_sync(writer.write, bytes(pending))
        await trio.to_thread.run_sync(writer.commit)
    return _empty_ok(201)


# ---- create --------------------------------------------------------------------------------------


def _pull_fn() -> Any:
    """`appliance.store.remote.pull.pull_model` adapted to create's (store, name, progress) call."""
    try:
        from appliance.store.remote.pull import pull_model
    except ImportError:
        return None
    settings = services().settings

    async def pull(store: Store, name: Any, progress: Any) -> Any:
        return await pull_model(store, name, settings=settings, progress=progress)

    return pull


@bp.route("/api/create", methods=["POST"])
async def create() -> Response:
    req = parse_create(await read_json_object())
    progress = create_model(_store(), req, noprune=_noprune(), pull=_pull_fn())
    if not req.stream:
        last: dict[str, Any] = {}
        async with aclosing(progress):
            async for item in progress:
                last = item
        return json_response(last, content_type="application/json")
    # Errors before the first line are plain HTTP errors, as in Ollama's streamResponse.
    try:
        first = await progress.__anext__()
    except StopAsyncIteration:
        return ndjson_response(_empty())
    except BaseException:
        await progress.aclose()
        raise
    return ndjson_response(_prepend(first, progress))


async def _empty() -> AsyncIterator[dict[str, Any]]:
    return
    yield  # pragma: no cover


async def _prepend(
    first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
