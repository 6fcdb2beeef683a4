"""The serving core on the real server: sequence identity, slots freed when the work ends, the
prompt cache, and no reload ping-pong.

Conventions: the real appliance (hypercorn, scheduler, llama.cpp) on 127.0.0.1 port 0 inside the
test's trio run (`running_appliance`); the tiny generated model for rules any model shows, the
reference model (gemma3:270m, marker `reference`) where a real answer matters (JSON, greedy
repeats). Token counts come from the answers (`prompt_eval_count`, `context`) and from /metrics.
Every test is bounded by fail_after. Tiny-model servers use one thread: ggml's threads spin at
barriers, which on a busy 2-core machine turns millisecond steps into hundreds of milliseconds.
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

import openai
import pytest
import trio
from helpers import add_model, running_appliance
from prometheus_client.parser import text_string_to_metric_families

LIMIT = 240
REFERENCE_LIMIT = 900  # a JSON-schema answer on a loaded 2-core machine takes seconds
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
# Long enough that a conversation's prefix dwarfs what a turn adds (about 400 tokens).
SYSTEM = " ".join(
    f"Rule {i}: answer briefly, politely and only about the city the user names." for i in range(24)
)


async def metric(client: Any, name: str, **labels: str) -> float:
    r = await client.get("/metrics")
    total = 0.0
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def generate(client: Any, model: str, prompt: str, **options: Any) -> dict[str, Any]:
    r = await client.post(
        "/api/generate",
        json={
            "model": model,
            "prompt": prompt,
            "template": "{{ .Prompt }}",  # the prompt as is, and the answer carries `context`
            "stream": False,
            "options": {"temperature": 0, "num_predict": 8, **options},
        },
    )
    assert r.status_code == 200, r.text
    return r.json()


def prompt_tokens(answer: dict[str, Any]) -> int:
    """How many tokens the prompt had: `context` is the prompt's tokens and the answer's."""
    return len(answer["context"]) - answer["eval_count"]


# ---- 1. every sequence has its own identity --------------------------------------------------


@pytest.mark.reference
async def test_tokens_of_a_stream_the_client_dropped_never_reach_the_next_answer(
    tmp_path: Path, reference_gguf: Path
):
    json_chat = {
        "model": "gemma3:270m",
        "stream": False,
        "format": SCHEMA,
        "messages": [{"role": "user", "content": "Which city is the Big Apple? Answer in JSON."}],
        "options": {"temperature": 0, "num_predict": 40},
    }
    story = {
        "model": "gemma3:270m",
        "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
        "options": {"num_predict": 32},
    }
    answers = []
    # One slot, so the JSON request always takes the slot the dropped stream had.
    async with running_appliance(tmp_path / "models", import_reference=True, num_parallel=1) as srv:
        with trio.fail_after(REFERENCE_LIMIT):
            async with srv.client(timeout=REFERENCE_LIMIT) as client:
                cold = (await client.post("/api/chat", json=json_chat)).json()["message"]
                for _ in range(12):
                    async with client.stream("POST", "/api/chat", json=story) as r:
                        lines = 0
                        async for _line in r.aiter_lines():
                            lines += 1
                            if lines == 3:
                                break  # hang up mid-answer, a decode step in flight
                    r = await client.post("/api/chat", json=json_chat)
                    answers.append(r.json()["message"]["content"])
    assert json.loads(cold["content"])["city"]
    assert answers == [cold["content"]] * 12


@pytest.mark.reference
async def test_a_dropped_v1_stream_leaves_nothing_in_the_next_generate(
    tmp_path: Path, reference_gguf: Path
):
    body = {
        "model": "gemma3:270m",
        "prompt": "The capital of France is",
        "stream": False,
        "options": {"temperature": 0, "num_predict": 12},
    }
    answers = []
    async with running_appliance(tmp_path / "models", import_reference=True, num_parallel=1) as srv:
        with trio.fail_after(REFERENCE_LIMIT):
            async with srv.client(timeout=REFERENCE_LIMIT) as client:
                cold = (await client.post("/api/generate", json=body)).json()["response"]
                oa = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
                for _ in range(8):
                    stream = await oa.chat.completions.create(
                        model="gemma3:270m",
                        messages=[{"role": "user", "content": "Write a poem about rain."}],
                        max_tokens=32,
                        stream=True,
                    )
                    seen = 0
                    async for _chunk in stream:
                        seen += 1
                        if seen == 3:
                            break
                    await stream.close()
                    r = await client.post("/api/generate", json=body)
                    answers.append(r.json()["response"])
                await oa.close()
    assert cold and answers == [cold] * 8


# ---- 2. a slot is released when its sequence ends, not when its body is drained ------------------


def _never_reading_client(url: str, body: dict[str, Any]) -> socket.socket:
    """A client with a 2 KiB receive buffer that sends a request and never reads the answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect((host, int(port)))
    data = json.dumps(body).encode()
    sock.sendall(
        f"POST /api/generate HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


async def test_clients_that_never_read_do_not_keep_the_slots_once_their_answers_are_made(
    tmp_path: Path, tiny_gguf: Path
):
    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf)
    long_answer = {
        "model": "tiny",
        "prompt": "x",
        "template": "{{ .Prompt }}",
        "options": {"num_predict": 480, "num_ctx": 512, "temperature": 0},
    }
    async with running_appliance(models, num_parallel=2, num_threads=1) as srv:
        with trio.fail_after(LIMIT):
            async with srv.client() as client:
                await generate(client, "tiny", "x", num_ctx=512)  # load first
                before = await metric(client, "llamacpp:tokens_predicted_total")
                stalled = [_never_reading_client(srv.url, long_answer) for _ in range(2)]
                try:
                    # Both answers are generated (each far larger than what the sockets buffer).
                    while await metric(client, "llamacpp:tokens_predicted_total") - before < 400:
                        await trio.sleep(0.05)
                    third = await generate(client, "tiny", "hello", num_ctx=512)
                finally:
                    for sock in stalled:
                        sock.close()
    assert third["done"] and third["eval_count"] > 0


