"""`llm-appliance update`: a verified release feed (TUF) through a real forward proxy.

Conventions: the feed is a real TUF repository made with python-tuf by packaging/tuf_release.py
(the operators' script) and served on loopback as `http://updates.test`, a name only the proxy
peer can resolve, so every test that reaches it proves the update went through the proxy. The
binary being replaced is a small script that answers `--version` like ours (the one-file binary
itself is tested in test_update_binary.py); the update runs in a worker thread, as the CLI runs it
outside trio. No systemd runs here: restart tests put a small `systemctl` stand-in first on PATH
that supervises one process by pid file, and the health gate is the real one (GET / on the port).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import trio
from peers.feed import Feed, FeedPeer, script_binary
from peers.proxy import ProxyPeer
from serverproc import free_port

from appliance.settings.config import Settings
from appliance.update import install, run
from appliance.update.feed import UpdateError
from appliance.update.state import UpdateState

pytestmark = pytest.mark.slow


@pytest.fixture
def feed(tmp_path: Path) -> Feed:
    return Feed(tmp_path)


@pytest.fixture
async def served(nursery, feed: Feed) -> tuple[FeedPeer, ProxyPeer]:
    peer = FeedPeer(feed.dir)
    await nursery.start(peer.serve)
    proxy = ProxyPeer(names={"updates.test": ("127.0.0.1", peer.port)})
    await nursery.start(proxy.serve)
    return peer, proxy


def context(tmp_path: Path, feed: Feed, proxy: ProxyPeer, port: int = 11434) -> run.Context:
    settings = Settings.for_tests(
        update_url="http://updates.test",
        update_root=feed.trusted_root,
        update_state_dir=tmp_path / "state",
        http_proxy=proxy.url,
        https_proxy=proxy.url,
        port=port,
    )
    return run.Context(settings, tmp_path / "state", out=open(tmp_path / "out.txt", "a"))


def installed(tmp_path: Path, version: str = "0.1.0") -> Path:
    """The running binary: version 0.1.0, as the source tree says."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    return script_binary(tmp_path / "bin" / "llm-appliance", version)


def output(tmp_path: Path) -> str:
    return (tmp_path / "out.txt").read_text()


async def update(ctx: run.Context, binary: Path, **kw) -> int:
    request = run.UpdateRequest(binary=binary, yes=True, health_timeout=20, **kw)
    return await trio.to_thread.run_sync(run.update, ctx, request)


async def check(ctx: run.Context) -> int:
    return await trio.to_thread.run_sync(run.check, ctx)


async def test_check_exits_0_when_the_feed_has_nothing_newer(tmp_path, feed, served):
    feed.publish("0.1.0", script_binary(tmp_path / "r010", "0.1.0"))
    ctx = context(tmp_path, feed, served[1])
    assert await check(ctx) == run.EXIT_OK
    assert "up to date: running 0.1.0" in output(tmp_path)


async def test_check_exits_100_when_a_newer_release_is_there_and_went_through_the_proxy(
    tmp_path, feed, served
):
    feed.publish("0.2.0", script_binary(tmp_path / "r020", "0.2.0"))
    ctx = context(tmp_path, feed, served[1])
    assert await check(ctx) == run.EXIT_UPDATE_AVAILABLE
    assert "update available: running 0.1.0, newest 0.2.0" in output(tmp_path)
    assert any(url.startswith("http://updates.test/metadata/") for url in served[1].forwards)
    state = UpdateState.load(tmp_path / "state")
    assert state.last_check is not None and state.last_result.startswith("update available")


async def test_check_names_the_host_and_proxy_when_the_feed_is_unreachable(tmp_path, feed, served):
    ctx = context(tmp_path, feed, served[1])
    settings = ctx.settings
    ctx.settings = Settings.for_tests(
        **{**settings.__dict__, "update_url": "http://nowhere.test", "warnings": ()}
    )
    assert await check(ctx) == run.EXIT_ERROR
    text = output(tmp_path)
    assert "nowhere.test" in text and "via proxy" in text


async def test_update_swaps_the_binary_and_keeps_the_old_one_as_previous(tmp_path, feed, served):
    feed.publish("0.2.0", script_binary(tmp_path / "r020", "0.2.0"))
    binary = installed(tmp_path)
    old = binary.read_bytes()
    assert await update(context(tmp_path, feed, served[1]), binary) == run.EXIT_OK
    assert b"version is 0.2.0" in binary.read_bytes()
    assert install.previous_of(binary).read_bytes() == old
    assert os.access(binary, os.X_OK)
    assert sorted(p.name for p in binary.parent.iterdir()) == [
        "llm-appliance",
        "llm-appliance.previous",
    ]
    assert "updated to 0.2.0" in output(tmp_path)


