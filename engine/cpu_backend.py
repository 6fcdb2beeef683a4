"""Choose and load llama.cpp's CPU code: the best variant this CPU really runs.

llama.cpp built with GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS ships its CPU backend as one library
per x86-64 level (`libggml-cpu-x64.so` ... `libggml-cpu-sapphirerapids.so`) and loads none until
asked; llama-cpp-python 0.3.36 never asks (no `ggml_backend_load_all`, llama-cpp-python#2069).
ggml's own choice scores each variant by cpuid alone, and some CPUs and VMs list features they
cannot run (Intel Xeon VMs listing AMX whose `ldtilecfg` faults). So a variant is used only when

- cpuid lists its features (ggml's own `ggml_backend_score`, asked in this process, so that the
  CPU an emulator presents counts);
- the kernel grants the state it needs (AMX: `arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`);
- a short-lived child process survived loading it and running real quantised matrix products
  through it (every buffer type it offers, the AMX and repacked ones included, one row and a
  batch), with the right result.

The probe verdicts are cached per (CPU model and flags, variant library contents), so later starts
do not probe. A setting (`cpu_variant`) forces a variant. A llama.cpp built with its CPU code inside
(no GGML_BACKEND_DL) needs none of this and is reported as "built-in".
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
import importlib.util
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROBE_ENV = "_LLM_APPLIANCE_CPU_PROBE"  # in the probe child: libggml's folder; probe, not the CLI
PROBE_TIMEOUT_S = 120.0  # whole probe run; slow only under an emulator
CACHE_VERSION = 1
PREFIX = "libggml-cpu-"

# The x86 variants GGML_CPU_ALL_VARIANTS builds (ggml/src/CMakeLists.txt) and what each needs.
VARIANT_FEATURES: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": ("sse42",),
    "sandybridge": ("sse42", "avx"),
    "ivybridge": ("sse42", "avx", "f16c"),
    "piledriver": ("sse42", "avx", "f16c", "fma"),
    "haswell": ("sse42", "avx", "f16c", "fma", "avx2", "bmi2"),
    "skylakex": ("avx2", "avx512"),
    "cannonlake": ("avx2", "avx512", "avx512_vbmi"),
    "cascadelake": ("avx2", "avx512", "avx512_vnni"),
    "icelake": ("avx2", "avx512", "avx512_vbmi", "avx512_vnni"),
    "cooperlake": ("avx2", "avx512", "avx512_vnni", "avx512_bf16"),
    "zen4": ("avx2", "avx512", "avx512_vbmi", "avx512_vnni", "avx512_bf16"),
    "alderlake": ("avx2", "fma", "bmi2", "avx_vnni"),
    "sapphirerapids": ("avx512", "avx512_vbmi", "avx512_vnni", "avx512_bf16", "amx"),
}
AMX_VARIANTS = frozenset({"sapphirerapids"})
# The /proc/cpuinfo flags behind each feature: the kernel drops a flag whose register state it
# does not enable (XSAVE), which ggml's cpuid check does not look at ("does not check for OS
# support", ggml-cpu/arch/x86/cpu-feats.cpp).
KERNEL_FLAGS: dict[str, tuple[str, ...]] = {
    "sse42": ("sse4_2",),
    "avx": ("avx",),
    "f16c": ("f16c",),
    "fma": ("fma",),
    "avx2": ("avx2",),
    "bmi2": ("bmi2",),
    "avx_vnni": ("avx_vnni",),
    "avx512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "avx512_vbmi": ("avx512vbmi",),
    "avx512_vnni": ("avx512_vnni",),
    "avx512_bf16": ("avx512_bf16",),
    "amx": ("amx_tile", "amx_int8"),
}
AUTO = "auto"

# ggml enums (ggml.h of the vendored llama.cpp)
GGML_TYPE_F32, GGML_TYPE_Q4_0, GGML_TYPE_Q8_0, GGML_TYPE_Q4_K = 0, 2, 8, 12
PROBE_TYPES = {"q4_0": GGML_TYPE_Q4_0, "q8_0": GGML_TYPE_Q8_0, "q4_k": GGML_TYPE_Q4_K}
PROBE_K, PROBE_N, PROBE_M = 256, 64, 32  # K a multiple of 256 (K-quants), N of 32 (AMX tiles)


class CpuBackendError(RuntimeError):
    """The CPU code could not be loaded; the message says which library and why."""


@dataclass(frozen=True)
class Choice:
    """The variant in use (None: the CPU code is built in) and why, for the log and `doctor`."""

    variant: str | None
    path: str | None
    reason: str
    verdicts: dict[str, str] = field(default_factory=dict)  # variant -> "runs" or why not
    forced: bool = False

    def describe(self) -> str:
        """One line: `haswell: avx2 fma f16c bmi2 run here; rejected: skylakex: ...`."""
        if self.variant is None:
            return self.reason
        rejected = [
            f"{name}: {why}"
            for name, why in self.verdicts.items()
            if why != "runs" and not why.startswith(("cpuid lacks", "not probed", "not listed"))
        ]
        lacking = [
            name
            for name, why in self.verdicts.items()
            if why.startswith(("cpuid lacks", "not listed"))
        ]
        text = f"{self.variant}: {self.reason}"
        if rejected:
            text += "; rejected " + "; ".join(rejected)
        if lacking:
            text += "; not for this CPU: " + ", ".join(lacking)
        return text

    def as_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


# --- where the libraries are --------------------------------------------------------------------


def package_dir() -> Path:
    """llama_cpp's package folder (in the PyInstaller bundle: `<bundle>/llama_cpp`)."""
    if getattr(sys, "frozen", False):
        return Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent)) / "llama_cpp"
    spec = importlib.util.find_spec("llama_cpp")  # without importing it (numpy, jinja2...)
    if spec is None or spec.origin is None:
        raise CpuBackendError("llama_cpp is not installed")
    return Path(spec.origin).parent


