"""GET /metrics on the real server: llama.cpp-compatible counters, live queue and model gauges.

Conventions: the `server` fixture (or `running_appliance` for other settings) runs the real appliance
(hypercorn, scheduler, llama.cpp) on 127.0.0.1 port 0 with the tiny model stored as `tiny`; the
exposition text is parsed with prometheus-client's own parser. Every test is bounded by fail_after.
"""

from __future__ import annotations

from pathlib import Path

import trio
from helpers import add_model, running_appliance
from prometheus_client.parser import text_string_to_metric_families

LIMIT = 60


async def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[no-untyped-def]
    """Every sample as {(name, sorted labels): value}."""
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_token_counters_move_after_a_generate(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            before = await scrape(client)
            r = await client.post(
                "/api/generate",
                json={"model": "tiny", "prompt": "hello", "stream": False,
                      "options": {"num_predict": 4, "temperature": 0}},
            )  # fmt: skip
            assert r.status_code == 200
            answer = r.json()
            after = await scrape(client)
    model = {"model": "tiny:latest"}
    assert answer["prompt_eval_count"] > 0 and answer["eval_count"] > 0
    assert value(before, "llamacpp:prompt_tokens_total", **model) == 0
    assert value(after, "llamacpp:prompt_tokens_total", **model) == answer["prompt_eval_count"]
    assert value(after, "llamacpp:tokens_predicted_total", **model) == answer["eval_count"]
    assert value(after, "llamacpp:prompt_seconds_total", **model) > 0
    assert value(after, "llamacpp:tokens_predicted_seconds_total", **model) > 0
    assert value(after, "llamacpp:n_decode_total", **model) >= 1
    assert value(after, "ollama_model_load_duration_seconds_count", **model) == 1


async def test_gauges_show_the_loaded_model_and_the_queue_capacity(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            empty = await scrape(client)
            r = await client.post("/api/generate", json={"model": "tiny", "keep_alive": "5m"})
            assert r.status_code == 200
            loaded = await scrape(client)
    assert value(empty, "ollama_models_loaded") == 0
    assert value(loaded, "ollama_models_loaded") == 1
    assert value(loaded, "ollama_queue_capacity") == 512
    assert value(loaded, "ollama_requests_queued") == 0
    assert value(loaded, "llamacpp:requests_processing") == 0
    assert value(loaded, "llamacpp:requests_deferred") == 0


async def test_http_requests_are_counted_by_route_pattern_not_raw_path(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            await client.get("/api/tags")
            await client.get("/v1/models/some-model-that-is-not-here")
            await client.get("/no/such/path/123")
            samples = await scrape(client)
    total = "ollama_http_requests_total"
    assert value(samples, total, route="/api/tags", method="GET", status="200") == 1
    routes = {dict(labels).get("route") for name, labels in samples if name == total}
    assert not any("some-model" in (r or "") for r in routes)
    assert value(samples, total, route="unmatched", method="GET", status="404") == 1


async def test_metrics_off_answers_404(tmp_path: Path, tiny_gguf: Path):
    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf)
    with trio.fail_after(LIMIT):
        async with running_appliance(models, metrics=False) as running:
            async with running.client() as client:
                r = await client.get("/metrics")
    assert r.status_code == 404
    assert r.text == "404 page not found"
