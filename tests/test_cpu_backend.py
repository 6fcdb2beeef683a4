"""llama.cpp's CPU code chosen at run time (engine/cpu_backend.py), on this machine's real CPU.

Needs llama-cpp-python built with GGML_BACKEND_DL and GGML_CPU_ALL_VARIANTS (the Makefile's
CMAKE_ARGS); a build with its CPU code inside skips these. The probes run in child processes, so a
variant that faults here kills only its child; the tests read which variant a server process
really mapped from /proc/<pid>/maps.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from serverproc import clean_env, free_port, register_tiny_model, run_server, wait_until_answers

from engine import cpu_backend

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    cpu_backend.has_builtin_cpu(),
    reason="llama-cpp-python built without GGML_BACKEND_DL (make install builds it with)",
)


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_every_x86_variant_is_installed():
    assert set(cpu_backend.VARIANT_FEATURES) <= set(cpu_backend.find_variants())


def test_the_probe_dies_with_sigill_on_avx512_variants_when_the_cpu_has_no_avx512():
    if "avx512f" in cpu_flags():
        pytest.skip("this CPU runs AVX-512: nothing here faults for lack of it")
    variants = cpu_backend.find_variants()
    targets = [n for n, feats in cpu_backend.VARIANT_FEATURES.items() if "avx512" in feats]
    # --any-cpu: probed although cpuid says no, to show the products reach the faulting code.
    results = cpu_backend.run_probes([variants[n] for n in targets], any_cpu=True)
    verdicts = {n: results[n]["verdict"].split(" (")[0] for n in targets}
    assert verdicts == {n: "probe died with SIGILL" for n in targets}


def test_the_baseline_variant_passes_the_probe():
    results = cpu_backend.run_probes([cpu_backend.find_variants()["x64"]])
    assert results["x64"]["verdict"] == "runs"


def test_the_chosen_variant_passed_the_probe_and_every_better_one_did_not(own_cache: Path):
    choice = cpu_backend.choose(use_cache=False)
    assert choice.verdicts[choice.variant] == "runs"
    better = [n for n in choice.verdicts if cpu_backend.rank(n) > cpu_backend.rank(choice.variant)]
    assert all(choice.verdicts[n] != "runs" for n in better)
    assert choice.describe().startswith(f"{choice.variant}: ")


def test_sapphirerapids_is_not_chosen_when_the_kernel_refuses_amx(own_cache: Path):
    granted, why = cpu_backend.amx_granted()
    if granted:
        pytest.skip("the kernel grants AMX here")
    choice = cpu_backend.choose(use_cache=False)
    assert choice.variant != "sapphirerapids"
    assert choice.verdicts["sapphirerapids"] != "runs"


def test_a_second_choice_reads_the_verdicts_from_the_cache(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch
):
    first = cpu_backend.choose()
    assert cpu_backend.cache_path().is_file()

    def no_probe(*args: object, **kwargs: object) -> dict:
        raise AssertionError("probed again although the cache knows the verdicts")

    monkeypatch.setattr(cpu_backend, "run_probes", no_probe)
    assert cpu_backend.choose() == first


def test_a_changed_library_is_probed_again(own_cache: Path, tmp_path: Path):
    variants = cpu_backend.find_variants()
    key = cpu_backend.cache_key(variants)
    copy = tmp_path / "libggml-cpu-x64.so"
    shutil.copy(variants["x64"], copy)
    with copy.open("ab") as f:
        f.write(b"\0")
    assert cpu_backend.cache_key({**variants, "x64": copy}) != key


def test_an_unknown_forced_variant_is_a_clear_error():
    with pytest.raises(cpu_backend.CpuBackendError, match="not in this build"):
        cpu_backend.choose("pentium4")


def objdump_vector_instructions(library: Path) -> list[str]:
    """Instructions with a VEX (C4/C5) or EVEX (62) prefix, or on ymm/zmm/mask registers.

    In 64-bit mode C4, C5 and 62 as the first opcode byte can only be those prefixes (LES, LDS
    and BOUND do not exist there); legacy prefixes (66, F2, F3, segment, LOCK, 67) may precede.
    """
    text = subprocess.run(
        ["objdump", "-d", "--insn-width=15", "-j", ".text", str(library)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    legacy = {"66", "67", "f2", "f3", "f0", "2e", "36", "3e", "26", "64", "65"}
    found = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0].strip().endswith(":"):
            continue
        raw = parts[1].split()
        first = next((b for b in raw if b not in legacy), "")
        asm = parts[2]
        if first in ("c4", "c5", "62") or re.search(r"%[yz]mm|%k[0-7]\b", asm):
            found.append(line.strip())
    return found


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_the_baseline_variant_has_no_vex_or_evex_encoded_instruction():
    variants = cpu_backend.find_variants()
    assert objdump_vector_instructions(variants["x64"]) == []
    # The check can fail: the haswell variant is full of them.
    assert objdump_vector_instructions(variants["haswell"])


def mapped_variants(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return set(re.findall(r"libggml-cpu-([a-z0-9_]+)\.so", maps))


async def _serve_and_generate(tmp_path: Path, extra: dict[str, str]) -> tuple[set[str], str]:
    models = tmp_path / "models"
    register_tiny_model(models)
    env = clean_env(
        free_port(),
        models,
        {"PYTHONPATH": str(REPO), "LLM_APPLIANCE_IMPORT_REFERENCE": "0", **extra},
    )
    with trio.fail_after(180):
        async with run_server(
            [sys.executable, "-m", "appliance", "serve"], env, tmp_path, tmp_path / "log"
        ) as server:
            await wait_until_answers(server)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
                body = {"model": "tiny", "prompt": "hi", "stream": False}
                answer = await client.post(
                    "/api/generate", json={**body, "options": {"num_predict": 4}}
                )
                assert answer.status_code == 200, answer.text
            mapped = mapped_variants(server.process.pid)
    return mapped, (tmp_path / "log").read_text()


async def test_a_forced_variant_is_the_one_the_server_loads(tmp_path: Path):
    mapped, log = await _serve_and_generate(tmp_path, {"LLM_APPLIANCE_CPU_VARIANT": "x64"})
    assert mapped == {"x64"}
    assert "cpu variant x64: forced by cpu_variant" in log


async def test_the_server_loads_the_variant_it_names_in_its_start_log(tmp_path: Path):
    mapped, log = await _serve_and_generate(tmp_path, {})
    (line,) = [line for line in log.splitlines() if "msg=cpu variant " in line]
    named = line.split("msg=cpu variant ", 1)[1].split(":", 1)[0]
    assert mapped == {named}
    assert named != "x64" or "sse42" not in cpu_flags()  # a real choice, not the fallback


def test_a_variant_needing_state_the_kernel_does_not_list_is_not_probed():
    haswell_host = frozenset("sse4_2 avx f16c fma avx2 bmi2".split())
    assert cpu_backend.missing_kernel_flags("haswell", haswell_host) == []
    assert cpu_backend.missing_kernel_flags("icelake", haswell_host)[0] == "avx512f"
    assert cpu_backend.missing_kernel_flags("sapphirerapids", haswell_host | {"avx512f"})
    assert cpu_backend.missing_kernel_flags("x64", frozenset()) == []  # flags unknown: no verdict
