"""Facts about the machine, and the defaults they imply.

An edge box, a WSL2 guest and a container see very different memory and CPU limits, and "auto"
settings must follow what the appliance can really use (cgroup limits, CPU affinity), not the
host's totals. Facts are plain data read from /proc and /sys under an injectable root, so tests
build a fake machine from real files; `decide_defaults` is a pure function of the facts and
records the rule behind each value for `llm-appliance doctor`.
"""

from __future__ import annotations

import ipaddress
import math
import os
import platform as _platform
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024**2
GIB = 1024**3

# num_parallel auto (Ollama's old rule was "4 if memory allows, else 1"): 4 slots when the
# available memory holds a typical model plus 4 KV caches of the default context. "Typical" is a
# 3B-parameter model at Q4_K_M (about 2 GiB, e.g. llama3.2:3b) whose f16 KV cache costs
# 28 layers x 8 KV heads x 128 dims x 2 (K and V) x 2 bytes = 112 KiB per token.
TYPICAL_MODEL_BYTES = 2 * GIB
TYPICAL_KV_BYTES_PER_TOKEN = 112 * 1024
AUTO_PARALLEL_SLOTS = 4
CPU_NUM_CTX = 4096

# Memory kept back from the budget for the OS, the server and page cache: max(512 MiB, 10%).
MIN_SAFETY_MARGIN = 512 * MIB
SAFETY_FRACTION = 0.10


@dataclass(frozen=True)
class GpuInfo:
    """One accelerator. `unreliable_free_memory`: its driver misreports free memory
    (ROCm on Windows, reference §4.9), so nothing may be planned on that number."""

    vendor: str
    name: str
    total: int
    free: int
    unreliable_free_memory: bool = False


@dataclass(frozen=True)
class PlatformFacts:
    """What the appliance can use on this machine (after cgroup and affinity limits)."""

    system: str
    is_wsl: bool
    total_memory: int
    available_memory: int
    cpu_count: int
    cpu_flags: frozenset[str] = frozenset()
    gpus: tuple[GpuInfo, ...] = ()
    physical_cores: int | None = None

    @property
    def total_vram(self) -> int:
        return sum(gpu.total for gpu in self.gpus)


@dataclass(frozen=True)
class PlatformDefaults:
    """Values for settings left automatic, each with the rule that chose it (`rules[name]`)."""

    max_loaded_models: int
    num_parallel: int
    memory_budget: int
    num_threads: int
    num_ctx: int
    rules: dict[str, str] = field(default_factory=dict, compare=False)


def vram_tier_num_ctx(total_vram: int) -> int:
    """Ollama's default num_ctx by total VRAM: 256k from 47 GiB, 32k from 23 GiB, else 4096."""
    if total_vram >= 47 * GIB:
        return 262144
    if total_vram >= 23 * GIB:
        return 32768
    return CPU_NUM_CTX


def decide_defaults(facts: PlatformFacts, *, context_length: int = 0) -> PlatformDefaults:
    """Defaults for automatic settings; `context_length` is OLLAMA_CONTEXT_LENGTH (0 = tier)."""
    rules: dict[str, str] = {}
    n_gpus = len(facts.gpus)

    if any(gpu.unreliable_free_memory for gpu in facts.gpus):
        max_loaded = 1
        rules["max_loaded_models"] = (
            "1: a GPU cannot report free memory reliably (Windows + Radeon/ROCm), "
            "so only one model is kept loaded"
        )
    else:
        max_loaded = 3 * max(n_gpus, 1)
        rules["max_loaded_models"] = f"{max_loaded} = 3 x max(GPUs, 1) with {n_gpus} GPU(s)"

    if context_length:
        num_ctx = context_length
        rules["num_ctx"] = f"{num_ctx} from OLLAMA_CONTEXT_LENGTH"
    else:
        num_ctx = vram_tier_num_ctx(facts.total_vram)
        rules["num_ctx"] = (
            f"{num_ctx}: VRAM tier for {format_gib(facts.total_vram)} total VRAM "
            "(4096 below 23 GiB, 32768 below 47 GiB, else 262144)"
        )

    need = TYPICAL_MODEL_BYTES + AUTO_PARALLEL_SLOTS * num_ctx * TYPICAL_KV_BYTES_PER_TOKEN
    num_parallel = AUTO_PARALLEL_SLOTS if facts.available_memory >= need else 1
    rules["num_parallel"] = (
        f"{num_parallel}: {format_gib(facts.available_memory)} available "
        f"{'>=' if num_parallel > 1 else '<'} {format_gib(need)} for a typical 3B Q4 model plus "
        f"{AUTO_PARALLEL_SLOTS} slots of {num_ctx} tokens"
    )

    margin = max(MIN_SAFETY_MARGIN, int(facts.total_memory * SAFETY_FRACTION))
    budget = max(0, facts.available_memory - margin)
    rules["memory_budget"] = (
        f"{format_gib(budget)} = {format_gib(facts.available_memory)} available - "
        f"{format_gib(margin)} margin (max(512 MiB, 10% of {format_gib(facts.total_memory)}))"
    )

    threads = max(1, facts.physical_cores or facts.cpu_count or 1)
    rules["num_threads"] = (
        f"{threads}: physical cores" if facts.physical_cores else f"{threads}: logical CPUs"
    )
    return PlatformDefaults(
        max_loaded_models=max_loaded,
        num_parallel=num_parallel,
        memory_budget=budget,
        num_threads=threads,
        num_ctx=num_ctx,
        rules=rules,
    )


