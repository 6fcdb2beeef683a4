"""Start-up time: from spawning `llm-appliance serve` to its first `200` on `GET /`.

The one-file binary unpacks itself under $TMPDIR before Python starts, so it is compared with the
one-directory build and with `python -m appliance` from the venv. The first start on an empty store
is reported apart from later starts (it may import the reference model into the store); the time
from SIGTERM to exit is reported too, with the exit code. Run `python -m bench.startup` for JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def time_one_start(
    command: Sequence[str],
    models_dir: Path,
    *,
    env_extra: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> dict[str, float | int]:
    """One start: seconds until `GET /` answers, then seconds from SIGTERM to exit, exit code."""
    port = _free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(models_dir.parent),
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(models_dir),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        **(env_extra or {}),
    }
    url = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    process = subprocess.Popen(
        list(command),
        env=env,
        cwd=models_dir.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited with {process.returncode} at start")
                if time.perf_counter() - started > timeout:
                    raise TimeoutError(f"{command[0]} did not answer within {timeout} s")
                try:
                    if client.get(url).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
        ready = time.perf_counter() - started
        stop_at = time.perf_counter()
        os.killpg(process.pid, signal.SIGTERM)
        code = process.wait(timeout=60)
        return {"ready_s": ready, "stop_s": time.perf_counter() - stop_at, "exit_code": code}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def measure_startup(
    command: Sequence[str],
    *,
    runs: int = 5,
    env_extra: Mapping[str, str] | None = None,
) -> dict[str, object]:
    """`runs` starts on one store: the first (empty store) apart, then median/min of the rest."""
    with tempfile.TemporaryDirectory(prefix="llm-appliance-startup-") as tmp:
        models = Path(tmp) / "models"
        results = [time_one_start(command, models, env_extra=env_extra) for _ in range(runs)]
    later = [r["ready_s"] for r in results[1:]] or [results[0]["ready_s"]]
    return {
        "command": " ".join(command),
        "runs": runs,
        "first_start_s": round(results[0]["ready_s"], 3),
        "ready_median_s": round(statistics.median(later), 3),
        "ready_min_s": round(min(later), 3),
        "stop_median_s": round(statistics.median(r["stop_s"] for r in results), 3),
        "exit_codes": sorted({int(r["exit_code"]) for r in results}),
    }


def default_commands() -> dict[str, list[str]]:
    """Every variant that exists here: the venv, the one-file and the one-directory builds."""
    commands = {"python -m appliance": [sys.executable, "-m", "appliance", "serve"]}
    onefile = REPO / "dist" / "llm-appliance"
    onedir = REPO / "dist" / "llm-appliance-onedir" / "llm-appliance"
    if onefile.is_file():
        commands["onefile"] = [str(onefile), "serve"]
    if onedir.is_file():
        commands["onedir"] = [str(onedir), "serve"]
    return commands


def run(runs: int = 5) -> list[dict[str, object]]:
    """What `make bench` calls: one result per available variant."""
    results = []
    for name, command in default_commands().items():
        extra = {"PYTHONPATH": str(REPO)} if name.startswith("python") else None
        try:
            result = measure_startup(command, runs=runs, env_extra=extra)
        except RuntimeError as exc:  # e.g. a dist/ build older than the code: say so, go on
            result = {"error": f"{exc} (rebuild it with make binary / make binary-onedir)"}
        result["variant"] = name
        results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--binary", help="time only this executable (`serve` is appended)")
    args = parser.parse_args(argv)
    if args.binary:
        results = [measure_startup([args.binary, "serve"], runs=args.runs)]
    else:
        results = run(args.runs)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
