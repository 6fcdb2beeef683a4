"""`pull_model`: fetch a model from a registry into the store, reporting progress as Ollama does.

Order of progress lines (reference §2.9): `pulling manifest`; per layer, config last, `pulling
<digest[7:19]>` with digest/total/completed every 60 ms (once, complete, for a blob already here);
`verifying sha256 digest` (only when something was downloaded); `writing manifest`; `removing
unused layers` (only when layers of the previous manifest of this name are no longer used, and
not noprune); `success`. The manifest is written last, so a failed pull never leaves a model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from appliance.net import HF_ALIASES, NetConfig, open_client
from appliance.store.manifest import Layer, Manifest, ManifestError, parse_manifest
from appliance.store.names import ModelName, parse_model_name
from appliance.store.remote.download import Downloads
from appliance.store.remote.registry import BearerChallengeAuth, Registry, RegistryError
from appliance.store.remote.steps import (
    Progress,
    fetch_with_progress,
    progress_line,
    write_manifest_and_prune,
)
from appliance.store.store import Store

log = logging.getLogger(__name__)


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
    if name.host.lower() in HF_ALIASES:
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
