"""The embedded reference model (gemma3:270m, Q4_K_M, from PyPI) served end to end.

Conventions: conftest's `gemma`, the real appliance on 127.0.0.1 port 0 with its store in a
temporary directory; the model is imported at start exactly as on a fresh install (a hard link into
blobs/). These tests load
a 253 MB model, so they are marked `reference`; each is bounded by fail_after.
"""

from __future__ import annotations

import math

import ollama
import pytest
import trio

pytestmark = pytest.mark.reference
LIMIT = 240


async def test_a_fresh_store_serves_gemma_with_a_real_answer(gemma):
    with trio.fail_after(LIMIT):
        async with gemma.client() as client:
            tags = (await client.get("/api/tags")).json()["models"]
            r = await client.post(
                "/api/generate",
                json={
                    "model": "gemma3:270m",
                    "stream": False,
                    "raw": True,
                    "prompt": "The capital of France is",
                    "options": {"temperature": 0, "num_predict": 24},
                },
            )
    assert [m["name"] for m in tags] == ["gemma3:270m"]
    body = r.json()
    assert r.status_code == 200, body
    # gemma3:270m is a base (pre-trained) model: it continues text rather than chatting.
    text = body["response"]
    assert "France" in text or "Paris" in text, text
    assert body["done_reason"] in ("stop", "length") and body["eval_count"] > 0


async def test_temperature_zero_and_a_fixed_seed_are_deterministic(gemma):
    prompt = {
        "model": "gemma3:270m",
        "prompt": "Write a short poem about the sea.",
        "stream": False,
    }
    with trio.fail_after(LIMIT):
        async with gemma.client() as client:
            greedy = [
                (
                    await client.post(
                        "/api/generate",
                        json={**prompt, "options": {"temperature": 0, "num_predict": 24}},
                    )
                ).json()["response"]
                for _ in range(2)
            ]
            seeded = [
                (
                    await client.post(
                        "/api/generate",
                        json={
                            **prompt,
                            "options": {"temperature": 1.0, "seed": 42, "num_predict": 24},
                        },
                    )
                ).json()["response"]
                for _ in range(2)
            ]
    assert greedy[0] == greedy[1] and greedy[0]
    assert seeded[0] == seeded[1] and seeded[0]


async def test_embeddings_of_similar_texts_are_closer_than_unrelated_ones(gemma):
    with trio.fail_after(LIMIT):
        async with gemma.client() as client:
            r = await client.post(
                "/api/embed",
                json={
                    "model": "gemma3:270m",
                    "input": [
                        "The cat sat on the mat.",
                        "A cat was sitting on a rug.",
                        "Quarterly revenue grew by four percent.",
                    ],
                },
            )
    a, b, c = r.json()["embeddings"]

    def cos(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y)) / math.sqrt(
            sum(p * p for p in x) * sum(q * q for q in y)
        )

    assert cos(a, b) > cos(a, c) and cos(a, b) > cos(b, c)


async def test_format_json_schema_gives_an_answer_that_parses(gemma):
    import json

    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    with trio.fail_after(LIMIT):
        async with gemma.client() as client:
            r = await client.post(
                "/api/generate",
                json={
                    "model": "gemma3:270m",
                    "prompt": "Name a city in Japan as JSON.",
                    "stream": False,
                    "format": schema,
                    "options": {"temperature": 0, "num_predict": 40},
                },
            )
    value = json.loads(r.json()["response"])
    assert isinstance(value["city"], str)


async def test_the_official_ollama_client_works_unchanged(gemma):
    client = ollama.AsyncClient(host=gemma.url)
    with trio.fail_after(LIMIT):
        listed = await client.list()
        assert [m.model for m in listed.models] == ["gemma3:270m"]
        shown = await client.show("gemma3:270m")
        assert shown.details.family == "gemma3" and "completion" in (shown.capabilities or [])

        gen = await client.generate("gemma3:270m", "Say hello.", options={"num_predict": 8})
        assert gen.done and gen.response and gen.eval_count == 8 or gen.done_reason == "stop"

        parts = [
            part
            async for part in await client.chat(
                "gemma3:270m",
                messages=[{"role": "user", "content": "Hi!"}],
                stream=True,
                options={"num_predict": 8},
            )
        ]
        assert parts[-1].done and "".join(p.message.content for p in parts)

        whole = await client.chat(
            "gemma3:270m", messages=[{"role": "user", "content": "Hi!"}], options={"num_predict": 8}
        )
        assert whole.message.role == "assistant" and whole.message.content

        emb = await client.embed("gemma3:270m", input=["one", "two"])
        assert len(emb.embeddings) == 2

        running = await client.ps()
        assert [m.model for m in running.models] == ["gemma3:270m"]
        assert running.models[0].context_length and running.models[0].size_vram == 0
