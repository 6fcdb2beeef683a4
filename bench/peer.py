"""The peer: llama.cpp's own llama-server, built once from the llama.cpp llama-cpp-python vendors.

The sources come from the installed llama-cpp-python's sdist (`pip download --no-binary :all:`),
so both sides run the same llama.cpp. It is built as the appliance's llama.cpp is (GGML_NATIVE=OFF,
GGML_BACKEND_DL) but without CPU code of its own (GGML_CPU=OFF): at run time it loads, through
`GGML_BACKEND_PATH`, the very CPU variant library the appliance chose, so both run the same code.
Only the `llama-server` target is built, into a folder keyed by (version, CMake arguments) under
~/.cache/llm-appliance/llama-server/, which later runs (and other clones) reuse.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from engine import OMP_VARS

PEER_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_NATIVE=OFF",
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_CPU=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
)


#: The ggml CMake option that compiles for each x86 feature, and the cpuinfo flags it needs. AMX
#: stays off: VMs list it and fault at its first tile instruction (hence never -march=native).
NATIVE_FEATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GGML_SSE42", ("sse4_2",)),
    ("GGML_AVX", ("avx",)),
    ("GGML_AVX2", ("avx2",)),
    ("GGML_BMI2", ("bmi2",)),
    ("GGML_FMA", ("fma",)),
    ("GGML_F16C", ("f16c",)),
    ("GGML_AVX_VNNI", ("avx_vnni",)),
    ("GGML_AVX512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
    ("GGML_AVX512_VBMI", ("avx512f", "avx512vbmi")),
    ("GGML_AVX512_VNNI", ("avx512f", "avx512_vnni")),
    ("GGML_AVX512_BF16", ("avx512f", "avx512_bf16")),
)


def this_cpu_flags() -> frozenset[str]:
    """The features this CPU lists, read as `doctor` reads them."""
    from appliance.host.doctor import cpu_flags

    return cpu_flags(Path("/proc/cpuinfo").read_text())


def native_cmake_args(flags: frozenset[str]) -> tuple[str, ...]:
    """A llama-server with CPU code of its own, compiled for the features this CPU lists (AMX
    excepted): the issue's "llama-server built for this CPU", against which the appliance's
    variant chosen at run time is measured (`--peer-native`)."""
    base = [a for a in PEER_CMAKE_ARGS if not a.startswith(("-DGGML_BACKEND_DL=", "-DGGML_CPU="))]
    features = [
        f"-D{option}={'ON' if all(flag in flags for flag in needs) else 'OFF'}"
        for option, needs in NATIVE_FEATURES
    ]
    amx = [f"-DGGML_AMX_{kind}=OFF" for kind in ("TILE", "INT8", "BF16")]
    return (*base, "-DGGML_BACKEND_DL=OFF", "-DGGML_CPU=ON", *features, *amx)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-appliance" / "llama-server"


def build_dir(version: str, cmake_args: tuple[str, ...] = PEER_CMAKE_ARGS) -> Path:
    key = hashlib.sha256(json.dumps([version, list(cmake_args)]).encode()).hexdigest()[:16]
    return cache_root() / f"{version}-{key}"


def _sdist_sources(version: str, into: Path) -> Path:
    """vendor/llama.cpp of llama-cpp-python's sdist, downloaded (pip's own client) and unpacked."""
    with tempfile.TemporaryDirectory(prefix="llama-sdist-") as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-binary",
                ":all:",
                "--no-deps",
                "--no-cache-dir",
                "-d",
                tmp,
                f"llama-cpp-python=={version}",
            ],
            check=True,
        )
        (archive,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    (top,) = into.glob("llama_cpp_python-*")
    return top / "vendor" / "llama.cpp"


def ensure_llama_server(cmake_args: tuple[str, ...] = PEER_CMAKE_ARGS) -> Path:
    """The llama-server binary for the installed llama-cpp-python, building it on first use."""
    version = importlib.metadata.version("llama-cpp-python")
    folder = build_dir(version, cmake_args)
    binary = folder / "build" / "bin" / "llama-server"
    if (folder / ".built").is_file() and binary.is_file():
        return binary
    print(f"building llama-server {version} into {folder} (once)", file=sys.stderr, flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    source = _sdist_sources(version, folder / "src")
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
    subprocess.run(
        ["cmake", "-S", str(source), "-B", str(folder / "build"), *cmake_args], check=True
    )
    subprocess.run(
        ["cmake", "--build", str(folder / "build"), "--target", "llama-server", "-j", jobs],
        check=True,
    )
    (folder / ".built").write_text(json.dumps({"version": version, "cmake_args": cmake_args}))
    return binary


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: llama-server with its weights in huge pages, as the appliance loads them (engine/huge_pages.py):
#: read into memory (`--load-mode none`), glibc's malloc advising its mappings MADV_HUGEPAGE.
HUGE_PAGE_ARGS = ("--load-mode", "none")
HUGE_PAGE_ENV = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def peer_env() -> dict[str, str]:
    """llama-server's environment: ours without the OpenMP defaults `engine` set for the
    appliance, so llama-server keeps libgomp's own, as its users run it (these were inherited
    before: the peer waited passively like the appliance). An operator's values stay, for both."""
    from engine import OMP_DEFAULTS

    return {k: v for k, v in os.environ.items() if k not in OMP_DEFAULTS}


def omp_settings(env: dict[str, str]) -> str:
    """The OpenMP wait settings in `env`, for the report."""
    named = [f"{k}={env[k]}" for k in OMP_VARS if k in env]
    return " ".join(named) or "libgomp defaults"


@contextmanager
def llama_server(
    binary: Path,
    model: Path,
    cpu_library: str | None,
    *,
    parallel: int,
    ctx_per_slot: int,
    threads: int,
    extra_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> Iterator[str]:
    """llama-server on a free loopback port with `parallel` slots of `ctx_per_slot`; yields its URL.

    `cpu_library`: the CPU variant to load (GGML_BACKEND_PATH); None for a build with its own.
    `extra_args` / `extra_env` go to its command line and environment (HUGE_PAGE_ARGS and ENV).
    """
    port = _free_port()
    env = {**peer_env(), **(extra_env or {})}
    if cpu_library:
        env["GGML_BACKEND_PATH"] = cpu_library
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
    command = [
        str(binary),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "-np",
        str(parallel),
        "-c",
        str(ctx_per_slot * parallel),
        "--no-webui",
        *extra_args,
    ]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited ({proc.returncode}); see {log.name}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise RuntimeError(f"llama-server did not start; see {log.name}")
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        if cpu_library and str(Path(cpu_library).resolve()) not in maps:
            raise RuntimeError(f"llama-server did not load {cpu_library}; see {log.name}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


if __name__ == "__main__":
    print(ensure_llama_server())
