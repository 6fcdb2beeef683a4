"""API parity with what clients of Ollama 0.33 read: logprobs and context shift.

The real server with tiny generated models, and the official `ollama` and `openai` clients (sync
clients in a worker thread). Seed 1 of the tiny model never emits EOS from "hello", so it runs
into the end of a small context; the default seed stops after a few tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
import trio
from helpers import add_model, ndjson, running_appliance

LIMIT = 120
GREEDY = {"temperature": 0}


@pytest.fixture
async def long_server(tmp_path: Path, tiny_gguf_factory):  # type: ignore[no-untyped-def]
    """The real appliance with a tiny model that keeps talking, as `long`, and `tiny`."""
    models = tmp_path / "models"
    add_model(models, "long", tiny_gguf_factory(seed=1))
    add_model(models, "tiny", tiny_gguf_factory())
    async with running_appliance(models, num_parallel=1) as running:
        yield running


def _check_entry(entry: dict[str, Any], top: int) -> None:
    assert isinstance(entry["token"], str) and entry["logprob"] <= 0
    assert all(0 <= b < 256 for b in entry["bytes"])
    alternatives = entry.get("top_logprobs", [])
    assert len(alternatives) == top
    values = [a["logprob"] for a in alternatives]
    assert values == sorted(values, reverse=True)
    if top:  # greedy: the chosen token is the most likely one
        assert alternatives[0]["token"] == entry["token"]
        assert alternatives[0]["logprob"] == pytest.approx(entry["logprob"])


# ---- logprobs ------------------------------------------------------------------------------------


async def test_streamed_generate_reports_one_logprob_per_generated_token(long_server):
    body = {
        "model": "long",
        "prompt": "hello",
        "logprobs": True,
        "top_logprobs": 3,
        "options": {**GREEDY, "num_predict": 12},
    }
    with trio.fail_after(LIMIT):
        async with long_server.client() as client:
            async with client.stream("POST", "/api/generate", json=body) as r:
                chunks = await ndjson(r)
    entries = [e for c in chunks for e in c.get("logprobs", [])]
    assert len(entries) == chunks[-1]["eval_count"] == 12
    for entry in entries:
        _check_entry(entry, 3)


async def test_non_streamed_generate_folds_logprobs_into_the_answer(long_server):
    body = {
        "model": "long",
        "prompt": "hello",
        "stream": False,
        "logprobs": True,
        "options": {**GREEDY, "num_predict": 6},
    }
    with trio.fail_after(LIMIT):
        async with long_server.client() as client:
            r = await client.post("/api/generate", json=body)
    answer = r.json()
    assert len(answer["logprobs"]) == answer["eval_count"] == 6
    for entry in answer["logprobs"]:
        _check_entry(entry, 0)
    assert "".join(e["token"] for e in answer["logprobs"]) == answer["response"]


async def test_generate_without_logprobs_sends_none(long_server):
    body = {"model": "long", "prompt": "hello", "stream": False, "options": {"num_predict": 4}}
    with trio.fail_after(LIMIT):
        async with long_server.client() as client:
            r = await client.post("/api/generate", json={**body, "top_logprobs": 5})
    assert "logprobs" not in r.json()


async def test_official_ollama_client_reads_chat_logprobs(long_server):
    def use_client() -> tuple[Any, list[Any]]:
        client = ollama.Client(host=long_server.url, trust_env=False)
        messages = [{"role": "user", "content": "hello"}]
        whole = client.chat(
            "long", messages, logprobs=True, top_logprobs=2, options={**GREEDY, "num_predict": 5}
        )
        parts = list(
            client.chat(
                "long", messages, stream=True, logprobs=True, options={**GREEDY, "num_predict": 5}
            )
        )
        return whole, parts

    with trio.fail_after(LIMIT):
        whole, parts = await trio.to_thread.run_sync(use_client)
    assert len(whole.logprobs) == whole.eval_count == 5
    assert all(len(e.top_logprobs) == 2 for e in whole.logprobs)
    assert sum(len(p.logprobs or []) for p in parts) == 5


async def test_official_openai_client_reads_chat_and_completion_logprobs(long_server):
    def use_client() -> dict[str, Any]:
        client = openai.OpenAI(
            base_url=long_server.url + "/v1", api_key="x", max_retries=0, timeout=LIMIT
        )
        messages = [{"role": "user", "content": "hello"}]
        with client:
            chat = client.chat.completions.create(
                model="long",
                messages=messages,
                max_tokens=4,
                temperature=0,
                logprobs=True,
                top_logprobs=2,
            )
            streamed = list(
                client.chat.completions.create(
                    model="long",
                    messages=messages,
                    max_tokens=4,
                    temperature=0,
                    logprobs=True,
                    stream=True,
                )
            )
            completion = client.completions.create(
                model="long", prompt="hello", max_tokens=4, temperature=0, logprobs=2
            )
            plain = client.chat.completions.create(model="long", messages=messages, max_tokens=2)
        return {"chat": chat, "streamed": streamed, "completion": completion, "plain": plain}

    with trio.fail_after(LIMIT):
        got = await trio.to_thread.run_sync(use_client)
    content = got["chat"].choices[0].logprobs.content
    assert len(content) == 4 and all(len(c.top_logprobs) == 2 for c in content)
    assert content[0].logprob <= 0 and content[0].bytes
    streamed = [e for c in got["streamed"] if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]  # fmt: skip
    assert len(streamed) == 4
    legacy = got["completion"].choices[0].logprobs
    assert len(legacy.tokens) == len(legacy.token_logprobs) == len(legacy.top_logprobs) == 4
    assert all(len(t) <= 2 for t in legacy.top_logprobs) and legacy.text_offset[0] == 0
    assert got["plain"].choices[0].logprobs is None


# ---- context shift -------------------------------------------------------------------------------


async def test_generation_shifts_the_context_and_goes_on_past_its_end(long_server):
    body = {
        "model": "long",
        "prompt": "hello",
        "stream": False,
        "options": {**GREEDY, "num_ctx": 64, "num_predict": 150},
    }
    with trio.fail_after(LIMIT):
        async with long_server.client() as client:
            r = await client.post("/api/generate", json=body)
    answer = r.json()
    assert answer["done_reason"] == "length" and answer["eval_count"] == 150


async def test_shift_false_ends_at_the_context_edge_with_length(long_server):
    body = {
        "model": "long",
        "prompt": "hello",
        "stream": False,
        "shift": False,
        "options": {**GREEDY, "num_ctx": 64, "num_predict": 150},
    }
    with trio.fail_after(LIMIT):
        async with long_server.client() as client:
            r = await client.post("/api/generate", json=body)
    answer = r.json()
    assert answer["done_reason"] == "length"
    assert answer["prompt_eval_count"] + answer["eval_count"] <= 65


async def test_shift_false_refuses_a_prompt_longer_than_the_context(long_server):
    body = {
        "model": "long",
        "prompt": "hello " * 40,
        "stream": False,
        "options": {**GREEDY, "num_ctx": 32, "num_predict": 4},
    }
    with trio.fail_after(LIMIT):
        async with long_server.client() as client:
            refused = await client.post("/api/generate", json={**body, "shift": False})
            truncated = await client.post("/api/generate", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("the prompt is longer than the context length")
    assert truncated.status_code == 200 and truncated.json()["eval_count"] == 4
