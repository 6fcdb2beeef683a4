"""sd_notify: messages reach a real AF_UNIX datagram socket that the test binds.

Conventions: each test binds its own socket (a path under tmp_path, or an abstract name) and passes
it as NOTIFY_SOCKET through an injected environ, never the process environment; every I/O test has a
`trio.fail_after` bound; nothing asserts how long anything took.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from pathlib import Path

import pytest
import trio

from appliance.host import notify


@pytest.fixture
def listener(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def test_notify_without_socket_is_a_noop():
    assert notify.notify("READY=1", environ={}) is False
    assert notify.ready(environ={}) is False


def test_ready_sends_ready(listener):
    sock, path = listener
    assert notify.ready(environ={"NOTIFY_SOCKET": path}) is True
    assert "READY=1" in sock.recv(4096).decode().splitlines()


def test_stopping_and_status_messages(listener):
    sock, path = listener
    env = {"NOTIFY_SOCKET": path}
    notify.stopping(environ=env)
    assert "STOPPING=1" in sock.recv(4096).decode().splitlines()
    notify.status("loading gemma3:270m\nnow", environ=env)
    assert sock.recv(4096).decode() == "STATUS=loading gemma3:270m now"


def test_abstract_socket_name_is_supported():
    name = f"llm-appliance-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify.notify("READY=1", environ={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"READY=1"


def test_missing_socket_returns_false(tmp_path: Path):
    env = {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}
    assert notify.notify("READY=1", environ=env) is False


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert notify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert notify.watchdog_interval({}) is None
    assert notify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    pid = str(os.getpid())
    assert notify.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": pid}) == 1.0


def test_frozen_child_accepts_the_bootloaders_watchdog_pid(monkeypatch):
    """Under the one-file binary, systemd's main PID is our parent (the bootloader)."""
    parent = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getppid())}
    assert notify.watchdog_interval(parent) is None
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert notify.watchdog_interval(parent) == 1.0


async def test_serve_watchdog_returns_at_once_when_unset(listener):
    _, path = listener
    with trio.fail_after(5):
        await notify.serve_watchdog(environ={"NOTIFY_SOCKET": path})


async def test_serve_watchdog_pings_repeatedly(listener):
    sock, path = listener
    sock.setblocking(False)
    trio_sock = trio.socket.from_stdlib_socket(sock)
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000", "WATCHDOG_PID": str(os.getpid())}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: notify.serve_watchdog(environ=env, task_status=task_status)
            )
            pings = [await trio_sock.recv(4096) for _ in range(3)]
            nursery.cancel_scope.cancel()
    assert pings == [b"WATCHDOG=1"] * 3