def lib_dir() -> Path:
    return package_dir() / "lib"


def variant_dirs() -> list[Path]:
    """Where the variant libraries are: pip installs them in site-packages/bin/ (CMake's
    RUNTIME destination), the bundle beside libllama."""
    pkg = package_dir()
    return [pkg / "lib", pkg.parent / "bin"]


def find_variants() -> dict[str, Path]:
    """Every `libggml-cpu-<name>.so` found, by name, first folder wins."""
    found: dict[str, Path] = {}
    for folder in variant_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"{PREFIX}*.so")):
            name = path.name[len(PREFIX) : -len(".so")]
            found.setdefault(name, path)
    return found


def has_builtin_cpu() -> bool:
    """A llama.cpp built without GGML_BACKEND_DL links its CPU backend in (libggml-cpu.so)."""
    return any((lib_dir() / name).exists() for name in ("libggml-cpu.so", "libggml-cpu.so.0"))


def rank(name: str) -> int:
    """ggml's score for a variant on a CPU that has all its features (ties: the known order)."""
    bits = {
        "fma": 1,
        "f16c": 1 << 1,
        "sse42": 1 << 2,
        "bmi2": 1 << 3,
        "avx": 1 << 4,
        "avx2": 1 << 5,
        "avx_vnni": 1 << 6,
        "avx512": 1 << 7,
        "avx512_vbmi": 1 << 8,
        "avx512_bf16": 1 << 9,
        "avx512_vnni": 1 << 10,
        "amx": 1 << 11,
    }
    return 1 + sum(bits.get(feature, 0) for feature in VARIANT_FEATURES.get(name, ()))


# --- the kernel's grant -------------------------------------------------------------------------

ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
SYS_ARCH_PRCTL = 158  # x86-64


def amx_granted() -> tuple[bool, str]:
    """Ask the kernel for AMX tile data state, as ggml does before its first AMX instruction."""
    if os.uname().machine != "x86_64":
        return False, "not x86-64"
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.syscall(
        ctypes.c_long(SYS_ARCH_PRCTL),
        ctypes.c_long(ARCH_REQ_XCOMP_PERM),
        ctypes.c_ulong(XFEATURE_XTILEDATA),
    )
    if result != 0:
        code = ctypes.get_errno()
        return False, f"arch_prctl(ARCH_REQ_XCOMP_PERM): {errno.errorcode.get(code, code)}"
    return True, "granted"


