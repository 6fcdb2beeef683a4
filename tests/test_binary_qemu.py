"""The one-directory binary on a CPU without AVX: `qemu-x86_64 -cpu Nehalem`.

qemu-user presents Nehalem's cpuid (SSE4.2, no AVX) to the binary, so the appliance must choose a
variant without AVX and still generate. qemu-user does not follow an execve: the child runs on the
host CPU. So the one-file build (which unpacks itself, then runs a child) cannot be tested this way,
and the one-directory build's bootloader, which also restarts itself once (to set LD_LIBRARY_PATH),
is started as that restarted process would be (its `_PYI_*` variables set). The CPU probe's child
process runs on the host CPU too; the server asks each passing variant again under the emulated
cpuid, which is what this test checks.
This qemu executes AVX anyway, so tests/test_cpu_backend.py also reads the baseline variant's code
with objdump.

Conventions as tests/test_binary.py: marked `slow`; skipped unless dist/llm-appliance-onedir is
built or LLM_APPLIANCE_TEST_BINARY=1 (which builds it); skipped when qemu-x86_64 is missing
(`make test-peers` installs Debian's qemu-user).
"""

from __future__ import annotations

import re
import shutil
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
ONEDIR = REPO / "dist" / "llm-appliance-onedir" / "llm-appliance"
QEMU = shutil.which("qemu-x86_64")
WITHOUT_AVX = {"x64", "sse42"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 not installed (make test-peers)"),
]


@pytest.fixture(scope="module")
def onedir() -> Path:
    return built(ONEDIR, "binary-onedir")


async def test_on_a_cpu_without_avx_the_binary_chooses_code_without_avx_and_generates(
    onedir: Path, tmp_path: Path
):
    models = tmp_path / "models"
    register_tiny_model(models)
    internal = onedir.parent / "_internal"
    restarted = {  # what PyInstaller's bootloader sets before it restarts itself
        "LD_LIBRARY_PATH": str(internal),
        "_PYI_APPLICATION_HOME_DIR": str(internal),
        "_PYI_ARCHIVE_FILE": str(onedir),
        "_PYI_PARENT_PROCESS_LEVEL": "1",
    }
    env = clean_env(free_port(), models, {"LLM_APPLIANCE_NUM_THREADS": "1", **restarted})
    command = [str(QEMU), "-cpu", "Nehalem", str(onedir), "serve"]
    with trio.fail_after(600):  # everything runs emulated, several times slower
        async with run_server(command, env, tmp_path, tmp_path / "server.log") as server:
            await wait_until_answers(server)
            async with httpx.AsyncClient(
                base_url=server.base_url, trust_env=False, timeout=300
            ) as client:
                body = {
                    "model": "tiny",
                    "prompt": "hi",
                    "stream": False,
                    "options": {"num_predict": 4, "seed": 1},
                }
                answer = await client.post("/api/generate", json=body)
                assert answer.status_code == 200, answer.text
                assert answer.json()["eval_count"] >= 1
            maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    log = (tmp_path / "server.log").read_text(errors="replace")
    match = re.search(r"msg=cpu variant ([a-z0-9_]+): (.*)", log)
    assert match, log[-3000:]
    print(match.group(0))
    assert match.group(1) in WITHOUT_AVX, match.group(0)
    mapped = set(re.findall(r"libggml-cpu-([a-z0-9_]+)\.so", maps))
    assert match.group(1) in mapped
