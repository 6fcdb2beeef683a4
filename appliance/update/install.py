"""Putting a verified release in place of the running binary, and taking it back.

The new file is written beside the binary (same filesystem, so the final rename is atomic), must
pass its own `--version` self-test, and the old binary stays as `<binary>.previous` (a hard link:
the running process keeps its inode either way). A box is never left without a binary: every step
before the rename can fail and leaves the old one untouched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from appliance.settings.platform import user_name
from appliance.update.feed import UpdateError

SELF_TEST_TIMEOUT = 60.0
_PACKAGE_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/lib", "/opt/homebrew")


def previous_of(binary: Path) -> Path:
    return binary.with_name(binary.name + ".previous")


def running_binary() -> Path:
    """The file this process runs from; only a frozen (PyInstaller) build can replace itself."""
    if not getattr(sys, "frozen", False):
        raise UpdateError(
            f"llm-appliance runs from a Python environment ({sys.prefix}), not from its binary: "
            "update it with pip (or your package manager) instead"
        )
    return Path(sys.executable).resolve()


def refuse_managed(binary: Path) -> None:
    """A package manager owns files under /usr: replacing one behind its back breaks it."""
    text = str(binary)
    owner = _package_owner(binary)
    if owner or any(text.startswith(d + "/") for d in _PACKAGE_DIRS):
        by = f" (owned by {owner})" if owner else ""
        raise UpdateError(
            f"{binary} belongs to the system's package manager{by}: update it with that package "
            "manager; self-update works for a binary installed in /usr/local/bin or /opt"
        )


def _package_owner(binary: Path) -> str | None:
    for command in (["dpkg", "-S", str(binary)], ["rpm", "-qf", str(binary)]):
        if shutil.which(command[0]) is None:
            continue
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().split(":")[0]
    return None


def check_writable(directory: Path) -> None:
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UpdateError(
            f"cannot write to {directory} (as {user_name()}): the new binary must be written "
            "beside the old one; run the update as a user who may write there (e.g. root)"
        )


def staging_path(binary: Path, version: str) -> Path:
    return binary.with_name(f".{binary.name}.update-{version}")


def self_test(candidate: Path, expected: str) -> None:
    """Run `candidate --version`; it must start and name `expected` as its version."""
    candidate.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_HOST",)}
    env["OLLAMA_HOST"] = "127.0.0.1:1"  # never talk to the running server during the test
    try:
        done = subprocess.run(
            [str(candidate), "--version"],
            capture_output=True,
            text=True,
            timeout=SELF_TEST_TIMEOUT,
            env=env,
            cwd=candidate.parent,
        )
    except subprocess.TimeoutExpired:
        raise UpdateError(
            f"self-test failed: {candidate.name} --version did not finish in "
            f"{SELF_TEST_TIMEOUT:.0f} s"
        ) from None
    except OSError as exc:
        raise UpdateError(f"self-test failed: cannot run the new binary: {exc}") from None
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise UpdateError(
            f"self-test failed: the new binary exited with {done.returncode}: {output[-300:]}"
        )
    if not re.search(rf"(?<![\w.]){re.escape(expected)}(?![\w.])", output):
        raise UpdateError(
            f"self-test failed: the new binary reports {output[-200:]!r}, not version {expected}"
        )


def activate(binary: Path, candidate: Path) -> None:
    """Keep the old binary as `.previous`, then rename the candidate into place (atomic)."""
    previous = previous_of(binary)
    link = binary.with_name(f".{binary.name}.previous-new")
    link.unlink(missing_ok=True)
    try:
        os.link(binary, link)
    except OSError:
        shutil.copy2(binary, link)
    os.replace(link, previous)
    os.replace(candidate, binary)
    _fsync_dir(binary.parent)


def rollback(binary: Path) -> None:
    """Put `<binary>.previous` back in place of `binary`."""
    previous = previous_of(binary)
    if not previous.is_file():
        raise UpdateError(f"nothing to roll back to: {previous} does not exist")
    check_writable(binary.parent)
    os.replace(previous, binary)
    _fsync_dir(binary.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