# ---- 3. the prompt cache --------------------------------------------------------------------------


@pytest.fixture
async def gemma(tmp_path: Path, reference_gguf: Path):  # type: ignore[no-untyped-def]
    async with running_appliance(tmp_path / "models", import_reference=True, num_parallel=2) as srv:
        yield srv


def _chat(messages: list[dict[str, str]], **options: Any) -> dict[str, Any]:
    return {
        "model": "gemma3:270m",
        "stream": False,
        "messages": [{"role": "system", "content": SYSTEM}, *messages],
        "options": {"temperature": 0, "num_predict": 24, **options},
    }


@pytest.mark.reference
async def test_the_same_chat_again_gives_the_same_answer_from_the_cache(gemma):
    body = _chat([{"role": "user", "content": "Tell me about Paris."}])
    with trio.fail_after(REFERENCE_LIMIT):
        async with gemma.client(timeout=REFERENCE_LIMIT) as client:
            first = (await client.post("/api/chat", json=body)).json()
            cached_before = await metric(client, "llamacpp:prompt_tokens_cached_total")
            again = (await client.post("/api/chat", json=body)).json()
            cached = await metric(client, "llamacpp:prompt_tokens_cached_total") - cached_before
    assert again["message"]["content"] == first["message"]["content"]
    assert first["prompt_eval_count"] > 300
    assert again.get("prompt_eval_count", 0) == 0  # the whole prompt came from the cache
    assert cached == first["prompt_eval_count"]


@pytest.mark.reference
async def test_a_follow_up_turn_prefills_only_its_new_tokens_on_each_of_two_slots(gemma):
    with trio.fail_after(REFERENCE_LIMIT):
        async with gemma.client(timeout=REFERENCE_LIMIT) as client:
            convos = {
                city: [{"role": "user", "content": f"Tell me about {city}."}]
                for city in ("Paris", "Rome")
            }
            firsts = {}
            async with trio.open_nursery() as nursery:  # both at once: one slot each

                async def turn_one(city: str) -> None:
                    r = await client.post("/api/chat", json=_chat(convos[city]))
                    firsts[city] = r.json()

                for city in convos:
                    nursery.start_soon(turn_one, city)
            follow_ups = {}
            for city, messages in convos.items():
                messages += [
                    firsts[city]["message"],
                    {"role": "user", "content": "And its food?"},
                ]
                r = await client.post("/api/chat", json=_chat(messages))
                follow_ups[city] = r.json()
    for city in convos:
        assert firsts[city]["prompt_eval_count"] > 300
        # The system prompt, the first question and the answer came from the cache.
        assert follow_ups[city]["prompt_eval_count"] < 40, (city, follow_ups[city])


@pytest.mark.reference
async def test_a_changed_history_reuses_only_the_common_part(gemma):
    head = SYSTEM + "\n\nQuestion: "
    with trio.fail_after(REFERENCE_LIMIT):
        async with gemma.client(timeout=REFERENCE_LIMIT) as client:
            first = await generate(client, "gemma3:270m", head + "what is the weather in Oslo?")
            cached_before = await metric(client, "llamacpp:prompt_tokens_cached_total")
            other = await generate(client, "gemma3:270m", head + "who founded Kyoto?")
            cached = await metric(client, "llamacpp:prompt_tokens_cached_total") - cached_before
    common = 0
    while first["context"][common] == other["context"][common]:
        common += 1
    assert first["prompt_eval_count"] == prompt_tokens(first)
    assert 300 < cached <= common < prompt_tokens(other)
    assert other["prompt_eval_count"] == prompt_tokens(other) - cached


