"""The steps every pull shares, whichever source it pulls from (a registry, Hugging Face):
progress lines as Ollama writes them, a blob fetched with progress, the manifest written last.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import trio

from appliance.errors import ApplianceError
from appliance.settings.config import Settings
from appliance.store.manifest import Manifest, ManifestError
from appliance.store.names import ModelName
from appliance.store.remote.download import Downloads
from appliance.store.store import Store

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], Awaitable[None]]
PROGRESS_INTERVAL = 0.06  # Ollama reports download progress every 60 ms


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
    store: Store, name: ModelName, raw: bytes, *, settings: Settings | None, progress: Progress
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
    if old is not None and not (settings is not None and settings.noprune):
        keep = set(new.all_digests())
        unused = [d for d in old.all_digests() if d not in keep]
        if unused:
            await progress(progress_line("removing unused layers"))
            await trio.to_thread.run_sync(store.remove_unreferenced, unused)
    await progress(progress_line("success"))
