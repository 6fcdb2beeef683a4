"""Model lifecycle and request handling as clients see it, on the real server with tiny models:
unload answers once the model is gone, deleted names leave /api/ps, tools and images on models
that cannot use them, and options Ollama removed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from helpers import add_model, running_appliance

LIMIT = 60
TOOLS = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}]
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def _slow_to_free_loader():  # type: ignore[no-untyped-def]
    """The real loader, whose models take 0.3 s to free (as a large model's munmap can)."""
    from appliance.serving.llama_backend import make_loader

    real = make_loader()

    async def load(spec):  # type: ignore[no-untyped-def]
        backend = await real(spec)
        close = backend.aclose

        async def slow_close() -> None:
            await trio.sleep(0.3)
            await close()

        backend.aclose = slow_close
        return backend

    return load


@pytest.mark.parametrize("route", ["/api/generate", "/api/chat"])
async def test_unload_answers_only_once_the_model_is_gone(tmp_path: Path, tiny_gguf: Path, route):
    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf)
    with trio.fail_after(LIMIT):
        async with (
            running_appliance(models, loader=_slow_to_free_loader()) as running,
            running.client() as client,
        ):
            await client.post(route, json={"model": "tiny"})
            loaded = (await client.get("/api/ps")).json()["models"]
            unload = await client.post(route, json={"model": "tiny", "keep_alive": 0})
            after = (await client.get("/api/ps")).json()["models"]  # at once, no sleep
    assert [m["name"] for m in loaded] == ["tiny:latest"]
    assert unload.json()["done_reason"] == "unload"
    assert after == []


async def test_deleted_alias_leaves_ps_and_the_model_goes_on_under_its_other_name(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            await client.post("/api/copy", json={"source": "tiny", "destination": "alias"})
            await client.post("/api/generate", json={"model": "alias"})
            before = (await client.get("/api/ps")).json()["models"]
            deleted = await client.request("DELETE", "/api/delete", json={"model": "alias"})
            after = (await client.get("/api/ps")).json()["models"]
            metrics = (await client.get("/metrics")).text
    assert [m["name"] for m in before] == ["alias:latest"]
    assert deleted.status_code == 200
    assert [m["name"] for m in after] == ["tiny:latest"]
    # live gauges name the model as it is now (counters keep their history, as Prometheus does)
    assert 'ollama_model_slots_busy{model="alias:latest"}' not in metrics
    assert 'ollama_model_slots_busy{model="tiny:latest"}' in metrics


async def test_deleting_the_only_name_of_a_loaded_model_unloads_it(server):
    with trio.fail_after(LIMIT):
        async with server.client() as client:
            await client.post("/api/generate", json={"model": "tiny"})
            await client.request("DELETE", "/api/delete", json={"model": "tiny"})
            while (await client.get("/api/ps")).json()["models"]:
                await trio.sleep(0.01)


# ---- tools and images ----------------------------------------------------------------------------


async def test_tools_on_a_model_without_a_tools_template_are_a_400_by_default(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS}
    async with server.client() as client:
        r = await client.post("/api/chat", json=body)
    assert r.status_code == 400 and "does not support tools" in r.json()["error"]


async def test_drop_unsupported_tools_setting_answers_without_them_and_logs_once(
    tmp_path: Path, tiny_gguf: Path, caplog
):
    caplog.set_level(logging.WARNING, logger="appliance.api.routes.native")
    models = tmp_path / "models"
    add_model(models, "plain", tiny_gguf)
    body = {
        "model": "plain",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": TOOLS,
        "stream": False,
        "options": {"num_predict": 2},
    }
    with trio.fail_after(LIMIT):
        async with running_appliance(models, drop_unsupported_tools=True) as running:
            async with running.client() as client:
                first = await client.post("/api/chat", json=body)
                second = await client.post("/api/chat", json=body)
    assert first.status_code == second.status_code == 200
    assert first.json()["done"] is True
    dropped = [r for r in caplog.records if "dropping the tools" in r.getMessage()]
    assert len(dropped) == 1 and "plain" in dropped[0].getMessage()


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/api/generate", {"prompt": "what is this?", "images": [PIXEL]}),
        ("/api/chat", {"messages": [{"role": "user", "content": "what?", "images": [PIXEL]}]}),
    ],
)
async def test_images_to_a_model_without_vision_are_refused_not_dropped(server, route, body):
    async with server.client() as client:
        r = await client.post(route, json={"model": "tiny", "stream": False, **body})
    assert r.status_code == 400
    assert r.json()["error"].startswith("image input is not supported")


async def test_openai_image_part_to_a_model_without_vision_is_an_openai_400(server):
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PIXEL}}
    body = {"model": "tiny", "messages": [{"role": "user", "content": [part]}]}
    async with server.client() as client:
        r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("image input is not supported")


# ---- options Ollama removed ----------------------------------------------------------------------


