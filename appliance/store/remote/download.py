"""Resumable, parallel-part blob downloads, shared between concurrent pulls of one digest.

A blob is fetched into `blobs/sha256-<hex>-partial`, split into parts that download at once, each
with a small JSON state file `<partial>-<N>` in Ollama's own format (`{"N","Offset","Size",
"Completed"}`), so an interrupted pull (dropped connection, cancelled client, restarted server)
resumes with HTTP Range requests for the missing bytes only. A fetched file only becomes a blob in
`commit`, after its sha256 matches: a half or corrupt download never counts as present.

`Downloads` is owned by the app (one per server): it holds a lock per digest so two pulls of the
same blob share one download: the second waits, watching the first one's byte count, and finds
the bytes there (or resumes them) when it gets the lock.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from appliance.errors import ApplianceError
from appliance.store import layout
from appliance.store.store import Store

log = logging.getLogger(__name__)

MB = 1000 * 1000
STATE_SAVE_INTERVAL = 1.0  # seconds between state-file writes while bytes flow

OpenRange = Callable[[int, int], AbstractAsyncContextManager[httpx.Response]]


class DigestMismatch(ApplianceError):
    status = 500


class ShortRead(Exception):
    """The server ended a part before its last byte without an HTTP-level error."""


@dataclass(frozen=True)
class DownloadPolicy:
    """How blobs are split and retried. Ollama: up to 16 parts of 100 MB..1 GB, 6 retries."""

    min_part_size: int = 100 * MB
    max_part_size: int = 1000 * MB
    max_parts: int = 16
    max_concurrent_parts: int = 16
    retries: int = 6
    retry_backoff: float = 1.0  # seconds, doubled per attempt

    def split(self, total: int) -> list[tuple[int, int]]:
        """(offset, size) of each part of a blob of `total` bytes."""
        if total <= 0:
            return []
        size = min(max(math.ceil(total / self.max_parts), self.min_part_size), self.max_part_size)
        return [(offset, min(size, total - offset)) for offset in range(0, total, size)]


@dataclass
class Part:
    n: int
    offset: int
    size: int
    completed: int = 0

    @property
    def done(self) -> bool:
        return self.completed >= self.size

    def to_json(self) -> dict[str, int]:
        return {"N": self.n, "Offset": self.offset, "Size": self.size, "Completed": self.completed}


@dataclass
class _Shared:
    lock: trio.Lock = field(default_factory=trio.Lock)
    completed: int = 0
    users: int = 0


class Downloads:
    """The app's in-flight downloads, one per digest (create one per server, share it)."""

    def __init__(self, policy: DownloadPolicy | None = None) -> None:
        self.policy = policy or DownloadPolicy()
        self._shared: dict[str, _Shared] = {}

    def completed(self, digest: str) -> int:
        """Bytes of `digest` present so far (for progress lines)."""
        shared = self._shared.get(layout.api_digest(digest))
        return shared.completed if shared else 0

    def in_flight(self, digest: str) -> bool:
        """Whether some pull is fetching or committing `digest` right now."""
        return layout.api_digest(digest) in self._shared

    def _enter(self, digest: str) -> _Shared:
        shared = self._shared.setdefault(digest, _Shared())
        shared.users += 1
        return shared

    def _leave(self, digest: str, shared: _Shared) -> None:
        shared.users -= 1
        if shared.users == 0:
            self._shared.pop(digest, None)

    async def fetch(self, store: Store, digest: str, total: int, open_range: OpenRange) -> None:
        """Make `<partial>` hold all `total` bytes of `digest` (not yet verified: see `commit`)."""
        digest = layout.api_digest(digest)
        shared = self._enter(digest)
        try:
            async with shared.lock:
                if store.has_blob(digest):
                    shared.completed = total
                    return
                await self._fetch_locked(store, digest, total, open_range, shared)
        finally:
            self._leave(digest, shared)

    async def commit(self, store: Store, digest: str) -> None:
        """Verify the fetched bytes and rename them onto the blob; delete them on a mismatch."""
        digest = layout.api_digest(digest)
        shared = self._enter(digest)
        try:
            async with shared.lock:
                await trio.to_thread.run_sync(_commit, store, digest)
        finally:
            self._leave(digest, shared)

    async def _fetch_locked(
        self, store: Store, digest: str, total: int, open_range: OpenRange, shared: _Shared
    ) -> None:
        partial = store.partial_path(digest)
        fd = await trio.to_thread.run_sync(_own_partial, partial)
        try:
            parts = await trio.to_thread.run_sync(_prepare, partial, total, self.policy)
            shared.completed = sum(p.completed for p in parts)
            todo = [p for p in parts if not p.done]
            if not todo:
                os.utime(fd)  # fresh again: the sweeper leaves it alone until commit
                return
            if shared.completed:
                log.info("resuming %s at %d of %d bytes", digest, shared.completed, total)
            limiter = trio.CapacityLimiter(self.policy.max_concurrent_parts)
            try:
                async with trio.open_nursery() as nursery:
                    for part in todo:
                        nursery.start_soon(
                            self._fetch_part, fd, partial, part, open_range, shared, limiter
                        )
            finally:
                for part in parts:
                    _save_part(partial, part)
        finally:
            os.close(fd)

    async def _fetch_part(
        self,
        fd: int,
        partial: Path,
        part: Part,
        open_range: OpenRange,
        shared: _Shared,
        limiter: trio.CapacityLimiter,
    ) -> None:
        attempt = 0
        while True:
            try:
                async with limiter:
                    await self._stream_part(fd, partial, part, open_range, shared)
                return
            except (httpx.TransportError, ShortRead) as exc:
                if attempt >= self.policy.retries:
                    raise
                delay = self.policy.retry_backoff * 2**attempt
                attempt += 1
                log.info(
                    "part %d of %s failed (%s); retry %d in %.1fs",
                    part.n,
                    partial.name,
                    exc,
                    attempt,
                    delay,
                )
                await trio.sleep(delay)

    async def _stream_part(
        self, fd: int, partial: Path, part: Part, open_range: OpenRange, shared: _Shared
    ) -> None:
        start = part.offset + part.completed
        end = part.offset + part.size  # exclusive
        async with open_range(start, end - 1) as response:
            skip = start if response.status_code == 200 else 0  # a server that ignored Range
            pos = start
            last_save = trio.current_time()
            async for chunk in response.aiter_bytes():
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                chunk = chunk[: end - pos]
                if not chunk:
                    if pos >= end:
                        break
                    continue
                await trio.to_thread.run_sync(os.pwrite, fd, chunk, pos)
                pos += len(chunk)
                part.completed += len(chunk)
                shared.completed += len(chunk)
                if trio.current_time() - last_save > STATE_SAVE_INTERVAL:
                    _save_part(partial, part)
                    last_save = trio.current_time()
                if pos >= end:
                    break
        if pos < end:
            raise ShortRead(f"part {part.n} ended at byte {pos} of {end}")