# --- the libraries through ctypes ----------------------------------------------------------------


class _GgmlInitParams(ctypes.Structure):
    _fields_ = [
        ("mem_size", ctypes.c_size_t),
        ("mem_buffer", ctypes.c_void_p),
        ("no_alloc", ctypes.c_bool),
    ]


def _fn(lib: ctypes.CDLL, name: str, restype: object, *argtypes: object) -> ctypes._CFuncPtr:
    func = getattr(lib, name)
    func.restype = restype
    func.argtypes = list(argtypes)
    return func


class Ggml:
    """The few ggml entry points we call, from libggml-base.so.0 and libggml.so.0.

    In the server these are the very libraries libllama links against (loaded by soname once
    llama_cpp is imported); a second copy (`libggml.so`, a separate file in the wheel) would hold a
    second, empty backend registry that llama.cpp never sees.
    """

    def __init__(self, base: ctypes.CDLL, ggml: ctypes.CDLL) -> None:
        vp, sz, i64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64
        self.load = _fn(ggml, "ggml_backend_load", vp, ctypes.c_char_p)
        self.unload = _fn(ggml, "ggml_backend_unload", None, vp)
        self.reg_name = _fn(ggml, "ggml_backend_reg_name", ctypes.c_char_p, vp)
        self.reg_count = _fn(ggml, "ggml_backend_reg_count", sz)
        self.dev_count = _fn(ggml, "ggml_backend_dev_count", sz)
        self.reg_dev_get = _fn(ggml, "ggml_backend_reg_dev_get", vp, vp, sz)
        self.reg_proc = _fn(ggml, "ggml_backend_reg_get_proc_address", vp, vp, ctypes.c_char_p)
        self.dev_init = _fn(ggml, "ggml_backend_dev_init", vp, vp, ctypes.c_char_p)
        self.dev_buft = _fn(ggml, "ggml_backend_dev_buffer_type", vp, vp)
        self.dev_supports_op = _fn(ggml, "ggml_backend_dev_supports_op", ctypes.c_bool, vp, vp)
        self.buft_name = _fn(ggml, "ggml_backend_buft_name", ctypes.c_char_p, vp)
        self.alloc_ctx = _fn(ggml, "ggml_backend_alloc_ctx_tensors_from_buft", vp, vp, vp)
        self.buffer_free = _fn(ggml, "ggml_backend_buffer_free", None, vp)
        self.tensor_set = _fn(ggml, "ggml_backend_tensor_set", None, vp, vp, sz, sz)
        self.tensor_get = _fn(ggml, "ggml_backend_tensor_get", None, vp, vp, sz, sz)
        self.compute = _fn(ggml, "ggml_backend_graph_compute", ctypes.c_int, vp, vp)
        self.backend_free = _fn(ggml, "ggml_backend_free", None, vp)
        self.init = _fn(base, "ggml_init", vp, _GgmlInitParams)
        self.free = _fn(base, "ggml_free", None, vp)
        self.tensor_overhead = _fn(base, "ggml_tensor_overhead", sz)
        self.graph_overhead = _fn(base, "ggml_graph_overhead", sz)
        self.new_tensor_2d = _fn(base, "ggml_new_tensor_2d", vp, vp, ctypes.c_int, i64, i64)
        self.mul_mat = _fn(base, "ggml_mul_mat", vp, vp, vp, vp)
        self.new_graph = _fn(base, "ggml_new_graph", vp, vp)
        self.build_forward = _fn(base, "ggml_build_forward_expand", None, vp, vp)
        self.nbytes = _fn(base, "ggml_nbytes", sz, vp)
        self.quantize = _fn(
            base, "ggml_quantize_chunk", sz, ctypes.c_int, vp, vp, i64, i64, i64, vp
        )

    @classmethod
    def open(cls, *, in_process_llama: bool, folder: Path | None = None) -> Ggml:
        """`in_process_llama`: take the copies libllama already loaded (import llama_cpp first)."""
        mode = ctypes.RTLD_GLOBAL
        folder = folder or lib_dir()
        libs = []
        for soname in ("libggml-base.so.0", "libggml.so.0"):
            target = soname if in_process_llama else str(folder / soname)
            try:
                libs.append(ctypes.CDLL(target, mode=mode))
            except OSError:
                libs.append(ctypes.CDLL(str(folder / soname), mode=mode))
        return cls(*libs)


