"""The peers `make bench` builds: llama-server "built for this CPU" compiles what the CPU lists,
never AMX (listed by VMs whose first tile instruction faults), so the issue's comparison of the
variant chosen at run time against a build for the CPU can run on any box (issue 9)."""

from __future__ import annotations

from appliance.host.doctor import cpu_flags
from bench.peer import PEER_CMAKE_ARGS, native_cmake_args

SAPPHIRE_RAPIDS = (
    "sse4_2 avx avx2 bmi2 fma f16c avx_vnni avx512f avx512cd avx512vl avx512dq avx512bw "
    "avx512vbmi avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16"
)


def options(flags: str) -> dict[str, str]:
    args = native_cmake_args(frozenset(flags.split()))
    return dict(a[2:].split("=", 1) for a in args if a.startswith("-DGGML_"))


def test_a_build_for_an_amx_cpu_compiles_avx512_and_no_amx():
    built = options(SAPPHIRE_RAPIDS)
    assert built["GGML_AVX512"] == built["GGML_AVX512_BF16"] == built["GGML_AVX_VNNI"] == "ON"
    assert built["GGML_AMX_TILE"] == built["GGML_AMX_INT8"] == built["GGML_AMX_BF16"] == "OFF"


def test_a_build_for_an_avx2_cpu_leaves_out_every_avx512_option():
    built = options("sse4_2 avx avx2 bmi2 fma f16c avx512_vnni")
    assert built["GGML_AVX2"] == built["GGML_FMA"] == "ON"
    assert {built[o] for o in built if o.startswith("GGML_AVX512")} == {"OFF"}


def test_a_build_for_the_cpu_has_its_own_cpu_code_and_no_native_flags():
    built = options(SAPPHIRE_RAPIDS)
    assert (built["GGML_CPU"], built["GGML_BACKEND_DL"], built["GGML_NATIVE"]) == (
        "ON",
        "OFF",
        "OFF",
    )
    assert "-DGGML_CPU=OFF" in PEER_CMAKE_ARGS  # the same-code peer loads the appliance's variant


def test_cpu_flags_are_read_from_the_first_processor():
    text = "processor : 0\nflags : fpu avx2 fma\n\nprocessor : 1\nflags : fpu\n"
    assert cpu_flags(text) == frozenset({"fpu", "avx2", "fma"})