def format_gib(n: int) -> str:
    """A byte count in GiB with one decimal, as the platform rules and `doctor` print memory."""
    return f"{n / GIB:.1f} GiB"


def user_name() -> str:
    """The user this process runs as (its uid where there is no name), for fixes that name it."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return str(os.geteuid())


# --- detection -----------------------------------------------------------------------------------


def detect_facts(
    root: Path = Path("/"),
    *,
    system: str | None = None,
    gpu_probe: Callable[[], list[GpuInfo]] | None = None,
) -> PlatformFacts:
    """Read the machine's facts from `root` (/proc, /sys); blocking, call it in a worker thread.

    `system` defaults to platform.system() for the real root and "Linux" for another one;
    `gpu_probe` defaults to nvidia-smi (real root only) plus AMD GPUs in sysfs.
    """
    real = root == Path("/")
    system = system or (_platform.system() if real else "Linux")
    total, available = _memory(root)
    logical, physical, flags = _cpus(root, real)
    if gpu_probe is None:
        gpus = _amd_gpus(root, system) + (_nvidia_gpus() if real else [])
    else:
        gpus = gpu_probe()
    return PlatformFacts(
        system=system,
        is_wsl=_is_wsl(root),
        total_memory=total,
        available_memory=available,
        cpu_count=logical,
        cpu_flags=flags,
        gpus=tuple(gpus),
        physical_cores=physical,
    )


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def _is_wsl(root: Path) -> bool:
    version = (_read(root / "proc/version") or "").lower()
    return "microsoft" in version or "wsl" in version


def _memory(root: Path) -> tuple[int, int]:
    """(total, available) bytes: /proc/meminfo, capped by a cgroup v2 or v1 memory limit."""
    info: dict[str, int] = {}
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        match = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if match:
            info[match.group(1)] = int(match.group(2)) * 1024
    total = info.get("MemTotal", 0)
    available = info.get("MemAvailable", info.get("MemFree", 0))
    for limit_file, usage_file in (
        ("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory.current"),
        (
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        limit = _read_int(root / limit_file)  # "max" (v2) reads as None
        if limit is None or (total and limit >= total):
            continue
        usage = _read_int(root / usage_file) or 0
        total = min(total, limit) if total else limit
        available = min(available, max(0, limit - usage))
        break
    return total, available


def _cpus(root: Path, real: bool) -> tuple[int, int | None, frozenset[str]]:
    """(logical CPUs usable, physical cores usable or None, CPU feature flags)."""
    text = _read(root / "proc/cpuinfo") or ""
    logical = 0
    cores: set[tuple[str, str]] = set()
    flags: frozenset[str] = frozenset()
    physical_id = core_id = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            logical += 1
            physical_id = core_id = None
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
        if physical_id is not None and core_id is not None:
            cores.add((physical_id, core_id))
    if real:
        logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
        logical = logical or os.cpu_count() or 1
    logical = max(1, logical)
    quota = _cpu_quota(root)
    if quota is not None:
        logical = max(1, min(logical, quota))
    physical = min(len(cores), logical) if cores else None
    return logical, physical, flags


def _cpu_quota(root: Path) -> int | None:
    """CPUs allowed by a cgroup v2 `cpu.max` quota, rounded up; None when unlimited."""
    text = (_read(root / "sys/fs/cgroup/cpu.max") or "").split()
    if len(text) == 2 and text[0].isdigit() and text[1].isdigit() and int(text[1]) > 0:
        return max(1, math.ceil(int(text[0]) / int(text[1])))
    return None


def _amd_gpus(root: Path, system: str) -> list[GpuInfo]:
    gpus = []
    drm = root / "sys/class/drm"
    for card in sorted(drm.glob("card[0-9]*")) if drm.is_dir() else []:
        device = card / "device"
        if (_read(device / "vendor") or "").strip() != "0x1002":
            continue
        total = _read_int(device / "mem_info_vram_total")
        if not total:
            continue
        used = _read_int(device / "mem_info_vram_used") or 0
        name = (_read(device / "product_name") or "").strip() or "AMD Radeon GPU"
        gpus.append(
            GpuInfo(
                "amd", name, total, max(0, total - used), unreliable_free_memory=system == "Windows"
            )
        )
    return gpus


def _nvidia_gpus() -> list[GpuInfo]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            gpus.append(GpuInfo("nvidia", parts[0], int(parts[1]) * MIB, int(parts[2]) * MIB))
    return gpus


def local_addresses(root: Path = Path("/")) -> frozenset[str]:
    """IP addresses assigned to this machine's interfaces (Go's net.InterfaceAddrs), as text.

    Read from /proc/net/fib_trie (IPv4 LOCAL routes) and /proc/net/if_inet6; blocking.
    """
    found: set[str] = set()
    last_ip = None
    for line in (_read(root / "proc/net/fib_trie") or "").splitlines():
        match = re.match(r"\s*[|+]-- (\d+\.\d+\.\d+\.\d+)$", line)
        if match:
            last_ip = match.group(1)
        elif "/32 host LOCAL" in line and last_ip:
            found.add(last_ip)
    for line in (_read(root / "proc/net/if_inet6") or "").splitlines():
        hexaddr = line.split()[0] if line.split() else ""
        if re.fullmatch(r"[0-9a-fA-F]{32}", hexaddr):
            found.add(str(ipaddress.IPv6Address(bytes.fromhex(hexaddr))))
    return frozenset(found)