@pytest.mark.reference
async def test_two_models_each_keep_their_own_cache(
    tmp_path: Path, reference_gguf: Path, tiny_gguf_factory: Any
):
    models = tmp_path / "models"
    add_model(models, "gemma", reference_gguf)
    add_model(models, "tiny", tiny_gguf_factory(n_ctx_train=4096))
    prompt = SYSTEM[:1200]
    async with running_appliance(models, num_parallel=2) as srv:
        with trio.fail_after(REFERENCE_LIMIT):
            async with srv.client(timeout=REFERENCE_LIMIT) as client:
                cold = {m: await generate(client, m, prompt) for m in ("gemma", "tiny")}
                warm = {m: await generate(client, m, prompt + " More.") for m in ("gemma", "tiny")}
    for m in ("gemma", "tiny"):
        assert cold[m]["prompt_eval_count"] == prompt_tokens(cold[m]) > 100
        assert warm[m]["prompt_eval_count"] < 10, (m, warm[m])


async def test_a_repeated_prompt_is_served_from_the_cache_and_counted(
    tmp_path: Path, tiny_gguf: Path
):
    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf)
    prompt = "the cat sat on the mat " * 8
    async with running_appliance(models, num_threads=1) as srv:
        with trio.fail_after(LIMIT):
            async with srv.client() as client:
                answers = [await generate(client, "tiny", prompt) for _ in range(2)]
                cached = await metric(
                    client, "llamacpp:prompt_tokens_cached_total", model="tiny:latest"
                )
    assert answers[0]["prompt_eval_count"] == prompt_tokens(answers[0]) > 16
    assert "prompt_eval_count" not in answers[1]  # 0, omitted as Ollama omits zero counts
    assert answers[1]["response"] == answers[0]["response"]
    assert cached == prompt_tokens(answers[1])


async def test_the_prompt_cache_setting_turns_it_off(tmp_path: Path, tiny_gguf: Path):
    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf)
    prompt = "the cat sat on the mat " * 8
    async with running_appliance(models, prompt_cache=False, num_threads=1) as srv:
        with trio.fail_after(LIMIT):
            async with srv.client() as client:
                answers = [await generate(client, "tiny", prompt) for _ in range(2)]
                cached = await metric(client, "llamacpp:prompt_tokens_cached_total")
    assert answers[1]["prompt_eval_count"] == prompt_tokens(answers[1]) > 16
    assert answers[0]["response"] == answers[1]["response"]
    assert cached == 0


# ---- 4. no reload ping-pong -----------------------------------------------------------------------


async def test_open_webui_num_ctx_then_none_does_not_reload(
    tmp_path: Path, tiny_gguf_factory: Any, caplog: pytest.LogCaptureFixture
):
    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf_factory(n_ctx_train=8192))
    caplog.set_level(logging.INFO, logger="appliance.serving.scheduler")
    async with running_appliance(models, context_length=1024, num_threads=1) as srv:
        with trio.fail_after(LIMIT):
            async with srv.client() as client:
                # The chat with num_ctx from its controls, the follow-up task without, and so on.
                for num_ctx in (2048, None, 2048, None, 2048):
                    options = {} if num_ctx is None else {"num_ctx": num_ctx}
                    await generate(client, "tiny", "hello", **options)
                loads = await metric(client, "ollama_model_load_duration_seconds_count")
                await generate(client, "tiny", "hello", num_ctx=4096)  # more: reload once
                await generate(client, "tiny", "hello", num_ctx=2048)
                await generate(client, "tiny", "hello")
                loads_after = await metric(client, "ollama_model_load_duration_seconds_count")
                context_length = (await client.get("/api/ps")).json()["models"][0]["context_length"]
    assert loads == 1
    assert loads_after == 2 and context_length == 4096
    reloads = [r.getMessage() for r in caplog.records if "reloading" in r.getMessage()]
    assert reloads == ["reloading tiny:latest: num_ctx 2048 -> 4096"]


async def test_a_request_on_a_larger_runner_keeps_its_own_num_ctx(
    tmp_path: Path, tiny_gguf_factory: Any
):
    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf_factory(n_ctx_train=8192))
    long_prompt = "word " * 1500  # more than 1024 tokens
    async with running_appliance(models, context_length=1024, num_threads=1) as srv:
        with trio.fail_after(LIMIT):
            async with srv.client() as client:
                await generate(client, "tiny", "hello", num_ctx=4096)
                answer = await generate(client, "tiny", long_prompt)  # the default: 1024
                wide = await generate(client, "tiny", long_prompt, num_ctx=4096)
                loads = await metric(client, "ollama_model_load_duration_seconds_count")
    assert loads == 1
    assert answer["prompt_eval_count"] < 1024 < prompt_tokens(wide)