def _variant_score(path: Path) -> int:
    """ggml's own cpuid check for one variant (0: a feature it needs is not listed), asked here.

    Loading the library runs no code built for its level: ggml itself loads every candidate to ask.
    Needs libggml-base.so.0 loaded globally first.
    """
    lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL | os.RTLD_NOW)
    try:
        score = _fn(lib, "ggml_backend_score", ctypes.c_int)
        return int(score())
    finally:
        import _ctypes

        _ctypes.dlclose(lib._handle)


# --- the probe (runs in a child process) ---------------------------------------------------------


def _matmul_probe(g: Ggml, reg: int, ran: list[str]) -> str | None:
    """Quantised matrix products through one loaded variant; None when all are right.

    `ran` collects what ran ("q4_0 x 32 rows in AMX"), for the record.
    """
    dev = g.reg_dev_get(reg, 0)
    if not dev:
        return "the variant has no device"
    backend = g.dev_init(dev, None)
    if not backend:
        return "the variant's device did not start"
    bufts = [g.dev_buft(dev)]
    get_extra = g.reg_proc(reg, b"ggml_backend_dev_get_extra_bufts")
    if get_extra:
        extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(get_extra)(dev)
        i = 0
        while extra and extra[i]:
            bufts.append(extra[i])
            i += 1
    rng = random.Random(7)
    k, n = PROBE_K, PROBE_N
    weights = [rng.uniform(-1.0, 1.0) for _ in range(k * n)]
    try:
        for m in (1, PROBE_M):
            inputs = [rng.uniform(-1.0, 1.0) for _ in range(k * m)]
            want = [
                sum(weights[j * k + t] * inputs[i * k + t] for t in range(k))
                for i in range(m)
                for j in range(n)
            ]
            for qname, qtype in PROBE_TYPES.items():
                for buft in bufts:
                    where = f"{qname} x {m} rows in {g.buft_name(buft).decode()}"
                    _say({"step": where})  # the last one said is where a fault struck
                    pair = (buft, bufts[0])
                    got = _one_product(g, dev, backend, pair, qtype, weights, inputs, m)
                    if got is None:
                        continue  # this buffer type does not take this type: llama.cpp won't
                    ran.append(where)
                    if isinstance(got, str):
                        return f"{where}: {got}"
                    err = math.sqrt(sum((a - b) ** 2 for a, b in zip(got, want, strict=True)))
                    norm = math.sqrt(sum(b * b for b in want))
                    if not err <= 0.25 * norm:  # quantisation error is a few percent
                        return f"{where}: wrong result (relative error {err / norm:.2f})"
    finally:
        g.backend_free(backend)
    return None