async def test_a_tampered_target_is_refused_and_nothing_changes(tmp_path, feed, served):
    target = feed.publish("0.2.0", script_binary(tmp_path / "r020", "0.2.0"))
    target.write_text(target.read_text().replace("0.2.0", "6.6.6"))  # same length, other bytes
    binary = installed(tmp_path)
    old = binary.read_bytes()
    assert await update(context(tmp_path, feed, served[1]), binary) == run.EXIT_ERROR
    assert "does not match its signed length or hash" in output(tmp_path)
    assert binary.read_bytes() == old
    assert sorted(p.name for p in binary.parent.iterdir()) == ["llm-appliance"]


async def test_a_target_longer_than_signed_is_refused(tmp_path, feed, served):
    target = feed.publish("0.2.0", script_binary(tmp_path / "r020", "0.2.0"))
    target.write_text(target.read_text() + "# and more\n")
    binary = installed(tmp_path)
    assert await update(context(tmp_path, feed, served[1]), binary) == run.EXIT_ERROR
    assert "larger than its signed length" in output(tmp_path)
    assert sorted(p.name for p in binary.parent.iterdir()) == ["llm-appliance"]


async def test_an_expired_timestamp_is_refused_as_a_frozen_feed(tmp_path, feed, served):
    feed.publish("0.2.0", script_binary(tmp_path / "r020", "0.2.0"))
    feed.resign_timestamp(timestamp=-1)
    binary = installed(tmp_path)
    assert await update(context(tmp_path, feed, served[1]), binary) == run.EXIT_ERROR
    assert "expired" in output(tmp_path)
    assert b"0.1.0" in binary.read_bytes()


async def test_replayed_older_metadata_is_refused(tmp_path, feed, served):
    feed.publish("0.2.0", script_binary(tmp_path / "r020", "0.2.0"))
    feed.snapshot_metadata(tmp_path / "old-metadata")
    feed.publish("0.3.0", script_binary(tmp_path / "r030", "0.3.0"))
    ctx = context(tmp_path, feed, served[1])
    assert await check(ctx) == run.EXIT_UPDATE_AVAILABLE  # the box has seen the newer metadata
    feed.restore_metadata(tmp_path / "old-metadata")  # an attacker replays the older feed
    assert await check(ctx) == run.EXIT_ERROR
    assert "older metadata than this box trusts" in output(tmp_path)


async def test_a_target_whose_self_test_fails_is_not_installed(tmp_path, feed, served):
    feed.publish("0.2.0", script_binary(tmp_path / "r020", "0.1.9"))  # reports the wrong version
    binary = installed(tmp_path)
    old = binary.read_bytes()
    ctx = context(tmp_path, feed, served[1])
    assert await update(ctx, binary) == run.EXIT_ERROR
    assert "self-test failed" in output(tmp_path) and "not version 0.2.0" in output(tmp_path)
    assert binary.read_bytes() == old
    assert sorted(p.name for p in binary.parent.iterdir()) == ["llm-appliance"]
    assert UpdateState.load(tmp_path / "state").failed_versions == ["0.2.0"]


async def test_a_downgrade_is_refused_unless_allowed(tmp_path, feed, served):
    feed.publish("0.0.9", script_binary(tmp_path / "r009", "0.0.9"))
    binary = installed(tmp_path)
    ctx = context(tmp_path, feed, served[1])
    assert await update(ctx, binary) == run.EXIT_OK  # nothing newer: up to date
    assert await update(ctx, binary, version="0.0.9") == run.EXIT_ERROR
    assert "refusing a downgrade" in output(tmp_path)
    assert b"0.1.0" in binary.read_bytes()
    assert await update(ctx, binary, version="0.0.9", allow_downgrade=True) == run.EXIT_OK
    assert b"0.0.9" in binary.read_bytes()


async def test_an_unwritable_directory_is_named(tmp_path, feed, served):
    feed.publish("0.2.0", script_binary(tmp_path / "r020", "0.2.0"))
    binary = installed(tmp_path)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    done = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(binary.parent), str(readonly)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {done.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(readonly)], check=True)
        ctx = context(tmp_path, feed, served[1])
        assert await update(ctx, readonly / "llm-appliance") == run.EXIT_ERROR
        assert f"cannot write to {readonly}" in output(tmp_path)
    finally:
        subprocess.run(["umount", str(readonly)], check=False)
    assert b"0.1.0" in binary.read_bytes()


async def test_rollback_puts_the_previous_binary_back(tmp_path, feed, served):
    feed.publish("0.2.0", script_binary(tmp_path / "r020", "0.2.0"))
    binary = installed(tmp_path)
    ctx = context(tmp_path, feed, served[1])
    assert await update(ctx, binary) == run.EXIT_OK
    rolled = await trio.to_thread.run_sync(run.rollback, ctx, binary, "llm-appliance.service", 20)
    assert rolled == run.EXIT_OK
    assert b"0.1.0" in binary.read_bytes()
    assert not install.previous_of(binary).exists()


