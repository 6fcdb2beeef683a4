"""`llm-appliance serve` as a process, stopped the way systemd and a terminal stop it.

Conventions: the server runs as `python -m appliance serve` in its own process group on a free
127.0.0.1 port with a tiny model; signals go to the whole group (systemd's KillMode=control-group).
Every wait has a fail_after bound.
"""

from __future__ import annotations

import json
import signal
import sys

import httpx
import trio
from serverproc import clean_env, free_port, register_tiny_model, run_server, wait_until_answers

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _env(tmp_path):  # type: ignore[no-untyped-def]
    models = tmp_path / "models"
    register_tiny_model(models)
    return clean_env(
        free_port(), models, {"PYTHONPATH": str(REPO), "LLM_APPLIANCE_IMPORT_REFERENCE": "0"}
    )


async def test_two_sigterms_in_a_row_still_exit_0(tmp_path):
    env = _env(tmp_path)
    with trio.fail_after(120):
        async with run_server(
            [sys.executable, "-m", "appliance", "serve"], env, tmp_path, tmp_path / "log"
        ) as server:
            await wait_until_answers(server)
            server.signal_group(signal.SIGTERM)
            await trio.sleep(0.05)
            server.signal_group(signal.SIGTERM)
            code = await server.wait()
    assert code == 0, server.log_tail()


async def test_sigterm_during_a_stream_ends_it_cleanly_and_exits_0(tmp_path):
    env = _env(tmp_path)
    lines: list[dict] = []
    with trio.fail_after(120):
        async with run_server(
            [sys.executable, "-m", "appliance", "serve"], env, tmp_path, tmp_path / "log"
        ) as server:
            await wait_until_answers(server)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
                # A stream long enough to outlast the 10 s grace period: a tiny model at 1 token
                # per step would end sooner, so ask for its whole context, repeatedly.
                async with client.stream(
                    "POST",
                    "/api/generate",
                    json={
                        "model": "tiny",
                        "prompt": "x",
                        "options": {"num_predict": -1, "temperature": 1.5},
                    },
                ) as r:
                    async for line in r.aiter_lines():
                        if line:
                            lines.append(json.loads(line))
                        if len(lines) == 2:
                            server.signal_group(signal.SIGTERM)
            code = await server.wait()
    assert code == 0, server.log_tail()
    assert lines[-1].get("done") is True or lines[-1] == {"error": "server is shutting down"}