def _one_product(
    g: Ggml,
    dev: int,
    backend: int,
    bufts: tuple[int, int],
    qtype: int,
    weights: list[float],
    inputs: list[float],
    m: int,
) -> list[float] | str | None:
    """weights (n rows of k) in `bufts[0]` times m input rows in the CPU buffer `bufts[1]`.

    None when the device would not run this product from that buffer type (an extra buffer type
    for other quantisations; llama.cpp asks the same question before it places a weight there).
    """
    k, n = PROBE_K, PROBE_N
    meta = g.tensor_overhead() * 8 + g.graph_overhead()
    wctx = g.init(_GgmlInitParams(meta, None, True))
    actx = g.init(_GgmlInitParams(meta, None, True))
    buffers = []
    try:
        w = g.new_tensor_2d(wctx, qtype, k, n)
        x = g.new_tensor_2d(actx, GGML_TYPE_F32, k, m)
        y = g.mul_mat(actx, w, x)
        graph = g.new_graph(actx)
        g.build_forward(graph, y)
        for ctx, buft in zip((wctx, actx), bufts, strict=True):
            buffer = g.alloc_ctx(ctx, buft)
            if not buffer:
                return "could not allocate"
            buffers.append(buffer)
        if not g.dev_supports_op(dev, y):
            return None
        src = (ctypes.c_float * (k * n))(*weights)
        packed = ctypes.create_string_buffer(g.nbytes(w))
        g.quantize(qtype, src, packed, 0, n, k, None)
        g.tensor_set(w, packed, 0, g.nbytes(w))
        xs = (ctypes.c_float * (k * m))(*inputs)
        g.tensor_set(x, xs, 0, ctypes.sizeof(xs))
        if g.compute(backend, graph) != 0:
            return "graph compute failed"
        out = (ctypes.c_float * (n * m))()
        g.tensor_get(y, out, 0, ctypes.sizeof(out))
        return list(out)
    finally:
        for buffer in buffers:
            g.buffer_free(buffer)
        g.free(wctx)
        g.free(actx)


def probe_main(args: Sequence[str]) -> int:
    """The child: for each variant, print its score and whether real products ran right.

    One JSON line per step, flushed, so that when a variant kills the process the parent knows
    which one: the last `begin` without an answer. `--any-cpu`: probe variants whose features
    cpuid does not list too (tests show that the probe catches what faults); `--first`: stop
    after the first that runs.
    """
    flags = {arg for arg in args if arg.startswith("--")}
    any_cpu, first = "--any-cpu" in flags, "--first" in flags
    g = Ggml.open(in_process_llama=False, folder=Path(os.environ[PROBE_ENV]))
    for path in (arg for arg in args if not arg.startswith("--")):
        name = _name(path)
        _say({"begin": name})
        # Loaded by hand rather than through ggml_backend_load, which refuses a variant whose
        # score is 0, and registered nowhere: this process only runs the products and exits.
        _say({"step": "loading the library"})
        lib = ctypes.CDLL(path, mode=os.RTLD_LOCAL | os.RTLD_NOW)
        _say({"step": "ggml_backend_score"})
        score = int(_fn(lib, "ggml_backend_score", ctypes.c_int)())
        if score <= 0 and not any_cpu:
            _say({"name": name, "score": 0, "verdict": "cpuid lacks its features"})
            continue
        if name in AMX_VARIANTS and not any_cpu:
            granted, why = amx_granted()
            if not granted:
                _say({"name": name, "score": score, "verdict": f"kernel refuses AMX: {why}"})
                continue
        _say({"step": "ggml_backend_init"})
        reg = _fn(lib, "ggml_backend_init", ctypes.c_void_p)()
        if not reg:
            _say({"name": name, "score": score, "verdict": "ggml_backend_init failed"})
            continue
        ran: list[str] = []
        problem = _matmul_probe(g, reg, ran)
        _say({"name": name, "score": score, "verdict": problem or "runs", "ran": ran})
        if first and not problem:
            break
    return 0