def test_an_update_from_a_python_environment_is_refused():
    with pytest.raises(UpdateError, match="Python environment"):
        install.running_binary()


def test_a_binary_under_the_package_managers_directories_is_refused():
    with pytest.raises(UpdateError, match="package manager"):
        install.refuse_managed(Path("/usr/bin/llm-appliance"))


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="no dpkg on this machine")
def test_a_file_dpkg_owns_is_refused_wherever_it_is():
    with pytest.raises(UpdateError, match=r"owned by base-files"):
        install.refuse_managed(Path("/etc/debian_version"))


# ---- restarts under "systemd" --------------------------------------------------------------------

SYSTEMCTL = """#!/bin/sh
# A stand-in for systemctl (no systemd runs here): one unit, one process, a pid file.
S="$FAKE_SYSTEMD_DIR"
case "$1" in
  is-active) [ -f "$S/pid" ] && kill -0 "$(cat "$S/pid")" 2>/dev/null ;;
  restart)
    if [ -f "$S/pid" ]; then kill "$(cat "$S/pid")" 2>/dev/null; sleep 0.3; fi
    setsid "$FAKE_SYSTEMD_BINARY" serve >>"$S/log" 2>&1 </dev/null &
    echo $! > "$S/pid"
    echo restart >> "$S/restarts" ;;
  *) exit 1 ;;
esac
"""


@pytest.fixture
def service(tmp_path: Path, monkeypatch):
    """The installed binary running as "the service" on a free port, under the stand-in."""
    state = tmp_path / "systemd"
    state.mkdir()
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "systemctl").write_text(SYSTEMCTL)
    (tools / "systemctl").chmod(0o755)
    binary = installed(tmp_path)
    port = free_port()
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SYSTEMD_DIR", str(state))
    monkeypatch.setenv("FAKE_SYSTEMD_BINARY", str(binary))
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{port}")
    subprocess.run(["systemctl", "restart", "llm-appliance.service"], check=True)
    yield binary, port, state
    pid = (state / "pid").read_text().strip()
    try:
        os.kill(int(pid), signal.SIGKILL)
    except ProcessLookupError:
        pass


async def test_an_update_restarts_the_service_and_checks_it_serves(tmp_path, feed, served, service):
    binary, port, state = service
    feed.publish("0.2.0", script_binary(tmp_path / "r020", "0.2.0"))
    ctx = context(tmp_path, feed, served[1], port=port)
    assert await update(ctx, binary) == run.EXIT_OK
    assert "updated to 0.2.0 and restarted llm-appliance.service" in output(tmp_path)
    assert len((state / "restarts").read_text().split()) == 2  # the first start, the update


async def test_a_restart_that_never_gets_ready_is_rolled_back_and_not_retried(
    tmp_path, feed, served, service
):
    binary, port, state = service
    old = binary.read_bytes()
    feed.publish("0.2.0", script_binary(tmp_path / "r020", "0.2.0", serves=False))
    ctx = context(tmp_path, feed, served[1], port=port)
    assert await update(ctx, binary) == run.EXIT_ERROR
    text = output(tmp_path)
    assert "0.2.0 did not come up" in text and "the previous version runs again" in text
    assert binary.read_bytes() == old
    assert UpdateState.load(tmp_path / "state").failed_versions == ["0.2.0"]
    # The failed version is not tried again; a newer one is.
    assert await update(ctx, binary) == run.EXIT_OK
    assert b"0.1.0" in binary.read_bytes()
    feed.publish("0.3.0", script_binary(tmp_path / "r030", "0.3.0"))
    assert await update(ctx, binary) == run.EXIT_OK
    assert b"0.3.0" in binary.read_bytes()


async def test_the_command_line_checks_the_feed_named_in_the_environment(
    tmp_path, feed, served, monkeypatch
):
    from appliance import cli

    feed.publish("0.2.0", script_binary(tmp_path / "r020", "0.2.0"))
    monkeypatch.setenv("LLM_APPLIANCE_UPDATE_URL", "http://updates.test")
    monkeypatch.setenv("LLM_APPLIANCE_UPDATE_ROOT", str(feed.trusted_root))
    monkeypatch.setenv("LLM_APPLIANCE_UPDATE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HTTP_PROXY", served[1].url)
    monkeypatch.setenv("LLM_APPLIANCE_CONFIG", "")
    code = await trio.to_thread.run_sync(cli.main, ["update", "--check"])
    assert code == run.EXIT_UPDATE_AVAILABLE
    binary = installed(tmp_path)
    argv = ["update", "--yes", "--binary", str(binary)]
    assert await trio.to_thread.run_sync(cli.main, argv) == run.EXIT_OK
    assert b"0.2.0" in binary.read_bytes()
