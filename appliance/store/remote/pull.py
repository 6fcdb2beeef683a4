"""`pull_model`: fetch a model from a registry into the store, reporting progress as Ollama does.

Order of progress lines (reference §2.9): `pulling manifest`; per layer, config last, `pulling
<digest[7:19]>` with digest/total/completed every 60 ms (once, complete, for a blob already here);
`verifying sha256 digest` (only when something was downloaded); `writing manifest`; `removing
unused layers` (only when layers of the previous manifest of this name are no longer used, and
not noprune); `success`. The manifest is written last, so a failed pull never leaves a model.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import trio

from appliance.errors import ApplianceError
from appliance.net import NetConfig, open_client
from appliance.store.manifest import Layer, Manifest, ManifestError, parse_manifest
from appliance.store.names import ModelName, parse_model_name
from appliance.store.remote.download import Downloads
from appliance.store.remote.registry import BearerChallengeAuth, Registry, RegistryError
from appliance.store.store import Store

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], Awaitable[None]]
PROGRESS_INTERVAL = 0.06  # Ollama reports download progress every 60 ms
HF_HOSTS = ("hf.co", "huggingface.co")


def progress_line(
    status: str, digest: str = "", total: int = 0, completed: int = 0
) -> dict[str, Any]:
    """A ProgressResponse as Go encodes it: zero-valued fields are omitted (`omitempty`)."""
    line: dict[str, Any] = {"status": status}
    if digest:
        line["digest"] = digest
    if total:
        line["total"] = total
    if completed:
        line["completed"] = completed
    return line


async def pull_model(
    store: Store,
    name: str | ModelName,
    *,
    insecure: bool = False,
    settings: Any = None,
    progress: Progress,
    downloads: Downloads | None = None,
    environ: Mapping[str, str] | None = None,
) -> Manifest:
    """Pull `name` into `store`; returns the manifest written. Raises `ApplianceError`."""
    name = parse_model_name(name) if isinstance(name, str) else name
    downloads = downloads if downloads is not None else Downloads()
    net = NetConfig.resolve(settings, environ)
    if name.host.lower() in HF_HOSTS:
        from appliance.store.remote.hf import pull_hf

        return await pull_hf(
            store,
            name,
            net=net,
            settings=settings,
            progress=progress,
            downloads=downloads,
            environ=environ,
        )
    await progress(progress_line("pulling manifest"))
    async with open_client(net, auth=BearerChallengeAuth()) as client:
        registry = Registry(client, net, name, insecure=insecure)
        log.info("pulling %s from %s", name.full(), registry.where())
        raw = await registry.get_manifest()
        try:
            manifest = parse_manifest(raw)
        except ManifestError as exc:
            raise RegistryError(f"pull model manifest: {exc}") from None
        fetched = []
        for layer in (*manifest.layers, manifest.config):
            if await pull_layer(store, registry, layer, downloads, progress):
                fetched.append(layer.digest)
        if fetched:
            await progress(progress_line("verifying sha256 digest"))
            for digest in fetched:
                await downloads.commit(store, digest)
    await write_manifest_and_prune(store, name, raw, settings=settings, progress=progress)
    return manifest


async def pull_layer(
    store: Store, registry: Registry, layer: Layer, downloads: Downloads, progress: Progress
) -> bool:
    """Download one layer's bytes (not yet verified); False when the blob was already here."""
    return await fetch_with_progress(
        store,
        layer.digest,
        layer.size,
        downloads,
        progress,
        lambda start, end: registry.open_blob(layer.digest, start, end),
        on_transport_error=lambda exc: registry.failure(f"pulling {layer.digest[7:19]}", exc),
    )


async def fetch_with_progress(
    store: Store,
    digest: str,
    size: int,
    downloads: Downloads,
    progress: Progress,
    open_range: Any,
    *,
    on_transport_error: Callable[[httpx.HTTPError], ApplianceError],
) -> bool:
    """Fetch `digest` while a ticker reports its byte count every 60 ms."""
    status = f"pulling {digest[7:19]}"
    if await trio.to_thread.run_sync(store.has_blob, digest):
        await progress(progress_line(status, digest, size, size))
        return False

    async def tick() -> None:
        while True:
            await progress(progress_line(status, digest, size, downloads.completed(digest)))
            await trio.sleep(PROGRESS_INTERVAL)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            await downloads.fetch(store, digest, size, open_range)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        leaf = first_error(group)
        if leaf is None:
            raise
        if isinstance(leaf, httpx.HTTPError):
            raise on_transport_error(leaf) from leaf
        raise leaf from None
    await progress(progress_line(status, digest, size, size))
    return True


def first_error(group: BaseExceptionGroup) -> Exception | None:
    """The first ordinary error among a nursery group's leaves (None if only cancellations)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = first_error(exc)
            if found is not None:
                return found
        elif isinstance(exc, Exception):
            return exc
    return None


async def write_manifest_and_prune(
    store: Store, name: ModelName, raw: bytes, *, settings: Any, progress: Progress
) -> None:
    """Write the manifest (last), prune what the old one used alone, report `success`."""
    await progress(progress_line("writing manifest"))
    target = await trio.to_thread.run_sync(store.existing_name, name)
    old: Manifest | None
    try:
        old = await trio.to_thread.run_sync(store.read_manifest, target)
    except (OSError, ManifestError):
        old = None
    new = await trio.to_thread.run_sync(store.write_manifest, target, raw)
    if old is not None and not getattr(settings, "noprune", False):
        keep = set(new.all_digests())
        unused = [d for d in old.all_digests() if d not in keep]
        if unused:
            await progress(progress_line("removing unused layers"))
            await trio.to_thread.run_sync(store.remove_unreferenced, unused)
    await progress(progress_line("success"))
