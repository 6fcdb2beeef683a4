"""Ollama's native inference API on the real server, with a tiny generated model.

Conventions: the `server` fixture runs the real appliance (hypercorn, scheduler, llama.cpp) on
127.0.0.1 port 0 inside the test's trio run, with the tiny model stored as `tiny`. Texts and
statuses are Ollama's (reference/ollama-api.md §2.2-§2.7). Every test is bounded by fail_after.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from helpers import ndjson

LIMIT = 60


def generate_body(prompt: str, *, stream: bool | None = False, **options: Any) -> dict[str, Any]:
    """An /api/generate body for `tiny`; `stream=None` leaves the field out (Ollama streams)."""
    body: dict[str, Any] = {"model": "tiny", "prompt": prompt, "options": options}
    if stream is not None:
        body["stream"] = stream
    return body


async def test_root_says_ollama_is_running(server):
    async with server.client() as client:
        r = await client.get("/")
        head = await client.head("/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert head.status_code == 200


async def test_version_reports_the_matched_ollama_version(server):
    async with server.client() as client:
        r = await client.get("/api/version")
    assert r.status_code == 200 and r.json()["version"].count(".") == 2


async def test_unknown_path_and_wrong_method_answer_like_go(server):
    async with server.client() as client:
        missing = await client.get("/api/nope")
        wrong = await client.get("/api/generate")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")


async def test_generate_streams_ndjson_token_by_token(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            async with client.stream(
                "POST",
                "/api/generate",
                json=generate_body("hello", stream=None, num_predict=8, temperature=0),
            ) as r:
                assert r.status_code == 200
                assert r.headers["content-type"] == "application/x-ndjson"
                chunks = await ndjson(r)
    assert len(chunks) >= 2
    assert all(c["done"] is False and isinstance(c["response"], str) for c in chunks[:-1])
    final = chunks[-1]
    assert final["done"] is True and final["done_reason"] == "length"
    assert final["eval_count"] == 8 and final["prompt_eval_count"] > 0
    for key in ("total_duration", "load_duration", "eval_duration", "prompt_eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0
    assert isinstance(final["context"], list) and len(final["context"]) > 8
    assert final["model"] == "tiny" and final["created_at"].endswith("Z")


async def test_generate_without_stream_returns_one_object_with_the_whole_text(server):
    body = generate_body("hello", num_predict=6, temperature=0)
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            whole = (await client.post("/api/generate", json=body)).json()
            async with client.stream("POST", "/api/generate", json={**body, "stream": True}) as r:
                parts = await ndjson(r)
    assert whole["done"] is True
    assert whole["response"] == "".join(p["response"] for p in parts)


async def test_generate_at_temperature_zero_is_deterministic(server):
    body = generate_body("abc", num_predict=12, temperature=0)
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            a = (await client.post("/api/generate", json=body)).json()
            b = (await client.post("/api/generate", json=body)).json()
    assert a["response"] == b["response"] and a["context"] == b["context"]


async def test_generate_stop_sequence_is_never_emitted(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            free = (
                await client.post(
                    "/api/generate",
                    json=generate_body("abc", num_predict=20, temperature=0),
                )
            ).json()["response"]
            assert len(free) > 4
            stop = free[2:4]
            cut = (
                await client.post(
                    "/api/generate",
                    json=generate_body("abc", num_predict=20, temperature=0, stop=[stop]),
                )
            ).json()
    assert stop not in cut["response"]
    assert cut["done_reason"] == "stop"
    assert free.startswith(cut["response"])


async def test_empty_prompt_preloads_and_keep_alive_zero_unloads(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            load = (await client.post("/api/generate", json={"model": "tiny"})).json()
            ps = (await client.get("/api/ps")).json()["models"]
            unload = (
                await client.post("/api/generate", json={"model": "tiny", "keep_alive": 0})
            ).json()
            # The runner goes away just after the answer: wait for it (fail_after bounds the wait).
            after = (await client.get("/api/ps")).json()["models"]
            while after:
                await trio.sleep(0.01)
                after = (await client.get("/api/ps")).json()["models"]
    assert load["done_reason"] == "load" and load["response"] == "" and load["done"] is True
    assert [m["name"] for m in ps] == ["tiny:latest"]
    assert ps[0]["context_length"] > 0 and ps[0]["size_vram"] == 0 and ps[0]["expires_at"]
    assert unload["done_reason"] == "unload"
    assert after == []


async def test_chat_streams_assistant_messages(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            async with client.stream(
                "POST",
                "/api/chat",
                json={
                    "model": "tiny",
                    "messages": [{"role": "User", "content": "hi"}],
                    "options": {"num_predict": 5, "temperature": 0},
                },
            ) as r:
                chunks = await ndjson(r)
    assert chunks[0]["message"]["role"] == "assistant"
    final = chunks[-1]
    assert final["done"] is True and final["message"] == {"role": "assistant", "content": ""}
    assert "context" not in final and final["eval_count"] == 5


async def test_chat_preload_and_unload_shapes(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            load = (await client.post("/api/chat", json={"model": "tiny", "messages": []})).json()
            unload = (
                await client.post("/api/chat", json={"model": "tiny", "keep_alive": 0})
            ).json()
    assert load["message"] == {"role": "assistant", "content": ""} and load["done_reason"] == "load"
    assert unload["done_reason"] == "unload"


async def test_format_json_constrains_the_answer_to_json(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            r = await client.post(
                "/api/generate",
                json={
                    "model": "tiny",
                    "prompt": "x",
                    "stream": False,
                    "format": "json",
                    "options": {"num_predict": 40, "temperature": 0.5, "seed": 1},
                },
            )
    text = r.json()["response"]
    assert text.lstrip().startswith(("{", "["))


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/generate", {}, 404, "model '' not found"),
        ("/api/generate", {"model": "missing"}, 404, "model 'missing' not found"),
        ("/api/generate", {"model": "bad/name/x/y"}, 400, "invalid model name"),
        (
            "/api/generate",
            {"model": "tiny", "keep_alive": "60"},
            400,
            'time: missing unit in duration "60"',
        ),
        ("/api/generate", {"model": "tiny", "keep_alive": True}, 400, "Unsupported type: 'bool'"),
        (
            "/api/generate",
            {"model": "tiny", "raw": True, "system": "s", "prompt": "p"},
            400,
            "raw mode does not support template, system, or context",
        ),
        (
            "/api/generate",
            {"model": "tiny", "top_logprobs": 21},
            400,
            "top_logprobs must be between 0 and 20",
        ),
        (
            "/api/generate",
            {"model": "tiny", "prompt": "p", "think": True},
            400,
            '"tiny" does not support thinking',
        ),
        ("/api/chat", {"messages": []}, 400, "model is required"),
        ("/api/chat", {"model": "missing"}, 404, "model 'missing' not found"),
        (
            "/api/chat",
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            400,
            "registry.ollama.ai/library/tiny:latest does not support tools",
        ),
        ("/api/embed", {"model": "tiny", "input": 3}, 400, "invalid input type"),
        ("/api/embed", {"input": "x"}, 404, "model '' not found"),
        (
            "/api/embed",
            {"model": "missing", "input": "x"},
            404,
            'model "missing" not found, try pulling it first',
        ),
        ("/api/embeddings", {"prompt": "x"}, 400, "model is required"),
        (
            "/api/embeddings",
            {"model": "missing", "prompt": "x"},
            404,
            'model "missing" not found, try pulling it first',
        ),
    ],
)
async def test_errors_answer_with_ollamas_status_and_message(server, path, body, status, message):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            r = await client.post(path, json=body)
            # The server keeps serving after an error.
            ok = await client.get("/api/version")
    assert r.status_code == status, r.text
    assert r.json() == {"error": message}
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert ok.status_code == 200


async def test_an_empty_body_is_missing_request_body(server):
    async with server.client() as client:
        r = await client.post("/api/generate", content=b"")
    assert (r.status_code, r.json()) == (400, {"error": "missing request body"})


async def test_a_wrong_option_type_is_a_500_naming_the_option(server):
    async with server.client() as client:
        r = await client.post(
            "/api/generate",
            json={"model": "tiny", "prompt": "x", "options": {"num_predict": "many"}},
        )
    assert r.status_code == 500
    assert "num_predict" in r.json()["error"]


async def test_prompt_longer_than_context_without_truncation_is_a_400(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            r = await client.post(
                "/api/chat",
                json={
                    "model": "tiny",
                    "stream": False,
                    "truncate": False,
                    "messages": [{"role": "user", "content": "word " * 3000}],
                    "options": {"num_ctx": 64},
                },
            )
    assert r.status_code == 400
    assert r.json()["error"].startswith("the prompt is longer than the context length")


async def test_embed_returns_normalised_vectors_and_truncates_dimensions(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            r = await client.post("/api/embed", json={"model": "tiny", "input": ["a b", "c"]})
            short = await client.post(
                "/api/embed", json={"model": "tiny", "input": "a", "dimensions": 8}
            )
            empty = await client.post("/api/embed", json={"model": "tiny", "input": []})
    body = r.json()
    assert len(body["embeddings"]) == 2 and body["prompt_eval_count"] > 0
    for vector in body["embeddings"]:
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-3
    (vector,) = short.json()["embeddings"]
    assert len(vector) == 8 and abs(sum(x * x for x in vector) - 1.0) < 1e-3
    assert empty.json() == {"model": "tiny", "embeddings": []}


async def test_legacy_embeddings_returns_one_vector(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            r = await client.post("/api/embeddings", json={"model": "tiny", "prompt": "hello"})
            empty = await client.post("/api/embeddings", json={"model": "tiny", "prompt": ""})
    assert len(r.json()["embedding"]) > 8
    assert empty.json() == {"embedding": []}


async def test_ps_is_empty_when_nothing_is_loaded(server):
    async with server.client() as client:
        r = await client.get("/api/ps")
    assert r.json() == {"models": []}


async def test_keep_alive_sticks_and_shows_in_ps(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            await client.post("/api/generate", json={"model": "tiny", "keep_alive": -1})
            forever = (await client.get("/api/ps")).json()["models"][0]["expires_at"]
            await client.post("/api/generate", json={"model": "tiny", "keep_alive": "10m"})
            ten = (await client.get("/api/ps")).json()["models"][0]["expires_at"]
    assert int(forever[:4]) > 2200  # about 292 years ahead, as Ollama shows forever
    assert int(ten[:4]) < 2200


async def test_a_client_that_disconnects_frees_its_slot(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            async with client.stream(
                "POST",
                "/api/generate",
                json=generate_body("x", stream=None, num_predict=100000, num_ctx=100000),
            ) as r:
                async for _ in r.aiter_lines():
                    break  # hang up after the first token
            scheduler = server.appliance.services.scheduler
            (runner,) = scheduler.runners
            while runner.ref_count or runner.free_sequences != list(range(runner.spec.n_seq)):
                await trio.sleep(0.01)


async def test_parallel_requests_decode_in_the_same_steps(server):
    results: list[dict] = []

    async def one(client) -> None:
        r = await client.post(
            "/api/generate",
            json=generate_body("x", num_predict=300, temperature=0),
        )
        results.append(r.json())

    with trio.fail_after(LIMIT):
        async with server.client() as client:
            await client.post("/api/generate", json={"model": "tiny"})  # load
            (runner,) = server.appliance.services.scheduler.runners
            steps_before = runner.steps
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, client)
                nursery.start_soon(one, client)
    counts = [r["eval_count"] for r in results]
    assert min(counts) >= 30
    # Sequences decoded together share steps: fewer steps than tokens (one a token if apart).
    assert runner.steps - steps_before < sum(counts)


async def test_context_tokens_outside_the_vocabulary_are_a_400(server):
    async with server.client() as client:
        r = await client.post(
            "/api/generate",
            json={"model": "tiny", "prompt": "x", "context": [10**12], "stream": False},
        )
    assert r.status_code == 400 and r.json()["error"].startswith("invalid context")


async def test_hostile_option_values_are_clamped_not_fatal(server):
    bodies = [
        {"num_thread": 1000},
        {"num_thread": -1},
        {"num_batch": -3},
        {"num_ctx": 10**9},
        {"top_k": -5, "top_p": 7, "temperature": -1},
        {"seed": 2**70},
        {"stop": ["zz"] * 2000},
    ]
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            for options in bodies:
                r = await client.post(
                    "/api/generate",
                    json=generate_body("x", num_predict=3, **options),
                )
                assert r.status_code == 200, (options, r.text)
                assert r.json()["done"] is True


async def test_a_lone_surrogate_in_the_prompt_is_replaced_not_a_crash(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            r = await client.post(
                "/api/generate",
                content=json.dumps(
                    {
                        "model": "tiny",
                        "prompt": "x\ud800y",
                        "stream": False,
                        "options": {"num_predict": 2},
                    }
                ),
            )
    assert r.status_code == 200 and r.json()["done"] is True
