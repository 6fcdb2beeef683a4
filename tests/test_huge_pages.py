"""A model loaded automatically is read into memory in 2 MiB pages (issue 9): the decode's stream
over every weight no longer walks 4 KiB page tables. Real llama.cpp loads on this kernel; the
huge-page checks skip, saying why, where the kernel offers no transparent huge pages."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio
from helpers import add_model, running_appliance

from engine import huge_pages
from engine.batch import BatchEngine, SequenceRequest
from engine.model import Model
from engine.sampling import SamplingParams

MIB = 1 << 20

needs_thp = pytest.mark.skipif(
    not huge_pages.available(),
    reason=f"the kernel offers no transparent huge pages (mode {huge_pages.thp_mode()!r})",
)


@pytest.fixture
def sizable_gguf(tiny_gguf_factory: Callable[..., Path]) -> Path:
    """A tiny llama with ~100 MB of F32 weights, loaded (as the server loads) in a worker thread:
    that thread's malloc arena cannot hold a block over 64 MiB, so the buffer is a new mapping. (A
    smaller model may reuse freed heap memory that a load cannot advise; it gains little.)"""
    return tiny_gguf_factory(n_embd=768, n_ff=3072, n_head=8, n_head_kv=4, n_layer=3)


async def load(path: Path, **kwargs: object) -> Model:
    return await trio.to_thread.run_sync(lambda: Model.load(path, **kwargs))  # type: ignore[arg-type]


def test_anonymous_ranges_are_the_private_writable_unnamed_mappings():
    maps = "\n".join(
        [
            "55a000000000-55a000200000 rw-p 00000000 00:00 0                  [heap]",
            "7f0000000000-7f0000800000 rw-p 00000000 00:00 0 ",
            "7f0000800000-7f0000a00000 r--s 00639000 fe:00 16039954  /models/blob.gguf",
            "7f0000a00000-7f0000c00000 ---p 00000000 00:00 0 ",
            "7f0001000000-7f0001400000 rw-p 00000000 00:00 0",
        ]
    )
    assert huge_pages.anonymous_ranges(maps) == [
        (0x7F0000000000, 0x7F0000800000),
        (0x7F0001000000, 0x7F0001400000),
    ]


def test_new_ranges_leave_out_what_was_mapped_before_even_when_merged_with_it():
    before = [(100, 200), (500, 600)]
    after = [(100, 300), (400, 700), (800, 900)]
    assert huge_pages.new_ranges(before, after) == [(200, 300), (400, 500), (600, 700), (800, 900)]


def test_whole_pages_are_the_2_mib_aligned_part_of_a_range():
    page = huge_pages.PAGE
    assert huge_pages.whole_pages(page + 1, 4 * page - 1) == (2 * page, 3 * page)
    assert huge_pages.whole_pages(page + 1, 2 * page + 5) is None


def test_thp_mode_is_the_bracketed_word(tmp_path: Path):
    enabled = tmp_path / "enabled"
    enabled.write_text("always [madvise] never\n")
    assert huge_pages.thp_mode(enabled) == "madvise"
    assert huge_pages.thp_mode(tmp_path / "absent") == ""


@needs_thp
async def test_an_automatic_load_reads_the_weights_into_huge_pages(sizable_gguf: Path):
    with await load(sizable_gguf) as model:
        assert model.load_mode == "read"
        assert model.huge_bytes >= 64 * MIB


async def test_a_load_asked_to_map_maps_and_gets_no_huge_pages(sizable_gguf: Path):
    with await load(sizable_gguf, use_mmap=True) as model:
        assert model.load_mode == "mmap"
        assert model.huge_bytes == 0


def _greedy(model: Model, n: int = 24) -> list[int]:
    with BatchEngine(model, n_seq=1, n_ctx=128, n_threads=1) as engine:
        engine.admit(0, SequenceRequest(model.tokenize("hello"), SamplingParams(temperature=0), n))
        while engine.has_work():
            for chunk in engine.step():
                if chunk.done:
                    return chunk.tokens or []
    raise AssertionError("no done chunk")


async def test_a_model_read_into_huge_pages_answers_as_the_mapped_one(sizable_gguf: Path):
    with await load(sizable_gguf, use_mmap=True) as mapped:
        expected = _greedy(mapped)
    with await load(sizable_gguf) as read:
        assert _greedy(read) == expected
    assert len(expected) == 24


@needs_thp
async def test_the_server_reads_a_model_into_huge_pages_unless_a_request_asks_for_mmap(
    tmp_path: Path, sizable_gguf: Path
):
    models = tmp_path / "models"
    add_model(models, "sizable", sizable_gguf)
    with trio.fail_after(120):
        async with running_appliance(models) as server, server.client() as client:
            modes = []
            for options in ({}, {"use_mmap": True}):
                body = {
                    "model": "sizable",
                    "prompt": "hi",
                    "options": {"num_predict": 1, **options},
                }
                assert (await client.post("/api/generate", json=body)).status_code == 200
                (runner,) = server.appliance.services.scheduler.runners
                modes.append((runner.backend.model.load_mode, runner.backend.model.huge_bytes > 0))
    assert modes == [("read", True), ("mmap", False)]


async def test_an_unreadable_proc_leaves_the_load_in_small_pages(
    sizable_gguf: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """Where /proc/self/maps cannot be read (a sandbox), the model still loads, unadvised."""
    monkeypatch.setattr(huge_pages, "available", lambda: True)
    monkeypatch.setattr(huge_pages, "MAPS", tmp_path / "no-maps")
    monkeypatch.setattr(huge_pages, "SMAPS", tmp_path / "no-smaps")
    with await load(sizable_gguf) as model:
        assert (model.load_mode, model.huge_bytes) == ("read", 0)
        assert len(_greedy(model, 4)) == 4


@needs_thp
async def test_a_client_that_hangs_up_while_the_weights_are_read_leaves_a_usable_model(
    tmp_path: Path, sizable_gguf: Path
):
    """The read is not cut short by the client leaving: the load finishes, in huge pages, and the
    next request is served by that runner without loading again."""
    models = tmp_path / "models"
    add_model(models, "sizable", sizable_gguf)
    body = {"model": "sizable", "prompt": "hi", "options": {"num_predict": 1, "temperature": 0}}
    with trio.fail_after(120):
        async with running_appliance(models) as server, server.client() as client:
            scheduler = server.appliance.services.scheduler
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(client.post, "/api/generate", json=body))
                while not scheduler.runners:  # the load has begun
                    await trio.sleep(0.001)
                (runner,) = scheduler.runners
                state_at_hang_up = runner.state
                nursery.cancel_scope.cancel()  # the client hangs up mid-load
            r = await client.post("/api/generate", json=body)
            assert r.status_code == 200
            assert scheduler.runners == [runner]
            assert state_at_hang_up == "loading"
            assert (runner.backend.model.load_mode, runner.backend.model.huge_bytes > 0) == (
                "read",
                True,
            )
