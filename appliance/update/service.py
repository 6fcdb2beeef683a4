"""Restarting the service onto a new binary, and the health gate that takes it back.

A restart counts as good only when systemd saw READY=1 (`systemctl restart` of a `Type=notify`
unit returns once the server said so, or fails) and `GET /` then answers "Ollama is running", both
within the deadline. Otherwise the previous binary is restored and started again, and the version
is remembered as failed, so an automatic update does not try it again until a newer one appears.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx

UNIT = "llm-appliance.service"
READY_TEXT = "Ollama is running"


def systemctl() -> str | None:
    return shutil.which("systemctl")


def is_active(unit: str = UNIT) -> bool:
    """Whether the unit runs now: only then does an update restart it."""
    command = systemctl()
    if command is None:
        return False
    try:
        done = subprocess.run(
            [command, "is-active", "--quiet", unit], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def restart(unit: str, deadline: float) -> str | None:
    """`systemctl restart unit`; None when it returned in time and succeeded, else why not."""
    command = systemctl()
    if command is None:
        return "systemctl is not available"
    timeout = max(1.0, deadline - time.monotonic())
    try:
        done = subprocess.run(
            [command, "restart", unit], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return f"{unit} did not report ready (READY=1) within {timeout:.0f} s"
    except OSError as exc:
        return f"cannot run systemctl: {exc}"
    if done.returncode != 0:
        return f"systemctl restart {unit} failed: {(done.stderr or done.stdout).strip()[-300:]}"
    return None


def wait_until_serving(base_url: str, deadline: float) -> str | None:
    """Poll `GET /` until it answers as the appliance; None on success, else why not."""
    last = "no answer"
    with httpx.Client(base_url=base_url, trust_env=False, timeout=5.0) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get("/")
                if response.status_code == 200 and response.text.strip() == READY_TEXT:
                    return None
                last = f"GET / answered {response.status_code}"
            except httpx.HTTPError as exc:
                last = f"GET / failed: {type(exc).__name__}"
            time.sleep(0.5)
    return f"the service did not answer {base_url}/ in time ({last})"


def restart_and_check(unit: str, base_url: str, timeout: float) -> str | None:
    """Restart and gate on health; None when the new binary serves, else the reason."""
    deadline = time.monotonic() + timeout
    problem = restart(unit, deadline)
    if problem is None:
        problem = wait_until_serving(base_url, deadline)
    return problem
