"""Options that size an allocation are bounded before anything is allocated (issue 8, item 2).

The server tests run the appliance as its own process inside a cgroup v1 memory limit of 2 GiB,
so a regression (llama.cpp handed a raw `num_batch` of 10^8 allocates about 1.2 GB/s) kills that
server, not the machine. They skip, saying why, where the memory cgroup is not writable.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio
from serverproc import clean_env, free_port, register_tiny_model, run_server, wait_until_answers

from appliance.errors import BadRequest
from appliance.options import Options, bounded_for_context, resolve_options
from appliance.serving.catalog import Catalog, SlotPolicy
from appliance.store.names import parse_model_name

REPO = Path(__file__).resolve().parents[1]
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
CGROUP_LIMIT = 2 * 1024**3

HOSTILE_OPTIONS = [
    {"num_batch": 100_000_000},
    {"num_ctx": 1_000_000_000},
    {"num_ctx": 4096, "num_batch": 2**62},
    {"num_thread": 1_000_000_000},
    {"num_gpu": 10**12},
    {"num_keep": 10**12},
    {"num_predict": 10**12},
    {"repeat_last_n": 10**12, "repeat_penalty": 1.1},
    {"top_k": 10**12},
]


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A fresh cgroup v1 memory group limited to 2 GiB (memory and swap), removed afterwards."""
    if not os.access(CGROUP_ROOT, os.W_OK):
        pytest.skip(f"{CGROUP_ROOT} is not a writable cgroup v1 memory hierarchy")
    group = CGROUP_ROOT / f"llm-appliance-test-{uuid.uuid4().hex[:12]}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(CGROUP_LIMIT))
        swap = group / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(CGROUP_LIMIT))
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup under {CGROUP_ROOT}: {exc}")
    try:
        yield group
    finally:
        group.rmdir()


def _in_cgroup(group: Path, *command: str) -> list[str]:
    """`command`, started by a shell that first moves itself into `group` (no unbounded gap)."""
    join = f'echo $$ > {group / "cgroup.procs"} && exec "$@"'
    return ["/bin/sh", "-c", join, "sh", *command]


@asynccontextmanager
async def serving_in_cgroup(group: Path, models: Path, tmp_path: Path) -> AsyncIterator[Any]:
    """`llm-appliance serve` over `models` in `group`, one slot, a 1.5 GiB budget, answering."""
    env = clean_env(
        free_port(),
        models,
        {
            "PYTHONPATH": str(REPO),
            "LLM_APPLIANCE_IMPORT_REFERENCE": "0",
            "LLM_APPLIANCE_MEMORY_BUDGET": "1536MiB",
            "OLLAMA_NUM_PARALLEL": "1",
        },
    )
    command = _in_cgroup(group, sys.executable, "-m", "appliance", "serve")
    async with run_server(command, env, tmp_path, tmp_path / "server.log") as server:
        await wait_until_answers(server)
        yield server


async def test_hostile_load_options_are_bounded_and_the_server_keeps_serving(
    tmp_path: Path, memory_cgroup: Path
) -> None:
    models = tmp_path / "models"
    register_tiny_model(models)
    statuses: list[tuple[str, dict[str, int], int]] = []
    with trio.fail_after(600):
        async with serving_in_cgroup(memory_cgroup, models, tmp_path) as server:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as client:
                for options in HOSTILE_OPTIONS:
                    for path, body in (
                        ("/api/generate", {"prompt": "hello"}),
                        ("/api/chat", {"messages": [{"role": "user", "content": "hello"}]}),
                        ("/api/embed", {"input": "hello"}),
                    ):
                        r = await client.post(
                            path,
                            json={
                                "model": "tiny",
                                "stream": False,
                                "options": {"num_predict": 4, **options},
                                **body,
                            },
                        )
                        statuses.append((path, options, r.status_code))
                        assert server.process.returncode is None, server.log_tail()
                alive = await client.post(
                    "/api/generate",
                    json={"model": "tiny", "prompt": "hi", "stream": False, "options": {}},
                )
            assert alive.status_code == 200, server.log_tail()
    assert all(status < 500 for _, _, status in statuses), statuses


