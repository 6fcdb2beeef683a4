"""Decisions made in one place: a model's capabilities, its parsed prompt template, its GGUF header.

Conventions: the real server on 127.0.0.1 port 0 (`running_appliance`) with tiny generated
models; `/api/show` says what a model can do and `/api/chat` must accept exactly that
(reference/ollama-api.md §2.3: `"<model>" does not support chat`, `<full name> does not support
tools`, `"<model>" does not support thinking`). Every server test is bounded by fail_after.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from helpers import CONFIG_MEDIA, MEDIA, add_model, running_appliance
from toolkit import THINK_TEMPLATE, TOOLS_TEMPLATE

from appliance.serving.catalog import Catalog, SlotPolicy
from appliance.store.manifest import Layer, build_config, build_manifest
from appliance.store.names import parse_model_name
from appliance.store.store import GGUFInfoCache, Store

LIMIT = 60
OPTIONS = {"temperature": 0, "num_predict": 1}
USER = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def add_recorded_model(models_dir: Path, name: str, gguf: Path, caps: list[str]) -> None:
    """A model whose config records capabilities its files do not have (a pulled config can)."""
    store = Store(models_dir)
    layers = [
        Layer(MEDIA + "model", store.write_blob_from_file(gguf, link=True), gguf.stat().st_size)
    ]
    config = build_config(model_family="llama", model_families=["llama"], capabilities=caps)
    manifest = build_manifest(
        Layer(CONFIG_MEDIA, store.write_blob_bytes(config), len(config)), layers
    )
    store.write_manifest(parse_model_name(name), manifest.raw)


MODELS = {
    "plain": {},
    "tools": {"template": TOOLS_TEMPLATE},
    "thinker": {"template": THINK_TEMPLATE},
    "literal-think": {"template": "{{ .Prompt }}<think>"},
    "embedder": {"pooling": 1},
    "recorded": {"recorded": ["completion", "tools", "thinking"]},
}


async def _show_then_chat(running: Any, name: str) -> tuple[list[str], dict[str, Any]]:
    """`/api/show`'s capabilities, and the status and error `/api/chat` gives to a request with
    tools and to one with `think`."""
    answers: dict[str, Any] = {}
    with trio.fail_after(LIMIT):
        async with running.client() as client:
            shown = await client.post("/api/show", json={"model": name})
            caps = shown.json().get("capabilities") or []
            base = {"model": name, "messages": USER, "stream": False, "options": OPTIONS}
            for what, extra in (("tools", {"tools": [TOOL]}), ("think", {"think": True})):
                resp = await client.post("/api/chat", json={**base, **extra})
                answers[what] = (resp.status_code, resp.json().get("error", ""))
    return caps, answers


@pytest.mark.parametrize("name", list(MODELS))
async def test_show_and_chat_agree_on_what_a_model_can_do(
    tmp_path: Path, tiny_gguf_factory: Any, name: str
) -> None:
    knobs = dict(MODELS[name])
    models = tmp_path / "models"
    gguf = tiny_gguf_factory(pooling=knobs.pop("pooling")) if "pooling" in knobs else None
    gguf = gguf or tiny_gguf_factory()
    if "recorded" in knobs:
        add_recorded_model(models, name, gguf, knobs["recorded"])
    else:
        add_model(models, name, gguf, template=knobs.get("template"))
    async with running_appliance(models) as running:
        caps, answers = await _show_then_chat(running, name)
    assert caps, "every model has at least completion or embedding"
    for what, cap in (("tools", "tools"), ("think", "thinking")):
        status, error = answers[what]
        if "completion" not in caps:
            assert (status, error) == (400, f'"{name}" does not support chat')
        elif cap in caps:
            assert status == 200, (what, caps, error)
        else:
            assert status == 400, (what, caps, error)
            assert error.endswith(f"does not support {cap}"), error


async def _prompt_tokens(client: Any, name: str) -> int:
    body = {"model": name, "prompt": "hi", "stream": False, "options": OPTIONS}
    resp = await client.post("/api/generate", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()["prompt_eval_count"]


async def test_a_name_recreated_with_another_template_is_rendered_with_the_new_one(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    models = tmp_path / "models"
    add_model(models, "m", tiny_gguf, template="{{ .Prompt }}")
    add_model(models, "twin", tiny_gguf, template="{{ .Prompt }}")  # keeps the weights loaded
    long = "one two three four five six seven eight nine ten {{ .Prompt }}"
    async with running_appliance(models) as running:
        with trio.fail_after(LIMIT):
            async with running.client() as client:
                short_count = await _prompt_tokens(client, "m")
                deleted = await client.request("DELETE", "/api/delete", json={"model": "m"})
                assert deleted.status_code == 200, deleted.text
                add_model(models, "m", tiny_gguf, template=long)
                long_count = await _prompt_tokens(client, "m")
    assert long_count >= short_count + 10


def _local(path: Path, template: str, digest: str) -> Any:
    return SimpleNamespace(model_path=path, template=template, digest=digest)


def _facts() -> Any:
    return SimpleNamespace(chat_template=None, bos_text="", eos_text="")


async def test_a_parsed_template_is_kept_until_newer_ones_push_it_out(
    tiny_gguf: Path, template_parses: list[str]
) -> None:
    parses = template_parses
    catalog = Catalog(SlotPolicy(num_parallel=1, default_num_ctx=512))
    first = _local(tiny_gguf, "first {{ .Prompt }}", "0" * 64)
    assert await catalog.prompt_template(first, _facts()) is await catalog.prompt_template(
        first, _facts()
    )
    assert len(parses) == 1
    for i in range(Catalog.TEMPLATE_CACHE):
        await catalog.prompt_template(
            _local(tiny_gguf, f"t{i} {{{{ .Prompt }}}}", f"{i}"), _facts()
        )
    parses.clear()
    await catalog.prompt_template(first, _facts())
    assert parses == ["first {{ .Prompt }}"]  # pushed out, so parsed again


async def test_a_request_template_is_never_kept(tiny_gguf: Path) -> None:
    catalog = Catalog(SlotPolicy(num_parallel=1, default_num_ctx=512))
    model = _local(tiny_gguf, "{{ .Prompt }}", "0" * 64)
    own = await catalog.prompt_template(model, _facts(), "mine: {{ .Prompt }}")
    assert own.go_template == "mine: {{ .Prompt }}"
    assert (await catalog.prompt_template(model, _facts())).go_template == "{{ .Prompt }}"


def test_the_gguf_header_cache_is_bounded(tiny_gguf_factory: Any) -> None:
    cache = GGUFInfoCache(limit=2)
    paths = [tiny_gguf_factory(n_ctx_train=256 + i) for i in range(3)]
    for path in paths:
        cache.get(path)
    assert len(cache) == 2
    assert cache.peek(paths[0]) is None
    assert cache.peek(paths[2]) is not None


async def test_the_catalog_reads_headers_through_the_stores_cache(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    store = Store(tmp_path / "models")
    catalog = Catalog(SlotPolicy(num_parallel=1, default_num_ctx=512), store.gguf_infos)
    info = await catalog.info(tiny_gguf)
    assert store.gguf_info(tiny_gguf) is info


def _spec(**fields: Any) -> Any:
    from appliance.serving.backend import LoadSpec

    return LoadSpec(key="m", model_path=None, n_seq=1, **{"num_ctx": 2048, **fields})


def test_a_runner_with_at_least_the_requested_context_serves_it_without_options() -> None:
    """A spec built by hand (no planned options) follows the same reload rule as a planned one."""
    big, small = _spec(num_ctx=4096), _spec(num_ctx=2048)
    assert big.can_serve(small)
    assert small.reload_reasons(big) == ["num_ctx 2048 -> 4096"]


async def test_a_planned_runner_with_a_larger_context_serves_a_smaller_request(
    tiny_gguf: Path,
) -> None:
    from appliance.options import resolve_options

    catalog = Catalog(SlotPolicy(num_parallel=1, default_num_ctx=256))
    model = SimpleNamespace(name=parse_model_name("tiny"), model_path=tiny_gguf, adapters=[])
    plan = catalog.plan

    def opts(num_ctx: int) -> Any:
        return resolve_options(None, {"num_ctx": num_ctx}, default_num_ctx=256)

    loaded, wanted = await plan(model, opts(512)), await plan(model, opts(128))
    assert loaded.can_serve(wanted)
    assert not wanted.can_serve(loaded)


async def test_a_generation_models_memory_counts_its_host_ram_prompt_states(
    tiny_gguf_factory: Any,
) -> None:
    """The RAM prompt store (LLM_APPLIANCE_CACHE_RAM) is part of what a load costs against the
    budget; an embedding model keeps no prompt states."""
    from appliance.options import resolve_options

    states = 256 << 20
    plain = Catalog(SlotPolicy(num_parallel=1, default_num_ctx=256))
    cached = Catalog(SlotPolicy(num_parallel=1, default_num_ctx=256, prompt_states_bytes=states))
    options = resolve_options(None, {}, default_num_ctx=256)

    async def memory(catalog: Catalog, path: Path) -> int:
        model = SimpleNamespace(name=parse_model_name("m"), model_path=path, adapters=[])
        return (await catalog.plan(model, options)).memory_bytes

    generator, embedder = tiny_gguf_factory(), tiny_gguf_factory(pooling=1)
    assert await memory(cached, generator) == await memory(plain, generator) + states
    assert await memory(cached, embedder) == await memory(plain, embedder)
