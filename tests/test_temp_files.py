"""Temp files of killed uploads and creates are removed; a live writer's file never is.

A writer owns its temp file with an exclusive flock for its whole life; the sweep (at start and
every `temp_sweep_interval` while serving) deletes only files it can lock. The kill test runs the
server as its own process (`python -m appliance serve`) and SIGKILLs it mid-upload; the others run
the real appliance in the test's trio run with a short sweep period. Waits are polls bounded by
fail_after; nothing asserts a time.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio
from helpers import Running
from serverproc import clean_env, free_port, register_tiny_model, run_server, wait_until_answers

from appliance.host.server import Appliance
from appliance.settings.config import Settings
from appliance.store import layout

REPO = Path(__file__).resolve().parents[1]
DATA = os.urandom(3 * 1024 * 1024)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


@asynccontextmanager
async def appliance_sweeping(models: Path, interval: float) -> AsyncIterator[Running]:
    settings = Settings.for_tests(models_dir=models, host="127.0.0.1", import_reference=False)
    appliance = Appliance(settings, grace=2.0, temp_sweep_interval=interval)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(appliance.run)
        try:
            yield Running(binds[0], appliance)
        finally:
            appliance.request_shutdown()


def temp_files(models: Path) -> list[Path]:
    return sorted(p for p in models.rglob(layout.TEMP_PREFIX + "*"))


async def wait_for_temp_file(models: Path) -> Path:
    while not (found := temp_files(models)):
        await trio.sleep(0.02)
    return found[0]


async def wait_sweeps(appliance: Appliance, more: int) -> None:
    target = appliance.temp_sweeps + more
    while appliance.temp_sweeps < target:
        await trio.sleep(0.02)


async def upload_that_stalls(url: str, release: trio.Event) -> httpx.Response | None:
    """POST the blob: the first MiB, then wait for `release`, then the rest."""

    async def body() -> AsyncIterator[bytes]:
        yield DATA[: 1024 * 1024]
        await release.wait()
        yield DATA[1024 * 1024 :]

    async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as client:
        try:
            return await client.post(f"/api/blobs/{DIGEST}", content=body())
        except httpx.TransportError:
            return None


def own(path: Path) -> int:
    """Hold `path`'s lock as another writer process would."""
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


async def test_a_killed_upload_leaves_a_temp_file_that_the_next_start_removes(tmp_path):
    models = tmp_path / "models"
    register_tiny_model(models)
    env = clean_env(
        free_port(), models, {"PYTHONPATH": str(REPO), "LLM_APPLIANCE_IMPORT_REFERENCE": "0"}
    )
    command = [sys.executable, "-m", "appliance", "serve"]
    with trio.fail_after(120):
        async with run_server(command, env, tmp_path, tmp_path / "log1") as server:
            await wait_until_answers(server)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upload_that_stalls, server.base_url, trio.Event())
                left = await wait_for_temp_file(models)
                server.signal_group(signal.SIGKILL)
                await server.wait()
                nursery.cancel_scope.cancel()
        assert left.exists(), "the kill should leave the upload's temp file behind"
        async with run_server(command, env, tmp_path, tmp_path / "log2") as server:
            await wait_until_answers(server)
            assert not left.exists(), server.log_tail()


async def test_start_removes_temp_files_of_killed_creates_but_keeps_a_fresh_partial(tmp_path):
    models = tmp_path / "models"
    register_tiny_model(models)
    manifest_dir = next(p.parent for p in (models / "manifests").rglob("latest"))
    create_tmp = manifest_dir / f"{layout.TEMP_PREFIX}latest-0123456789ab"
    create_tmp.write_bytes(b'{"schemaVersion":2')
    blob_tmp = models / "blobs" / f"{layout.TEMP_PREFIX}upload-0123456789ab"
    blob_tmp.write_bytes(b"half a config")
    partial = models / "blobs" / ("sha256-" + "a" * 64 + layout.PARTIAL_SUFFIX)
    partial.write_bytes(b"\0" * 1000)
    stale = models / "blobs" / ("sha256-" + "b" * 64 + layout.PARTIAL_SUFFIX)
    stale.write_bytes(b"\0" * 1000)
    stale_state = stale.with_name(stale.name + "-0")
    stale_state.write_text('{"N":0,"Offset":0,"Size":1000,"Completed":0}')
    old = time.time() - 2 * layout.PRUNE_GRACE_SECONDS
    for path in (stale, stale_state):
        os.utime(path, (old, old))
    with trio.fail_after(60):
        async with appliance_sweeping(models, interval=3600):
            pass
    assert not create_tmp.exists() and not blob_tmp.exists()
    assert partial.exists(), "a fresh partial is a resumable pull"
    assert not stale.exists() and not stale_state.exists()