@pytest.mark.reference
async def test_the_reference_model_refuses_a_batch_that_cannot_fit_and_keeps_serving(
    tmp_path: Path, memory_cgroup: Path, reference_gguf: Path
) -> None:
    """gemma3 270M with `num_batch` 10^8: bounded to num_ctx (32768), its attention masks alone
    would take 4 GiB, so the load is refused with a 400 instead of killing the server."""
    from helpers import add_model

    models = tmp_path / "models"
    add_model(models, "gemma", reference_gguf, family="gemma3")
    with trio.fail_after(600):
        async with serving_in_cgroup(memory_cgroup, models, tmp_path) as server:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as client:
                hostile = await client.post(
                    "/api/generate",
                    json={
                        "model": "gemma",
                        "prompt": "hello",
                        "stream": False,
                        "options": {"num_predict": 2, "num_ctx": 10**9, "num_batch": 10**8},
                    },
                )
                alive = await client.post(
                    "/api/generate",
                    json={
                        "model": "gemma",
                        "prompt": "hello",
                        "stream": False,
                        "options": {"num_predict": 2},
                    },
                )
            assert server.process.returncode is None, server.log_tail()
    assert hostile.status_code == 400, hostile.text
    assert "lower num_ctx or num_batch" in hostile.json()["error"]
    assert alive.status_code == 200, alive.text


# ---- the rules, without a server ----------------------------------------------------------------


def _catalog(budget: int = 0, num_parallel: int = 1) -> Catalog:
    return Catalog(
        SlotPolicy(num_parallel=num_parallel, default_num_ctx=2048, memory_budget=budget)
    )


def _local(path: Path) -> Any:
    """What `Catalog.plan` reads of a stored model."""
    return SimpleNamespace(name=parse_model_name("tiny"), model_path=path, adapters=[])


async def test_num_batch_is_at_most_num_ctx_as_in_ollama(tiny_gguf: Path) -> None:
    options = resolve_options({}, {"num_ctx": 256, "num_batch": 100_000_000}, default_num_ctx=2048)
    spec = await _catalog().plan(_local(tiny_gguf), options)
    assert (spec.num_ctx, spec.num_batch) == (256, 256)


async def test_the_memory_estimate_counts_num_batch(tiny_gguf: Path) -> None:
    catalog = _catalog()
    small = resolve_options({}, {"num_ctx": 512, "num_batch": 16}, default_num_ctx=2048)
    large = resolve_options({}, {"num_ctx": 512, "num_batch": 512}, default_num_ctx=2048)
    small_spec = await catalog.plan(_local(tiny_gguf), small)
    large_spec = await catalog.plan(_local(tiny_gguf), large)
    assert large_spec.memory_bytes > small_spec.memory_bytes


async def test_a_requested_context_larger_than_the_budget_is_a_400(
    tiny_gguf_factory, tmp_path: Path
) -> None:
    path = tiny_gguf_factory(n_ctx_train=1 << 20)
    catalog = _catalog(budget=path.stat().st_size + 1024 * 1024)
    options = resolve_options({}, {"num_ctx": 1 << 20}, default_num_ctx=2048)
    with pytest.raises(BadRequest, match="lower num_ctx or num_batch"):
        await catalog.plan(_local(path), options)


async def test_num_gpu_beyond_the_layers_means_every_layer(tiny_gguf: Path) -> None:
    options = resolve_options({}, {"num_gpu": 10**12}, default_num_ctx=2048)
    spec = await _catalog().plan(_local(tiny_gguf), options)
    assert spec.num_gpu == 3  # 2 layers + the output layer


def test_num_predict_is_capped_at_ten_contexts_as_in_ollama() -> None:
    bounded = bounded_for_context(Options(num_predict=10**12), num_ctx=512)
    assert bounded.num_predict == 5120


def test_open_ended_num_predict_stays_open_ended() -> None:
    assert bounded_for_context(Options(num_predict=-1), num_ctx=512).num_predict == -1


def test_repeat_last_n_and_num_keep_are_at_most_the_context() -> None:
    bounded = bounded_for_context(Options(repeat_last_n=10**12, num_keep=10**12), num_ctx=512)
    assert (bounded.repeat_last_n, bounded.num_keep) == (512, 512)


def test_a_million_unknown_options_are_logged_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    options = {f"bogus{i}": i for i in range(1_000_000)}
    with caplog.at_level("WARNING", logger="appliance.options"):
        resolve_options({}, options, default_num_ctx=2048)
    lines = [r for r in caplog.records if "invalid option provided" in r.getMessage()]
    assert len(lines) == 1
    assert "999995 more" in lines[0].getMessage()


def test_too_many_or_too_long_stop_sequences_are_a_400() -> None:
    with pytest.raises(BadRequest, match="too many stop sequences"):
        resolve_options({}, {"stop": [str(i) for i in range(10_000)]}, default_num_ctx=2048)
    with pytest.raises(BadRequest, match="stop sequence too long"):
        resolve_options({}, {"stop": ["x" * 100_000]}, default_num_ctx=2048)


def test_repeated_stop_sequences_count_once() -> None:
    options = resolve_options({}, {"stop": ["zz"] * 2000 + ["y"]}, default_num_ctx=2048)
    assert options.stop == ("zz", "y")