def state_path(partial: Path, n: int) -> Path:
    return partial.with_name(f"{partial.name}-{n}")


def _save_part(partial: Path, part: Part) -> None:
    """Write one part's state (synchronously: it is tiny, and must happen even when cancelled)."""
    path = state_path(partial, part.n)
    try:
        tmp, f = layout.open_temp(path)
    except OSError as exc:
        log.warning("could not save download state %s: %s", path, exc)
        return
    with f:  # renamed while owned, so the temp-file sweeper never takes it
        try:
            f.write(json.dumps(part.to_json()).encode())
            f.flush()
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("could not save download state %s: %s", path, exc)


def _load_parts(partial: Path, total: int) -> list[Part] | None:
    """The saved parts of an earlier attempt, or None when absent or not for this size."""
    parts: list[Part] = []
    n = 0
    while (path := state_path(partial, n)).is_file():
        try:
            value = json.loads(path.read_text())
            part = Part(
                int(value["N"]), int(value["Offset"]), int(value["Size"]), int(value["Completed"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if part.n != n or not 0 <= part.completed <= part.size:
            return None
        parts.append(part)
        n += 1
    if not parts:
        return None
    covered = 0
    for part in parts:
        if part.offset != covered:
            return None
        covered += part.size
    return parts if covered == total else None


def _remove_state(partial: Path) -> None:
    n = 0
    while (path := state_path(partial, n)).exists():
        path.unlink(missing_ok=True)
        n += 1


def _prepare(partial: Path, total: int, policy: DownloadPolicy) -> list[Part]:
    """Parts to fetch: the saved ones if they match the partial file, else a fresh plan."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    parts = _load_parts(partial, total) if partial.is_file() else None
    if parts is None or partial.stat().st_size != total:
        _remove_state(partial)
        parts = [Part(n, offset, size) for n, (offset, size) in enumerate(policy.split(total))]
        with open(partial, "wb") as f:
            f.truncate(total)
        for part in parts:
            _save_part(partial, part)
    return parts


def _own_partial(partial: Path) -> int:
    """Open (creating) the partial file and own it for the fetch: the temp-file sweeper, here or
    in another process sharing the store, never deletes a partial that is being written."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(16):
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        os.close(fd)
        try:
            owned = layout.lock_existing(partial)
        except FileNotFoundError:  # swept between the create and the lock
            continue
        if owned is not None:
            return owned
        raise ApplianceError(f"{partial.name} is being downloaded by another process")
    raise ApplianceError(f"could not open {partial}")


def _commit(store: Store, digest: str) -> None:
    partial = store.partial_path(digest)
    if store.has_blob(digest):
        partial.unlink(missing_ok=True)
        _remove_state(partial)
        return
    try:
        fd = layout.lock_existing(partial, os.O_RDONLY)
    except FileNotFoundError:
        fd = None
    if fd is None:
        raise ApplianceError(f"{partial.name} vanished or is owned by another process; pull again")
    try:
        _commit_owned(store, digest, partial)
    finally:
        os.close(fd)


def _commit_owned(store: Store, digest: str, partial: Path) -> None:
    actual = layout.hash_file(partial)
    if actual != digest:
        partial.unlink(missing_ok=True)
        _remove_state(partial)
        raise DigestMismatch(
            f"digest mismatch, file must be downloaded again: want {digest}, got {actual}"
        )
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(partial, 0o644)
    os.replace(partial, store.blob_path(digest))
    layout.fsync_dir(partial.parent)
    _remove_state(partial)
