"""`/api/create`: build a model from a local model or uploaded GGUF blobs (Ollama server/create.go).

The request arrives validated (`CreateRequest`), so every malformed request is a plain 400 before
any progress line. Then layers are gathered (the `from` model's, or one per GGUF), the template,
system, license, parameters and messages layers are replaced or merged as Ollama does (§6.4), the
config blob is written, and the manifest is written last: a failure at any step leaves no new model.
Progress is yielded as Ollama's ProgressResponse dicts, ending with `{"status": "success"}`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from appliance.errors import BadRequest, NotFound
from appliance.gocompat.humanfmt import human_number
from appliance.prompting.prompts import template_capabilities
from appliance.store.manifest import (
    CONFIG_MEDIA_TYPE,
    MEDIA_ADAPTER,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_PROMPT,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Layer,
    build_config,
    build_manifest,
    go_json,
)
from appliance.store.names import ModelName
from appliance.store.store import Store, derive_capabilities

log = logging.getLogger(__name__)

GGUF_MEDIA = (MEDIA_MODEL, MEDIA_PROJECTOR, MEDIA_ADAPTER)
# Pulls a missing `from` model: (store, name, progress callback) -> None. Raises ApplianceError.
PullFn = Callable[[Store, ModelName, Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[Any]]


@dataclass(frozen=True)
class CreateRequest:
    """What a model is created from: a validated `/api/create` body (parsed at the API's boundary,
    `appliance.api.bodies.models.parse_create`)."""

    name: ModelName
    from_: ModelName | None = None
    from_text: str = ""
    files: dict[str, str] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)
    template: str = ""
    system: str = ""
    license: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    requires: str = ""
    renderer: str = ""
    parser: str = ""
    stream: bool = True


def validate_template(text: str) -> None:
    """400 `template error: ...` for a TEMPLATE our Go-template engine cannot render."""
    from appliance.prompting.gotemplate import TemplateError, parse_template

    try:
        parse_template(text)
    except TemplateError as exc:
        raise BadRequest(f"template error: {exc}") from None


def _status_for(store: Store, digest: str) -> str:
    return ("using existing layer " if store.has_blob(digest) else "creating new layer ") + digest


@dataclass
class _Built:
    layers: list[Layer] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    ggufs: list[tuple[str, Any]] = field(default_factory=list)  # (media type, GGUFInfo)

    def remove(self, *media_types: str) -> None:
        keep = [(i, x) for i, x in enumerate(self.layers) if x.media_type not in media_types]
        self.statuses = [self.statuses[i] for i, _ in keep]
        self.layers = [x for _, x in keep]

    def add(self, layer: Layer, status: str) -> None:
        self.layers.append(layer)
        self.statuses.append(status)


def _gguf_or_400(store: Store, digest: str) -> Any:
    path = store.blob_path(digest)
    if not path.is_file():
        raise BadRequest(f"blob {digest} not found: upload it with POST /api/blobs/{digest}")
    try:
        return store.gguf_info(path)
    except ValueError:
        raise BadRequest("supplied file was not in GGUF format") from None


def _layers_from_files(store: Store, files: dict[str, str], built: _Built, adapter: bool) -> None:
    for rel, digest in files.items():
        if rel.endswith(".safetensors"):
            raise BadRequest(
                "safetensors import is not supported by this server; convert the "
                "model to GGUF first (llama.cpp convert_hf_to_gguf.py)"
            )
        info = _gguf_or_400(store, digest)
        kind = str(info.metadata.get("general.type", "") or "")
        if adapter or kind == "adapter":
            media = MEDIA_ADAPTER
        elif kind == "projector" or (
            not info.block_count and info.metadata.get(f"{info.architecture}.vision.block_count")
        ):
            media = MEDIA_PROJECTOR
        else:
            media = MEDIA_MODEL
        path = store.blob_path(digest)
        built.add(
            Layer(media, digest, path.stat().st_size, from_=str(path)),
            "using existing layer " + digest,
        )
        built.ggufs.append((media, info))


def _layers_from_model(store: Store, name: ModelName, built: _Built) -> None:
    local = store.load(store.existing_name(name))
    source = local.name.display_shortest()
    for layer in local.manifest.layers:
        built.add(
            Layer(layer.media_type, layer.digest, layer.size, from_=source, name=layer.name),
            "using existing layer " + layer.digest,
        )
        if layer.media_type in GGUF_MEDIA:
            try:
                built.ggufs.append(
                    (layer.media_type, store.gguf_info(store.blob_path(layer.digest)))
                )
            except (OSError, ValueError) as exc:
                log.warning("layer %s of %s unreadable as GGUF: %s", layer.digest, source, exc)


def _blob_layer(store: Store, data: bytes, media: str, built: _Built) -> None:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status = _status_for(store, digest)
    store.write_blob_bytes(data)
    built.add(Layer(media, digest, len(data)), status)


def _apply_request_layers(store: Store, req: CreateRequest, built: _Built) -> None:
    """Template/system replaced, licenses appended, params merged, messages replaced if given."""
    if req.template:
        built.remove(MEDIA_TEMPLATE, MEDIA_PROMPT)
        _blob_layer(store, req.template.encode(), MEDIA_TEMPLATE, built)
    if req.system:
        built.remove(MEDIA_SYSTEM)
        _blob_layer(store, req.system.encode(), MEDIA_SYSTEM, built)
    for text in req.license:
        _blob_layer(store, text.encode(), MEDIA_LICENSE, built)
    params = dict(req.parameters)
    for layer in built.layers:
        if layer.media_type == MEDIA_PARAMS:
            try:
                existing = json.loads(store.blob_path(layer.digest).read_bytes())
            except (OSError, ValueError):
                existing = {}
            for key, value in (existing if isinstance(existing, dict) else {}).items():
                params.setdefault(key, value)
    if params:
        built.remove(MEDIA_PARAMS)
        _blob_layer(store, go_json(dict(sorted(params.items()))), MEDIA_PARAMS, built)
    if req.messages:
        built.remove(MEDIA_MESSAGES)
        _blob_layer(store, go_json(req.messages), MEDIA_MESSAGES, built)


def _config(store: Store, req: CreateRequest, built: _Built) -> bytes:
    model_info = next((info for media, info in built.ggufs if media == MEDIA_MODEL), None)
    first = model_info or (built.ggufs[0][1] if built.ggufs else None)
    template = req.template
    if not template:
        for layer in built.layers:
            if layer.media_type in (MEDIA_TEMPLATE, MEDIA_PROMPT):
                template = store.blob_path(layer.digest).read_text(errors="replace")
    projector = any(media == MEDIA_PROJECTOR for media, _ in built.ggufs)
    caps = derive_capabilities(model_info, template_capabilities(template), projector=projector)
    return build_config(
        model_format="gguf",
        model_family=first.architecture if first else "",
        model_families=[info.architecture for _, info in built.ggufs] or None,
        model_type=human_number(first.parameter_count) if first else "",
        file_type=(first.file_type or "") if first else "",
        renderer=req.renderer,
        parser=req.parser,
        requires=req.requires,
        capabilities=caps,
        context_length=(model_info.context_length or 0) if model_info else 0,
        embedding_length=(model_info.embedding_length or 0) if model_info else 0,
        diff_ids=[layer.digest for layer in built.layers],
    )


async def create_model(
    store: Store, req: CreateRequest, *, noprune: bool, pull: PullFn | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Build and write the model, yielding Ollama's progress lines; errors are ApplianceErrors."""
    if req.template:
        validate_template(req.template)
    name = await trio.to_thread.run_sync(store.existing_name, req.name)
    old = None
    try:
        old = await trio.to_thread.run_sync(store.read_manifest, name)
    except (OSError, ValueError):
        pass
    built = _Built()
    if req.from_ is not None:
        source = req.from_
        if not await trio.to_thread.run_sync(store.exists, source):
            if pull is None:
                raise NotFound(f"model '{req.from_text}' not found")
            lines: list[dict[str, Any]] = []

            async def collect(line: dict[str, Any]) -> None:
                lines.append(line)

            await pull(store, source, collect)
            for line in lines:
                if line.get("status") != "success":
                    yield line
        await trio.to_thread.run_sync(_layers_from_model, store, source, built)
    else:
        for rel, digest in req.files.items():
            yield {"status": "parsing GGUF"}
            await trio.to_thread.run_sync(_layers_from_files, store, {rel: digest}, built, False)
    if req.adapters:
        if len(req.adapters) > 1:
            raise BadRequest("only one adapter is currently supported")
        yield {"status": "parsing GGUF"}
        await trio.to_thread.run_sync(_layers_from_files, store, req.adapters, built, True)
    await trio.to_thread.run_sync(_apply_request_layers, store, req, built)
    config = await trio.to_thread.run_sync(_config, store, req, built)
    config_digest = await trio.to_thread.run_sync(store.write_blob_bytes, config)
    for status in built.statuses:
        yield {"status": status}
    yield {"status": "writing manifest"}
    manifest = build_manifest(Layer(CONFIG_MEDIA_TYPE, config_digest, len(config)), built.layers)
    await trio.to_thread.run_sync(store.write_manifest, name, manifest.raw)
    if old is not None and not noprune:
        unused = [d for d in old.all_digests() if d not in set(manifest.all_digests())]
        await trio.to_thread.run_sync(store.remove_unreferenced, unused)
    yield {"status": "success"}
