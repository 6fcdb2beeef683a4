"""The prompt cache through the real server: states kept in host RAM outlive their slot, and the
tokens served from the cache show in every API's usage. One slot (OLLAMA_NUM_PARALLEL=1), so a
second conversation always takes the first one's slot; the tiny model, greedy, unless marked
`reference` (gemma3 270M, sliding-window attention)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import add_model, running_appliance
from test_serving_core import LIMIT, REFERENCE_LIMIT, metric

SYSTEM = "You are a patient helper who answers every question in one short sentence. " * 3
OTHER = "Talk like a pirate about ships, the sea and the weather on the open ocean. " * 3


async def chat(client: Any, model: str, system: str, question: str) -> dict[str, Any]:
    r = await client.post(
        "/api/chat",
        json={
            "model": model,
            "stream": False,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ],
            "options": {"temperature": 0, "num_predict": 8},
        },
    )
    assert r.status_code == 200, r.text
    return r.json()


async def three_chats(models: Path, model: str, **settings: Any) -> tuple[dict[str, Any], ...]:
    """A (system prompt S + q1), B (another conversation, takes the slot), A' (S + q2)."""
    async with running_appliance(models, num_parallel=1, num_threads=1, **settings) as srv:
        with trio.fail_after(REFERENCE_LIMIT):
            async with srv.client() as client:
                a = await chat(client, model, SYSTEM, "Where is the cat?")
                b = await chat(client, model, OTHER, "Ahoy?")
                a2 = await chat(client, model, SYSTEM, "What does the bird say?")
                restored = await metric(client, "llamacpp:prompt_tokens_restored_total")
    return a, b, a2, {"restored": restored}


@pytest.fixture
def tiny_models(tmp_path: Path, tiny_gguf: Path) -> Path:
    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf)
    return models


async def test_a_shared_system_prompt_is_restored_after_its_slot_was_reused(tiny_models: Path):
    a, _, a2, seen = await three_chats(tiny_models, "tiny")
    cached = a2["prompt_cached_count"]
    assert cached > 0.8 * a["prompt_eval_count"]  # S, computed once
    assert a2["prompt_eval_count"] < 0.2 * a["prompt_eval_count"]  # only what follows it
    assert seen["restored"] == cached


async def test_with_no_ram_for_the_cache_the_shared_prompt_is_prefilled_again(tiny_models: Path):
    a, _, a2, seen = await three_chats(tiny_models, "tiny", cache_ram=0)
    assert "prompt_cached_count" not in a2  # 0, omitted like Ollama's zero counts
    assert a2["prompt_eval_count"] > 0.8 * a["prompt_eval_count"]
    assert seen["restored"] == 0


async def test_a_repeat_after_its_slot_was_reused_answers_the_same(tiny_models: Path):
    async with running_appliance(tiny_models, num_parallel=1, num_threads=1) as srv:
        with trio.fail_after(LIMIT):
            async with srv.client() as client:
                first = await chat(client, "tiny", SYSTEM, "Where is the cat?")
                await chat(client, "tiny", OTHER, "Ahoy?")
                again = await chat(client, "tiny", SYSTEM, "Where is the cat?")
    assert "prompt_eval_count" not in again  # the whole prompt came back from RAM
    assert again["prompt_cached_count"] == first["prompt_eval_count"]
    assert again["message"] == first["message"]


@pytest.mark.reference
async def test_the_reference_model_restores_a_system_prompt_within_its_window(
    tmp_path: Path, reference_gguf: Path
):
    models = tmp_path / "models"
    add_model(models, "gemma", reference_gguf)
    a, _, a2, seen = await three_chats(models, "gemma")
    assert a2["prompt_cached_count"] > 0.7 * a["prompt_eval_count"]
    assert a2["prompt_eval_count"] + a2["prompt_cached_count"] > a["prompt_eval_count"] // 2
    assert seen["restored"] == a2["prompt_cached_count"]


# ---- cached tokens in each API's usage ------------------------------------------------------------


async def twice(models: Path, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    async with running_appliance(models, num_parallel=1, num_threads=1) as srv:
        with trio.fail_after(LIMIT):
            async with srv.client() as client:
                answers = []
                for _ in range(2):
                    r = await client.post(path, json=body)
                    assert r.status_code == 200, r.text
                    answers.append(r.json())
    return tuple(answers)


MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello?"}]


async def test_openai_chat_usage_counts_cached_prompt_tokens(tiny_models: Path):
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, "temperature": 0}
    first, second = await twice(tiny_models, "/v1/chat/completions", body)
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    cold = first["usage"]["prompt_tokens"]
    # prompt_tokens stays Ollama's (the tokens evaluated); the cached ones are counted apart.
    assert second["usage"]["prompt_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": cold}


async def test_openai_completion_usage_counts_cached_prompt_tokens(tiny_models: Path):
    body = {"model": "tiny", "prompt": SYSTEM, "max_tokens": 4, "temperature": 0}
    first, second = await twice(tiny_models, "/v1/completions", body)
    cold = first["usage"]["prompt_tokens"]
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == cold > 0


async def test_responses_usage_counts_cached_input_tokens(tiny_models: Path):
    body = {"model": "tiny", "instructions": SYSTEM, "input": "Hello?", "max_output_tokens": 4}
    first, second = await twice(tiny_models, "/v1/responses", {**body, "temperature": 0})
    assert first["usage"]["input_tokens_details"]["cached_tokens"] == 0
    cold = first["usage"]["input_tokens"]
    assert second["usage"]["input_tokens_details"]["cached_tokens"] == cold > 0


async def test_anthropic_usage_counts_cache_read_input_tokens(tiny_models: Path):
    body = {
        "model": "tiny",
        "system": SYSTEM,
        "max_tokens": 4,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Hello?"}],
    }
    first, second = await twice(tiny_models, "/v1/messages", body)
    assert first["usage"]["cache_read_input_tokens"] == 0
    cold = first["usage"]["input_tokens"]
    assert second["usage"]["cache_read_input_tokens"] == cold > 0
    assert second["usage"]["input_tokens"] == 0


async def test_the_store_stays_within_its_setting_over_many_prompts(tiny_models: Path):
    async with running_appliance(tiny_models, num_parallel=1, num_threads=1, cache_ram=1) as srv:
        with trio.fail_after(LIMIT):
            async with srv.client() as client:
                stored = []
                for i in range(40):
                    await chat(client, "tiny", f"System prompt number {i}. " * 12, "Hello?")
                    (runner,) = srv.appliance.services.scheduler.runners
                    store = runner.backend.batch.store
                    stored.append((store.nbytes, len(store)))
    assert all(nbytes <= 1024 * 1024 for nbytes, _ in stored)
    assert max(n for _, n in stored) >= 2  # it keeps several states ...
    assert stored[-1][1] < 39  # ... and dropped the oldest to stay within 1 MiB
