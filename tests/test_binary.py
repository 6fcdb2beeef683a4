"""The PyInstaller binary (`make binary` -> dist/llm-appliance) run as users run it.

Conventions: marked `slow`; skipped unless dist/llm-appliance exists, or LLM_APPLIANCE_TEST_BINARY=1
(which builds it when missing). The binary runs with the venv out of reach: cwd in tmp_path, PATH
/usr/bin:/bin, no PYTHONPATH, HOME in tmp_path, on a free 127.0.0.1 port, in its own process group,
with a tiny generated model in an Ollama-layout store. It is stopped the way systemd stops a unit:
SIGTERM to the whole process group. Every I/O step has a `trio.fail_after` bound.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import trio
from serverproc import (
    built,
    clean_env,
    free_port,
    register_tiny_model,
    run_server,
    wait_until_answers,
)

REPO = Path(__file__).resolve().parents[1]
BINARY = REPO / "dist" / "llm-appliance"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def binary() -> Path:
    return built(BINARY, "binary")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    register_tiny_model(models)
    return models


def run_binary(binary: Path, tmp_path: Path, store: Path):
    env = clean_env(free_port(), store)
    return run_server([str(binary), "serve"], env, tmp_path, tmp_path / "server.log")


async def test_binary_serves_generates_streams_and_exits_0_on_sigterm(
    binary: Path, tmp_path: Path, store: Path
):
    with trio.fail_after(180):
        async with run_binary(binary, tmp_path, store) as server:
            await wait_until_answers(server)
            async with httpx.AsyncClient(
                base_url=server.base_url, trust_env=False, timeout=60
            ) as client:
                root = await client.get("/")
                assert root.text == "Ollama is running"
                body = {
                    "model": "tiny",
                    "prompt": "hi",
                    "stream": False,
                    "options": {"num_predict": 4, "seed": 1},
                }
                answer = await client.post("/api/generate", json=body)
                assert answer.status_code == 200, answer.text
                assert answer.json()["done"] is True
                lines = []
                async with client.stream(
                    "POST", "/api/generate", json={**body, "stream": True}
                ) as response:
                    async for line in response.aiter_lines():
                        if line:
                            lines.append(json.loads(line))
                assert lines[-1]["done"] is True and len(lines) >= 2
            server.signal_group(signal.SIGTERM)
            code = await server.wait()
    assert code == 0, server.log_tail()


async def test_bootloader_ignores_sigterm_so_only_the_server_handles_it(
    binary: Path, tmp_path: Path, store: Path
):
    """systemd signals every process of the unit. The one-file bootloader (our direct child) is
    built with bootloader_ignore_signals, so it must not relay a SIGTERM to the server: the server
    gets exactly the one the group signal gives it, never a second that cuts its drain short."""
    with trio.fail_after(180):
        async with run_binary(binary, tmp_path, store) as server:
            await wait_until_answers(server)
            os.kill(server.process.pid, signal.SIGTERM)  # the bootloader alone
            async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
                for _ in range(3):  # still serving: nothing was relayed
                    assert (await client.get(server.base_url + "/")).status_code == 200
                    await trio.sleep(0.1)
            assert server.process.returncode is None
            server.signal_group(signal.SIGTERM)
            code = await server.wait()
    assert code == 0, server.log_tail()


def glibc_versions(data: bytes) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for a, b in re.findall(rb"GLIBC_(\d+)\.(\d+)", data)}


def test_bundle_needs_no_newer_glibc_than_doctor_reports(binary: Path):
    """The newest GLIBC_x.y symbol version in the bootloader and every bundled library is the
    requirement the README and `doctor` state (the build host's glibc, 2.36 on Debian 12)."""
    pytest.importorskip("PyInstaller")
    from PyInstaller.archive.readers import CArchiveReader

    from appliance.host.doctor import BUILD_GLIBC

    needed = glibc_versions(binary.read_bytes())
    archive = CArchiveReader(str(binary))
    for name, entry in archive.toc.items():
        if entry[-1] in ("b", "x", "e"):  # binaries, extension modules, executables
            needed |= glibc_versions(archive.extract(name))
    newest = max(needed)
    stated = tuple(int(part) for part in BUILD_GLIBC.split("."))
    assert newest <= stated, f"bundle needs glibc {newest}, doctor says {BUILD_GLIBC}"


def test_binary_doctor_reports_the_glibc_requirement(binary: Path, tmp_path: Path):
    env = clean_env(free_port(), tmp_path / "models")
    result = subprocess.run(
        [str(binary), "doctor", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    checks = {check["name"]: check for check in json.loads(result.stdout)}
    assert checks["glibc"]["detail"]["binary_needs"]
    # The binary chose llama.cpp CPU code that runs here: "warn" is a machine that is not x86-64,
    # "fail" no usable code, and either is a broken bundle on the machines it is built for.
    assert checks["cpu"]["status"] == "ok", checks["cpu"]


def test_binary_contains_llama_libraries_and_not_the_reference_model(binary: Path):
    pytest.importorskip("PyInstaller")
    from PyInstaller.archive.readers import CArchiveReader

    names = set(CArchiveReader(str(binary)).toc)
    assert "llama_cpp/lib/libllama.so" in names
    assert any(name.startswith("llama_cpp/lib/libggml-cpu") for name in names)
    assert not any("gemma3_270m" in name for name in names)


def test_binary_carries_the_wsl_script_for_doctor(binary: Path, tmp_path: Path):
    result = subprocess.run(
        [str(binary), "doctor", "--save-wsl-script", str(tmp_path / "out")],
        env=clean_env(free_port(), tmp_path / "models"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    saved = (tmp_path / "out" / "Tune-WslNetwork.ps1").read_bytes()
    assert saved == (REPO / "wsl" / "Tune-WslNetwork.ps1").read_bytes()
