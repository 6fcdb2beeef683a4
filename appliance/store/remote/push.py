"""`push_model`: upload a local model's blobs and manifest to a registry.

Progress lines as Ollama's PushModel: `retrieving manifest`; per layer, config last, `pushing
<digest[7:19]>` with digest/total/completed (a blob the registry already has is reported once,
complete); `pushing manifest` (PUT /v2/<ns>/<model>/manifests/<tag>); `success`. Blobs go up with
the registry protocol's upload session: POST /blobs/uploads/, then one PUT ?digest= for a small
blob, or PATCH chunks and a final PUT for a large one. Proxy, CA and error wording are the pull's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from appliance.errors import NotFound
from appliance.net import NetConfig, open_client
from appliance.store.manifest import Layer, ManifestError
from appliance.store.names import ModelName, parse_model_name
from appliance.store.remote.pull import PROGRESS_INTERVAL, Progress, progress_line
from appliance.store.remote.registry import BearerChallengeAuth, Registry
from appliance.store.store import Store

log = logging.getLogger(__name__)

UPLOAD_CHUNK = 100 * 1000 * 1000  # one PATCH per chunk above this size
READ_BLOCK = 1024 * 1024


async def push_model(
    store: Store,
    name: str | ModelName,
    *,
    insecure: bool = False,
    settings: Any = None,
    progress: Progress,
    environ: Mapping[str, str] | None = None,
    chunk_size: int = UPLOAD_CHUNK,
) -> None:
    """Push the local model `name` to the registry its name points at. Raises `ApplianceError`."""
    name = parse_model_name(name) if isinstance(name, str) else name
    await progress(progress_line("retrieving manifest"))
    target = await trio.to_thread.run_sync(store.existing_name, name)
    try:
        manifest = await trio.to_thread.run_sync(store.read_manifest, target)
    except (OSError, ManifestError):
        await progress(progress_line("couldn't retrieve manifest"))
        raise NotFound(f"model '{name.display_shortest()}' not found") from None
    net = NetConfig.resolve(settings, environ)
    async with open_client(net, auth=BearerChallengeAuth()) as client:
        registry = Registry(client, net, name, insecure=insecure)
        log.info("pushing %s to %s", name.full(), registry.where())
        for layer in (*manifest.layers, manifest.config):
            await push_layer(store, registry, layer, progress, chunk_size=chunk_size)
        await progress(progress_line("pushing manifest"))
        await registry.put_manifest(manifest.raw)
    await progress(progress_line("success"))


async def push_layer(
    store: Store, registry: Registry, layer: Layer, progress: Progress, *, chunk_size: int
) -> None:
    """Upload one blob unless the registry has it, reporting bytes sent every 60 ms."""
    digest, size = layer.digest, layer.size
    status = f"pushing {digest[7:19]}"
    if await registry.blob_exists(digest):
        await progress(progress_line(status, digest, size, size))
        return
    path = store.blob_path(digest)
    location = await registry.start_upload(digest)
    sent = 0
    last_report = -PROGRESS_INTERVAL

    async def on_bytes(n: int) -> None:
        nonlocal sent, last_report
        sent += n
        now = trio.current_time()
        if now - last_report >= PROGRESS_INTERVAL:
            last_report = now
            await progress(progress_line(status, digest, size, sent))

    await progress(progress_line(status, digest, size, 0))
    if size <= chunk_size:
        await registry.send_chunk(
            location, digest, _read_range(path, 0, size, on_bytes), 0, size, final=True
        )
    else:
        for start in range(0, size, chunk_size):
            length = min(chunk_size, size - start)
            body = _read_range(path, start, length, on_bytes)
            location = await registry.send_chunk(location, digest, body, start, length, final=False)
        await registry.send_chunk(location, digest, b"", size, 0, final=True)
    await progress(progress_line(status, digest, size, size))


async def _read_range(
    path: Path, start: int, length: int, on_bytes: Callable[[int], Any]
) -> AsyncIterator[bytes]:
    """The bytes `start..start+length` of a file, in blocks, reporting each block sent."""
    async with await trio.open_file(path, "rb") as f:
        await f.seek(start)
        left = length
        while left > 0:
            block = await f.read(min(READ_BLOCK, left))
            if not block:
                raise OSError(f"{path} ended early while uploading")
            left -= len(block)
            yield block
            await on_bytes(len(block))