async def test_a_temp_file_orphaned_while_serving_is_swept(tmp_path):
    models = tmp_path / "models"
    register_tiny_model(models)
    with trio.fail_after(60):
        async with appliance_sweeping(models, interval=0.05):
            orphan = models / "blobs" / f"{layout.TEMP_PREFIX}upload-feedfacecafe"
            orphan.write_bytes(b"left by a writer that died")
            while orphan.exists():
                await trio.sleep(0.02)


async def test_a_live_uploads_temp_file_is_never_swept(tmp_path):
    models = tmp_path / "models"
    register_tiny_model(models)
    with trio.fail_after(60):
        async with appliance_sweeping(models, interval=0.02) as server:
            release = trio.Event()
            result: list[httpx.Response | None] = []

            async def upload() -> None:
                result.append(await upload_that_stalls(server.url, release))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(upload)
                live = await wait_for_temp_file(models)
                await wait_sweeps(server.appliance, 5)
                assert live.exists()
                release.set()
    assert result[0] is not None and result[0].status_code == 201
    assert (models / "blobs" / ("sha256-" + DIGEST[7:])).read_bytes() == DATA


async def test_a_temp_file_another_process_owns_is_kept_until_released(tmp_path):
    models = tmp_path / "models"
    register_tiny_model(models)
    other = models / "blobs" / f"{layout.TEMP_PREFIX}upload-0000aaaa1111"
    other.write_bytes(b"being written by a peer process")
    fd = own(other)
    try:
        with trio.fail_after(60):
            async with appliance_sweeping(models, interval=0.02) as server:
                await wait_sweeps(server.appliance, 5)
                assert other.exists()
                os.close(fd)
                fd = -1
                while other.exists():
                    await trio.sleep(0.02)
    finally:
        if fd >= 0:
            os.close(fd)


def test_an_imported_file_is_linked_while_owned_and_leaves_no_temp_file(tmp_path):
    from appliance.store.store import Store

    src = tmp_path / "model.gguf"
    src.write_bytes(DATA)
    store = Store(tmp_path / "models")
    store.check_writable()
    held = own(src)  # a lock on the source inode itself: the import copies instead
    try:
        digest = store.import_blob_file(src, DIGEST)
    finally:
        os.close(held)
    assert store.blob_path(digest).read_bytes() == DATA
    assert temp_files(tmp_path / "models") == []


def test_with_noprune_a_stale_partial_is_kept_but_temp_files_go(tmp_path):
    models = tmp_path / "models"
    (models / "blobs").mkdir(parents=True)
    stale = models / "blobs" / ("sha256-" + "c" * 64 + layout.PARTIAL_SUFFIX)
    stale.write_bytes(b"\0" * 10)
    old = time.time() - 2 * layout.PRUNE_GRACE_SECONDS
    os.utime(stale, (old, old))
    orphan = models / "blobs" / f"{layout.TEMP_PREFIX}upload-abcdefabcdef"
    orphan.write_bytes(b"x")
    removed = layout.sweep_temp_files(models, keep_partials=True)
    assert removed == [orphan.name] and stale.exists()
    fd = own(stale)  # a peer process resuming it: kept even without noprune
    try:
        assert layout.sweep_temp_files(models) == [] and stale.exists()
    finally:
        os.close(fd)
    assert layout.sweep_temp_files(models) == [stale.name]
