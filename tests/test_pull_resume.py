"""Interrupted pulls resume with the missing bytes only; concurrent pulls share one download.

Conventions: a real loopback registry (`RegistryPeer`) reached through a real loopback proxy, the
`registry` and `env` fixtures of tests/pullkit.py; the registry records the byte ranges it actually
sent, which is what these tests assert on. A restart is simulated with a fresh `Downloads` (nothing carried in memory): only the
`-partial` file and its state files on disk connect the two attempts. Every test has a
`trio.fail_after` bound; nothing asserts a duration.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from peers.registry import sha256
from pullkit import TIMEOUT

from appliance.errors import ApplianceError
from appliance.store.remote.download import DownloadPolicy, Downloads, state_path
from appliance.store.remote.pull import pull_model
from appliance.store.store import Store

ONE_PART = DownloadPolicy(min_part_size=1 << 30, retries=0)
SMALL_PARTS = DownloadPolicy(min_part_size=16 * 1024, max_part_size=16 * 1024, retries=0)


async def ignore(line: dict[str, Any]) -> None:
    pass


async def pull(
    store: Store,
    env: dict[str, str],
    policy: DownloadPolicy,
    name: str = "tiny",
    progress: Any = ignore,
    downloads: Downloads | None = None,
) -> None:
    with trio.fail_after(TIMEOUT):
        await pull_model(
            store,
            f"registry.test/library/{name}",
            insecure=True,
            environ=env,
            progress=progress,
            downloads=downloads or Downloads(policy),
        )


async def test_pull_cut_halfway_then_restarted_fetches_only_the_missing_bytes(
    store, registry, env, model_bytes
):
    digest = sha256(model_bytes)
    half = len(model_bytes) // 2
    registry.drop_blob_after[digest] = half

    with pytest.raises(ApplianceError) as info:
        await pull(store, env, ONE_PART)
    assert str(info.value).startswith(
        f"pulling {digest[7:19]}: reading from registry.test via proxy"
    )
    assert not store.has_blob(digest) and store.list_models() == []
    state = json.loads(state_path(store.partial_path(digest), 0).read_text())
    assert state == {"N": 0, "Offset": 0, "Size": len(model_bytes), "Completed": half}

    await pull(store, env, ONE_PART)  # a fresh Downloads: as after a server restart

    assert registry.served[digest] == [(0, half), (half, len(model_bytes))]
    assert store.resolve("registry.test/library/tiny").model_path.read_bytes() == model_bytes
    assert not store.partial_path(digest).exists()
    assert not state_path(store.partial_path(digest), 0).exists()


async def test_multi_part_pull_resumes_each_part_where_it_stopped(
    store, registry, env, model_bytes
):
    digest = sha256(model_bytes)
    registry.drop_blob_after[digest] = 1000  # whichever part asks first is cut after 1000 bytes

    with pytest.raises(ApplianceError):
        await pull(store, env, SMALL_PARTS)
    partial = store.partial_path(digest)
    parts = []
    while state_path(partial, len(parts)).exists():
        parts.append(json.loads(state_path(partial, len(parts)).read_text()))
    assert len(parts) > 4 and any(p["Completed"] < p["Size"] for p in parts)
    served_before = len(registry.served[digest])

    await pull(store, env, SMALL_PARTS)

    second = sorted(registry.served[digest][served_before:])
    missing = sorted(
        (p["Offset"] + p["Completed"], p["Offset"] + p["Size"])
        for p in parts
        if p["Completed"] < p["Size"]
    )
    assert second == missing
    assert store.blob_path(digest).read_bytes() == model_bytes


async def test_dropped_part_is_retried_within_one_pull_without_refetching(
    store, registry, env, model_bytes
):
    digest = sha256(model_bytes)
    registry.drop_blob_after[digest] = 5000

    await pull(
        store,
        env,
        DownloadPolicy(
            min_part_size=16 * 1024, max_part_size=16 * 1024, retries=2, retry_backoff=0
        ),
    )

    assert registry.bytes_served(digest) == len(model_bytes)
    assert store.has_blob(digest)


async def test_resume_against_a_server_that_ignores_range_still_gives_the_right_blob(
    store, registry, env, model_bytes
):
    digest = sha256(model_bytes)
    registry.drop_blob_after[digest] = len(model_bytes) // 3
    with pytest.raises(ApplianceError):
        await pull(store, env, ONE_PART)
    registry.ignore_range = True

    await pull(store, env, ONE_PART)

    assert store.blob_path(digest).read_bytes() == model_bytes


async def test_partial_state_for_another_size_is_discarded(store, registry, env, model_bytes):
    digest = sha256(model_bytes)
    partial = store.partial_path(digest)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"junk" * 10)
    state_path(partial, 0).write_text(
        json.dumps({"N": 0, "Offset": 0, "Size": 40, "Completed": 40})
    )

    await pull(store, env, ONE_PART)

    assert registry.served[digest] == [(0, len(model_bytes))]
    assert store.blob_path(digest).read_bytes() == model_bytes


async def test_two_concurrent_pulls_of_one_blob_share_one_download(
    store, registry, env, model_bytes
):
    registry.add_model(
        "library/tiny2",
        "latest",
        model_bytes,
        extra_layers=(("application/vnd.ollama.image.system", b"be brief"),),
    )
    digest = sha256(model_bytes)
    downloads = Downloads(SMALL_PARTS)  # one per server, shared by its pulls
    registry.blob_gate = trio.Event()
    second_lines: list[dict[str, Any]] = []

    async def second_progress(line: dict[str, Any]) -> None:
        second_lines.append(line)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pull, store, env, SMALL_PARTS, "tiny", ignore, downloads)
            nursery.start_soon(pull, store, env, SMALL_PARTS, "tiny2", second_progress, downloads)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            registry.blob_gate.set()

    assert registry.bytes_served(digest) == len(model_bytes)  # each byte sent once
    assert store.resolve("registry.test/library/tiny").model_path.read_bytes() == model_bytes
    assert store.resolve("registry.test/library/tiny2").model_path.read_bytes() == model_bytes
    layer_lines = [x for x in second_lines if x.get("digest") == digest]
    assert layer_lines and layer_lines[-1]["completed"] == len(model_bytes)
