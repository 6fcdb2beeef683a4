"""The one-file binary updates itself from a verified feed through a proxy, and rolls back.

Conventions: marked `slow`; needs dist/llm-appliance (`make binary`; CI's LLM_APPLIANCE_TEST_BINARY=1
builds it) and builds a second one stamped 0.1.1 (LLM_APPLIANCE_BUILD_VERSION) into tmp. The binary
runs with the venv out of reach (serverproc.clean_env), reaches `http://updates.test` only through
the proxy peer, and replaces itself: `sys.executable` of the frozen build is the file it swaps.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from peers.feed import Feed, FeedPeer
from peers.proxy import ProxyPeer
from serverproc import built, clean_env, free_port

REPO = Path(__file__).resolve().parents[1]
BINARY = REPO / "dist" / "llm-appliance"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    built(BINARY, "binary")
    out = tmp_path_factory.mktemp("build-0.1.1")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--distpath",
            str(out),
            "--workpath",
            str(REPO / "build" / "update-test"),
            str(REPO / "packaging" / "llm-appliance.spec"),
        ],
        cwd=REPO,
        env={**os.environ, "LLM_APPLIANCE_BUILD_VERSION": "0.1.1"},
        check=True,
        capture_output=True,
        timeout=1800,
    )
    return BINARY, out / "llm-appliance"


def version_of(binary: Path, env: dict[str, str]) -> str:
    """The client version `--version` reports (as `ollama --version`: no server runs here)."""
    done = subprocess.run(
        [str(binary), "--version"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    found = re.findall(r"version is (\S+)", done.stdout)
    assert found, done.stdout
    return found[-1]


async def test_the_binary_updates_itself_through_the_proxy_and_rolls_back(
    nursery, tmp_path: Path, builds: tuple[Path, Path]
):
    current, newer = builds
    feed = Feed(tmp_path)
    feed.publish("0.1.1", newer)
    peer = FeedPeer(feed.dir)
    await nursery.start(peer.serve)
    proxy = ProxyPeer(names={"updates.test": ("127.0.0.1", peer.port)})
    await nursery.start(proxy.serve)
    installed = tmp_path / "opt" / "llm-appliance"
    installed.parent.mkdir()
    shutil.copy2(current, installed)
    env = clean_env(free_port(), tmp_path / "models")
    env.update(
        LLM_APPLIANCE_UPDATE_URL="http://updates.test",
        LLM_APPLIANCE_UPDATE_ROOT=str(feed.trusted_root),
        LLM_APPLIANCE_UPDATE_STATE_DIR=str(tmp_path / "state"),
        HTTP_PROXY=proxy.url,
    )

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await trio.run_process(
            [str(installed), *args],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=tmp_path,
        )

    with trio.fail_after(600):
        assert version_of(installed, env) == "0.1.0"
        checked = await cli("update", "--check")
        assert checked.returncode == 100, checked.stdout + checked.stderr
        updated = await cli("update", "--yes")
        assert updated.returncode == 0, updated.stdout + updated.stderr
        assert b"updated to 0.1.1" in updated.stdout
        assert version_of(installed, env) == "0.1.1"
        assert any(url.startswith("http://updates.test/targets/") for url in proxy.forwards)
        again = await cli("update", "--check")
        assert again.returncode == 0, again.stdout + again.stderr
        back = await cli("update", "--rollback")
        assert back.returncode == 0, back.stdout + back.stderr
        assert version_of(installed, env) == "0.1.0"
