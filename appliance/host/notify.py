"""systemd's sd_notify protocol, so a `Type=notify` unit knows when we listen, stop, and live.

The protocol is one datagram per message to the AF_UNIX socket named by `NOTIFY_SOCKET` (a path, or
`@name` for the abstract namespace). Without that variable every call is a no-op, so the server can
call these helpers unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping

import trio

log = logging.getLogger(__name__)


def _address(environ: Mapping[str, str]) -> str | None:
    """The socket address from `NOTIFY_SOCKET`; `@` marks Linux's abstract namespace."""
    path = environ.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]
    if not path.startswith("/"):
        log.warning("ignoring NOTIFY_SOCKET=%r: neither a path nor an abstract name", path)
        return None
    return path


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify message; True when it was sent, False when there is nowhere to send it.

    A send error is logged and answered with False: losing a status message must never stop the
    server (systemd then times the start out, which is the visible failure).
    """
    address = _address(os.environ if environ is None else environ)
    if address is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(message.encode("utf-8"), address)
        except OSError as exc:
            log.warning("sd_notify %r to %r failed: %s", message, address, exc)
            return False
    return True


def ready(environ: Mapping[str, str] | None = None) -> bool:
    """Tell systemd the server listens (ends `systemctl start` for a Type=notify unit)."""
    return notify("READY=1\nSTATUS=listening", environ)


def stopping(environ: Mapping[str, str] | None = None) -> bool:
    """Tell systemd we are draining, so it waits for TimeoutStopSec instead of judging us hung."""
    return notify("STOPPING=1\nSTATUS=shutting down", environ)


def status(text: str, environ: Mapping[str, str] | None = None) -> bool:
    """Set the one-line status that `systemctl status` shows."""
    return notify("STATUS=" + text.replace("\n", " "), environ)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of WATCHDOG_USEC), or None when no watchdog is ours."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    if value <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid not in _own_pids():
        return None  # the watchdog belongs to another process
    return value / 2 / 1_000_000


def _own_pids() -> tuple[str, ...]:
    """Our pid, plus the parent's under PyInstaller's one-file bootloader.

    There systemd's main PID (and so WATCHDOG_PID) is the bootloader, which forks the real server
    and waits for it; the unit's NotifyAccess=all lets the child's pings count.
    """
    if getattr(sys, "frozen", False):
        return (str(os.getpid()), str(os.getppid()))
    return (str(os.getpid()),)


async def serve_watchdog(
    *,
    environ: Mapping[str, str] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Ping `WATCHDOG=1` every WATCHDOG_USEC/2 until cancelled; return at once when unset.

    Because it runs on the event loop, a loop blocked by a stray synchronous call stops the pings
    and systemd restarts us: that is exactly the hang the watchdog is there to catch.
    """
    env = os.environ if environ is None else environ
    interval = watchdog_interval(env)
    address = _address(env)
    if interval is None or address is None:
        task_status.started()
        return
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
    with sock:
        task_status.started()
        while True:
            try:
                await sock.sendto(b"WATCHDOG=1", address)
            except OSError as exc:
                log.warning("sd_notify watchdog ping to %r failed: %s", address, exc)
            await trio.sleep(interval)