def _say(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _probe_command() -> list[str]:
    if getattr(sys, "frozen", False):
        return [sys.executable]  # packaging/entry.py runs probe_main when PROBE_ENV is set
    return [sys.executable, "-m", "engine.cpu_backend"]


def _name(path: Path | str) -> str:
    return Path(path).name[len(PREFIX) : -len(".so")]


def run_probes(
    paths: Sequence[Path],
    *,
    timeout: float = PROBE_TIMEOUT_S,
    any_cpu: bool = False,
    first: bool = False,
) -> dict[str, dict]:
    """Probe variants in child processes, in the order given. A child that dies is reported with
    its signal (and the step it was in), and the rest are probed in a fresh child.

    `first`: stop at the first variant that runs (the others stay out of the answer).
    `any_cpu`: also those whose features cpuid does not list.
    """
    results: dict[str, dict] = {}
    remaining = [str(path) for path in paths]
    env = _probe_env()
    flags = (["--any-cpu"] if any_cpu else []) + (["--first"] if first else [])
    while remaining:
        out, code, timed_out = _run_child([*_probe_command(), *flags, *remaining], env, timeout)
        started, step, answered = _read_records(out, results)
        if started is None:
            if not answered:  # the child failed before its first variant
                why = "probe could not start" + (f" (status {code})" if code is not None else "")
                for path in remaining:
                    results[_name(path)] = {"name": _name(path), "score": None, "verdict": why}
            break  # the child did all it was asked
        why = _how_it_ended(code, timed_out, timeout)
        if step:
            why += f" ({step})"
        results[started] = {"name": started, "score": None, "verdict": why}
        remaining = remaining[[_name(path) for path in remaining].index(started) + 1 :]
    return results


def _probe_env() -> dict[str, str]:
    """The environment a probe child runs in: PROBE_ENV names the libraries' folder, and from a
    source tree `engine` must be importable."""
    env = dict(os.environ, **{PROBE_ENV: str(lib_dir())})
    if not getattr(sys, "frozen", False):
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _run_child(
    argv: list[str], env: dict[str, str], timeout: float
) -> tuple[str, int | None, bool]:
    """Run one probe child: what it printed, its exit status (None when it timed out), and
    whether it timed out."""
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout or b""
        return (raw.decode(errors="replace") if isinstance(raw, bytes) else raw), None, True
    return proc.stdout.decode(errors="replace"), proc.returncode, False


def _read_records(out: str, results: dict[str, dict]) -> tuple[str | None, str | None, int]:
    """The child's verdicts into `results`; the variant it was probing when it stopped (None when
    it finished that one) with the step it was in, and how many verdicts it gave."""
    started = step = None
    answered = 0
    for line in out.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "begin" in record:
            started, step = record["begin"], None
        elif "step" in record:
            step = record["step"]
        elif "name" in record:
            results[record["name"]] = record
            started = None
            answered += 1
    return started, step, answered


def _how_it_ended(code: int | None, timed_out: bool, timeout: float) -> str:
    if timed_out:
        return f"probe timed out after {timeout:.0f} s"
    if code is not None and code < 0:
        return f"probe died with {signal.Signals(-code).name}"
    return f"probe exited with status {code}"


# --- the verdict cache ---------------------------------------------------------------------------


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-appliance" / "cpu-variants.json"


def cpu_identity() -> str:
    """The CPU model and flags the kernel reports (what a verdict depends on besides the code)."""
    model = flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    return f"{model}|{flags}|{os.uname().release}"


def kernel_flags() -> frozenset[str]:
    """The CPU flags the kernel lists (empty when /proc/cpuinfo cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def missing_kernel_flags(name: str, flags: frozenset[str]) -> list[str]:
    """What the kernel does not list of what a variant needs (nothing when flags are unknown)."""
    if not flags:
        return []
    needed = [f for feature in VARIANT_FEATURES.get(name, ()) for f in KERNEL_FLAGS[feature]]
    return [flag for flag in needed if flag not in flags]


def cache_key(variants: dict[str, Path]) -> str:
    digest = hashlib.sha256(f"{CACHE_VERSION}|{cpu_identity()}".encode())
    for name in sorted(variants):
        digest.update(name.encode())
        digest.update(hashlib.sha256(variants[name].read_bytes()).digest())
    return digest.hexdigest()


def _read_cache(key: str) -> dict[str, dict] | None:
    try:
        data = json.loads(cache_path().read_text())
        entry = data.get(key)
        return entry if isinstance(entry, dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def _write_cache(key: str, results: dict[str, dict]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({key: results}))  # one machine, one build: keep the last
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs a probe at every start


# --- choosing and loading -----------------------------------------------------------------------


def choose(forced: str | None = None, *, use_cache: bool = True) -> Choice:
    """The variant to load and why; probes (in child processes) what the cache does not know."""
    if has_builtin_cpu():
        return Choice(None, None, "built-in (llama.cpp built without GGML_BACKEND_DL)")
    variants = find_variants()
    if not variants:
        raise CpuBackendError(f"no {PREFIX}*.so found in {', '.join(map(str, variant_dirs()))}")
    if forced and forced != AUTO:
        if forced not in variants:
            raise CpuBackendError(
                f"cpu_variant {forced!r} is not in this build (have: {', '.join(sorted(variants))})"
            )
        return Choice(forced, str(variants[forced]), "forced by cpu_variant", forced=True)
    key = cache_key(variants)
    order = sorted(variants, key=rank, reverse=True)
    results = (_read_cache(key) if use_cache else None) or {}
    flags = kernel_flags()
    for name in order:
        missing = missing_kernel_flags(name, flags)
        if missing:  # never probed: the kernel does not enable what it needs
            results[name] = {"name": name, "verdict": f"not listed by the kernel: {missing[0]}"}
    if all(r.get("verdict", "").startswith("not listed") for r in results.values()):
        # Best first, stopping at the first that runs: one child, a second only after a fault.
        todo = [variants[n] for n in order if n not in results]
        results.update(run_probes(todo, first=True))
        _write_cache(key, results)
    # Asked again here, best first, until one says yes: under an emulator (qemu-user) the child
    # runs on the host CPU, while this process sees the CPU the emulator presents. Only libraries
    # a child loaded safely get here, and on real hardware the first one asked is the answer.
    Ggml.open(in_process_llama=_llama_loaded())  # libggml-base.so.0 for the variants' symbols
    verdicts: dict[str, str] = {}
    chosen = None
    for i, name in enumerate(order):
        if name not in results:  # not probed: a better one ran, until this process said no
            more = run_probes([variants[n] for n in order[i:] if n not in results], first=True)
            results.update(more)
            _write_cache(key, results)
        verdict = results.get(name, {}).get("verdict", "not probed")
        if verdict == "runs" and chosen is None:
            if _variant_score(variants[name]) > 0:
                chosen = name
            else:
                verdict = "cpuid lacks its features (as this process sees the CPU)"
        verdicts[name] = verdict
        if chosen is not None:
            break
    for name in order:
        verdicts.setdefault(name, results.get(name, {}).get("verdict", "not probed: lower"))
    if chosen is None:
        raise CpuBackendError(
            "no CPU variant runs here: " + "; ".join(f"{n}: {v}" for n, v in verdicts.items())
        )
    features = " ".join(VARIANT_FEATURES.get(chosen, ())) or "x86-64 baseline"
    reason = f"{features} run here, the best that does"
    return Choice(chosen, str(variants[chosen]), reason, verdicts)


def _llama_loaded() -> bool:
    return "llama_cpp.llama_cpp" in sys.modules


_lock = threading.Lock()
_loaded: Choice | None = None


def load(forced: str | None = None) -> Choice:
    """Choose and load the CPU variant into llama.cpp's backend registry, once per process.

    Later calls return the first choice, whatever they ask for: a process has one CPU backend.
    """
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        import llama_cpp  # noqa: F401  (libllama and the libggml it links against, loaded first)

        choice = choose(forced)
        if choice.path is not None:
            g = Ggml.open(in_process_llama=True)
            if not g.load(os.fsencode(choice.path)):
                raise CpuBackendError(f"ggml_backend_load({choice.path}) failed")
            if g.dev_count() == 0:
                raise CpuBackendError(f"{choice.path} registered no device")
        _loaded = choice
        return choice


def loaded() -> Choice | None:
    """The choice this process made, if it loaded one."""
    return _loaded


if __name__ == "__main__":
    if os.environ.get(PROBE_ENV):
        sys.exit(probe_main(sys.argv[1:]))
    print(json.dumps(choose(sys.argv[1] if len(sys.argv) > 1 else None).as_json(), indent=2))
