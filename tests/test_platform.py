"""Platform facts and the defaults they imply.

Conventions: a fake machine is a real directory tree under tmp_path holding the /proc and /sys
files the detector reads (`root=`); GPUs are injected with `gpu_probe=` so no test depends on the
host's hardware. Defaults are pure functions of PlatformFacts built directly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.settings.config import Settings
from appliance.settings.platform import (
    GIB,
    MIB,
    GpuInfo,
    PlatformFacts,
    decide_defaults,
    detect_facts,
    vram_tier_num_ctx,
)

CPUINFO_4C8T = "".join(
    f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i % 4}\n"
    "flags\t\t: fpu sse2 avx avx2 fma f16c\n\n"
    for i in range(8)
)


def fake_machine(
    root: Path,
    *,
    version: str = "Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org)",
    total_kb: int = 16 * 1024 * 1024,
    available_kb: int = 12 * 1024 * 1024,
    cpuinfo: str = CPUINFO_4C8T,
    files: dict[str, str] | None = None,
) -> Path:
    entries = {
        "proc/version": version,
        "proc/meminfo": f"MemTotal:       {total_kb} kB\nMemFree:  1000 kB\n"
        f"MemAvailable:   {available_kb} kB\n",
        "proc/cpuinfo": cpuinfo,
        **(files or {}),
    }
    for name, text in entries.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def facts(**overrides: object) -> PlatformFacts:
    values: dict[str, object] = {
        "system": "Linux",
        "is_wsl": False,
        "total_memory": 16 * GIB,
        "available_memory": 12 * GIB,
        "cpu_count": 8,
        "physical_cores": 4,
    }
    values.update(overrides)
    return PlatformFacts(**values)  # type: ignore[arg-type]


# --- detection -----------------------------------------------------------------------------------


def test_reads_memory_cpus_and_flags_from_proc(tmp_path: Path) -> None:
    f = detect_facts(fake_machine(tmp_path), gpu_probe=list)
    assert (f.system, f.is_wsl) == ("Linux", False)
    assert (f.total_memory, f.available_memory) == (16 * GIB, 12 * GIB)
    assert (f.cpu_count, f.physical_cores) == (8, 4)
    assert {"avx2", "fma"} <= f.cpu_flags
    assert f.gpus == ()


def test_detects_wsl_from_proc_version(tmp_path: Path) -> None:
    root = fake_machine(
        tmp_path, version="Linux version 5.15.146.1-microsoft-standard-WSL2 (root@65c7)"
    )
    assert detect_facts(root, gpu_probe=list).is_wsl


def test_cgroup_v2_memory_limit_caps_total_and_available(tmp_path: Path) -> None:
    root = fake_machine(
        tmp_path,
        files={
            "sys/fs/cgroup/memory.max": str(4 * GIB),
            "sys/fs/cgroup/memory.current": str(1 * GIB),
        },
    )
    f = detect_facts(root, gpu_probe=list)
    assert (f.total_memory, f.available_memory) == (4 * GIB, 3 * GIB)


def test_unlimited_cgroup_leaves_memory_alone(tmp_path: Path) -> None:
    root = fake_machine(tmp_path, files={"sys/fs/cgroup/memory.max": "max\n"})
    assert detect_facts(root, gpu_probe=list).total_memory == 16 * GIB


def test_cgroup_cpu_quota_limits_cpus(tmp_path: Path) -> None:
    root = fake_machine(tmp_path, files={"sys/fs/cgroup/cpu.max": "150000 100000\n"})
    f = detect_facts(root, gpu_probe=list)
    assert (f.cpu_count, f.physical_cores) == (2, 2)


def test_cpuinfo_without_topology_has_no_physical_core_count(tmp_path: Path) -> None:
    arm = "".join(f"processor\t: {i}\nFeatures\t: fp asimd\n\n" for i in range(4))
    f = detect_facts(fake_machine(tmp_path, cpuinfo=arm), gpu_probe=list)
    assert (f.cpu_count, f.physical_cores) == (4, None)
    assert "asimd" in f.cpu_flags


def test_amd_gpu_memory_from_sysfs(tmp_path: Path) -> None:
    dev = "sys/class/drm/card0/device/"
    root = fake_machine(
        tmp_path,
        files={
            dev + "vendor": "0x1002\n",
            dev + "mem_info_vram_total": str(16 * GIB),
            dev + "mem_info_vram_used": str(2 * GIB),
            dev + "product_name": "Radeon RX 7800 XT\n",
        },
    )
    (gpu,) = detect_facts(root).gpus
    assert gpu == GpuInfo("amd", "Radeon RX 7800 XT", 16 * GIB, 14 * GIB, False)


def test_real_machine_facts_are_sane() -> None:
    f = detect_facts()
    assert f.cpu_count >= 1 and f.total_memory > 0
    assert 0 <= f.available_memory <= f.total_memory


# --- defaults ------------------------------------------------------------------------------------


def test_max_loaded_models_is_three_per_gpu_and_three_on_cpu() -> None:
    assert decide_defaults(facts()).max_loaded_models == 3
    gpus = tuple(GpuInfo("nvidia", "L4", 24 * GIB, 23 * GIB) for _ in range(2))
    assert decide_defaults(facts(gpus=gpus)).max_loaded_models == 6


def test_windows_radeon_keeps_one_model_loaded() -> None:
    radeon = GpuInfo("amd", "Radeon RX 6800", 16 * GIB, 15 * GIB, unreliable_free_memory=True)
    defaults = decide_defaults(facts(system="Windows", gpus=(radeon,)))
    assert defaults.max_loaded_models == 1
    assert "Radeon" in defaults.rules["max_loaded_models"]


def test_num_parallel_is_four_when_memory_allows_four_slots() -> None:
    assert decide_defaults(facts(available_memory=8 * GIB)).num_parallel == 4
    assert decide_defaults(facts(available_memory=3 * GIB)).num_parallel == 1
    # a long default context needs more memory for four slots
    assert decide_defaults(facts(available_memory=8 * GIB), context_length=32768).num_parallel == 1


def test_memory_budget_keeps_a_safety_margin() -> None:
    assert decide_defaults(
        facts(total_memory=16 * GIB, available_memory=12 * GIB)
    ).memory_budget == (12 * GIB - int(1.6 * GIB))
    small = facts(total_memory=2 * GIB, available_memory=1 * GIB)
    assert decide_defaults(small).memory_budget == 1 * GIB - 512 * MIB
    assert (
        decide_defaults(facts(total_memory=1 * GIB, available_memory=100 * MIB)).memory_budget == 0
    )


def test_num_threads_is_physical_cores_and_at_least_one() -> None:
    assert decide_defaults(facts(cpu_count=8, physical_cores=4)).num_threads == 4
    assert decide_defaults(facts(cpu_count=3, physical_cores=None)).num_threads == 3
    assert decide_defaults(facts(cpu_count=0, physical_cores=None)).num_threads == 1


@pytest.mark.parametrize(
    ("vram", "num_ctx"),
    [(0, 4096), (16 * GIB, 4096), (23 * GIB, 32768), (40 * GIB, 32768), (47 * GIB, 262144)],
)
def test_default_context_follows_vram_tiers(vram: int, num_ctx: int) -> None:
    assert vram_tier_num_ctx(vram) == num_ctx


def test_every_default_records_its_rule() -> None:
    rules = decide_defaults(facts()).rules
    assert set(rules) == {
        "max_loaded_models",
        "num_parallel",
        "memory_budget",
        "num_threads",
        "num_ctx",
    }


def test_settings_take_platform_defaults_only_where_automatic() -> None:
    defaults = decide_defaults(facts())
    settings = Settings.for_tests(num_parallel=2).with_platform_defaults(defaults)
    assert settings.num_parallel == 2
    assert settings.max_loaded_models == 3
    assert settings.num_threads == 4
    assert settings.memory_budget == defaults.memory_budget
    assert settings.default_num_ctx == 4096