async def test_removed_options_are_ignored_with_one_warning_each_per_process(server, caplog):
    caplog.set_level(logging.WARNING, logger="appliance.options")
    options = {"mirostat": 2, "tfs_z": 1.0, "penalize_newline": True, "numa": False,
               "low_vram": False, "use_mlock": False, "num_predict": 1}  # fmt: skip
    body = {"model": "tiny", "prompt": "hi", "stream": False, "options": options}
    async with server.client() as client:
        answers = [await client.post("/api/generate", json=body) for _ in range(3)]
    assert all(a.status_code == 200 for a in answers)
    warned = [r.getMessage() for r in caplog.records if r.name == "appliance.options"]
    for name in ("mirostat", "tfs_z", "penalize_newline", "numa", "low_vram", "use_mlock"):
        assert sum(f": {name} " in line for line in warned) <= 1


# ---- settings that reach the engine -------------------------------------------------------------


async def _loaded_size(models: Path, **settings: object) -> tuple[int, dict]:
    """The loaded size in /api/ps and a greedy 3-token answer (sampled, a random tiny model may
    draw its end token early, about one run in a hundred)."""
    async with running_appliance(models, num_parallel=1, **settings) as running:
        async with running.client() as client:
            r = await client.post(
                "/api/generate",
                json={"model": "tiny", "prompt": "hi", "stream": False,
                      "options": {"num_predict": 3, "num_ctx": 512, "temperature": 0}},
            )  # fmt: skip
            assert r.status_code == 200, r.text
            ps = (await client.get("/api/ps")).json()["models"]
    return ps[0]["size"], r.json()


async def test_quantized_kv_cache_with_flash_attention_is_smaller_in_ps(
    tmp_path, tiny_gguf_factory
):
    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf_factory(n_embd=128, n_head=4))  # heads of 32 values
    with trio.fail_after(LIMIT):
        f16, _ = await _loaded_size(models)
        q8, answer = await _loaded_size(models, flash_attention=True, kv_cache_type="q8_0")
        q4, _ = await _loaded_size(models, flash_attention=True, kv_cache_type="q4_0")
    assert q4 < q8 < f16
    assert answer["eval_count"] == 3  # the quantized cache decodes


async def test_quantized_kv_cache_without_flash_attention_falls_back_to_f16(tmp_path, tiny_gguf):
    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf)
    with trio.fail_after(LIMIT):
        f16, _ = await _loaded_size(models)
        off, answer = await _loaded_size(models, flash_attention=False, kv_cache_type="q8_0")
    assert off == f16 and answer["eval_count"] == 3


async def test_quantized_kv_cache_on_heads_it_cannot_split_falls_back_to_f16(tmp_path, tiny_gguf):
    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf)  # heads of 16 values: not whole q8_0 blocks
    with trio.fail_after(LIMIT):
        f16, _ = await _loaded_size(models)
        q8, answer = await _loaded_size(models, flash_attention=True, kv_cache_type="q8_0")
    assert q8 == f16 and answer["eval_count"] == 3


async def test_a_load_that_outlives_the_load_timeout_fails_and_is_freed_later(tmp_path, tiny_gguf):
    import threading
    import time

    from appliance.serving.llama_backend import _load_sync, make_loader

    freed = threading.Event()

    def stalled_load(spec, n_threads):  # type: ignore[no-untyped-def]
        time.sleep(1.5)
        backend = _load_sync(spec, n_threads)
        close = backend._close

        def recording_close() -> None:
            close()
            freed.set()

        backend._close = recording_close
        return backend

    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf)
    loader = make_loader(load_timeout=0.3, load_sync=stalled_load)
    with trio.fail_after(LIMIT):
        async with running_appliance(models, loader=loader) as running:
            async with running.client() as client:
                r = await client.post("/api/generate", json={"model": "tiny", "prompt": "hi"})
                ps = (await client.get("/api/ps")).json()["models"]
            while not freed.is_set():
                await trio.sleep(0.05)
    assert r.status_code == 500
    assert r.json()["error"].startswith("timed out waiting for llama runner to start")
    assert ps == []


def test_drop_unsupported_tools_is_read_from_the_variable_and_the_file(tmp_path: Path) -> None:
    from appliance.settings.config import load_settings

    none = tmp_path / "absent.toml"
    assert load_settings({}, default_config_path=none).drop_unsupported_tools is False
    on = load_settings({"LLM_APPLIANCE_DROP_UNSUPPORTED_TOOLS": "1"}, default_config_path=none)
    assert on.drop_unsupported_tools is True
    assert on.as_log_map()["LLM_APPLIANCE_DROP_UNSUPPORTED_TOOLS"] == "true"
    toml = tmp_path / "config.toml"
    toml.write_text("drop_unsupported_tools = true\n")
    assert load_settings({}, config_path=toml).drop_unsupported_tools is True
