"""Parity features on the reference model (gemma3:270m): the template /api/show reports, and
logprobs and context shift on a real sliding-window model. Marked `reference` (a 253 MB model).
"""

from __future__ import annotations

import ollama
import pytest
import trio

pytestmark = pytest.mark.reference
LIMIT = 600


async def test_show_reports_the_builtin_gemma3_template_it_renders_with(gemma):
    client = ollama.AsyncClient(host=gemma.url)
    with trio.fail_after(LIMIT):
        shown = await client.show("gemma3:270m")
    assert "<start_of_turn>" in (shown.template or "")
    assert shown.modelinfo and shown.modified_at and "completion" in (shown.capabilities or [])


async def test_gemma_streams_logprobs_and_shifts_past_a_small_context(gemma):
    body = {
        "model": "gemma3:270m",
        "prompt": "Tell me a long story.",
        "stream": False,
        "logprobs": True,
        "top_logprobs": 2,
        "options": {"temperature": 0, "num_ctx": 32, "num_predict": 40},
    }
    with trio.fail_after(LIMIT):
        async with gemma.client(timeout=LIMIT) as client:
            r = await client.post("/api/generate", json=body)
    answer = r.json()
    assert r.status_code == 200, answer
    if answer["done_reason"] == "stop":  # the model ended its story on its own: nothing to shift
        pytest.skip("the model stopped before the context edge")
    assert answer["done_reason"] == "length" and answer["eval_count"] == 40
    assert len(answer["logprobs"]) == 40
    assert all(len(e["top_logprobs"]) == 2 for e in answer["logprobs"])
