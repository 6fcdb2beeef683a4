"""A full disk never costs a stored model, and says so clearly.

Conventions: the store lives on a small tmpfs the test mounts (root only; skipped otherwise, saying
why), the real appliance serves it on 127.0.0.1 port 0, and uploads are sent until the disk is full.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import trio
from helpers import add_model, running_appliance


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_an_upload_that_fills_the_disk_fails_cleanly_and_keeps_the_store(
    small_disk: Path, tiny_gguf: Path
):
    models = small_disk / "models"
    add_model(models, "tiny", tiny_gguf)
    blobs_before = sorted(p.name for p in (models / "blobs").iterdir())
    too_big = b"\0" * (8 << 20)
    digest = "sha256:" + hashlib.sha256(too_big).hexdigest()
    with trio.fail_after(60):
        async with running_appliance(models) as server:
            async with server.client() as client:
                r = await client.post(f"/api/blobs/{digest}", content=too_big)
                assert r.status_code >= 500
                assert "no space left" in r.json()["error"].lower()
                # Nothing half-written stays behind, and the stored model still works.
                assert sorted(p.name for p in (models / "blobs").iterdir()) == blobs_before
                tags = (await client.get("/api/tags")).json()["models"]
                assert [m["name"] for m in tags] == ["tiny:latest"]
                gen = await client.post(
                    "/api/generate",
                    json={
                        "model": "tiny",
                        "prompt": "x",
                        "stream": False,
                        "options": {"num_predict": 2},
                    },
                )
                assert gen.status_code == 200 and gen.json()["done"] is True
