"""Helpers for tests that talk to a real server: models in a store, a running appliance.

`running_appliance` starts the real service (hypercorn's trio worker, the real scheduler and
llama.cpp engine) in the test's own trio run, on 127.0.0.1 port 0.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from appliance.host.server import Appliance
from appliance.settings.config import Settings
from appliance.store.manifest import Layer, build_config, build_manifest
from appliance.store.names import parse_model_name
from appliance.store.store import Store

CONFIG_MEDIA = "application/vnd.docker.container.image.v1+json"
MEDIA = "application/vnd.ollama.image."


def add_model(
    models_dir: Path,
    name: str,
    gguf: Path,
    *,
    template: str | None = None,
    system: str | None = None,
    params: dict[str, Any] | None = None,
    family: str = "llama",
) -> str:
    """Register `gguf` in an Ollama-layout store as `name` (a hard link, no copy)."""
    store = Store(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    layers = [
        Layer(MEDIA + "model", store.write_blob_from_file(gguf, link=True), gguf.stat().st_size)
    ]
    for media, text in (("template", template), ("system", system)):
        if text is not None:
            data = text.encode()
            layers.append(Layer(MEDIA + media, store.write_blob_bytes(data), len(data)))
    if params:
        data = json.dumps(params).encode()
        layers.append(Layer(MEDIA + "params", store.write_blob_bytes(data), len(data)))
    config = build_config(model_family=family, model_families=[family])
    manifest = build_manifest(
        Layer(CONFIG_MEDIA, store.write_blob_bytes(config), len(config)), layers
    )
    store.write_manifest(parse_model_name(name), manifest.raw)
    return name


@dataclass
class Running:
    url: str
    appliance: Appliance

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", 60)
        return httpx.AsyncClient(base_url=self.url, **kwargs)


@asynccontextmanager
async def running_appliance(models_dir: Path, **overrides: Any) -> AsyncIterator[Running]:
    grace = overrides.pop("grace", 2.0)
    loader = overrides.pop("loader", None)
    downloads = overrides.pop("downloads", None)
    http_keep_alive = overrides.pop("http_keep_alive", 5.0)
    overrides.setdefault("import_reference", False)
    overrides.setdefault("num_parallel", 2)
    settings = Settings.for_tests(models_dir=models_dir, host="127.0.0.1", **overrides)
    appliance = Appliance(
        settings, grace=grace, loader=loader, http_keep_alive=http_keep_alive, downloads=downloads
    )
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(appliance.run)
        try:
            yield Running(binds[0], appliance)
        finally:
            appliance.request_shutdown()


async def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) async for line in response.aiter_lines() if line.strip()]


async def native_chat(
    running: Running, model: str, system: str, messages: list[dict[str, Any]], num_predict: int
) -> dict[str, Any]:
    """The native /api/chat answer (greedy, whole) that a compatibility route's answer to the same
    conversation is checked against."""
    async with running.client(timeout=300) as client:
        native = await client.post(
            "/api/chat",
            json={
                "model": model,
                "stream": False,
                "options": {"temperature": 0, "num_predict": num_predict},
                "messages": [{"role": "system", "content": system}, *messages],
            },
        )
    return native.json()


async def read_response(stream: trio.SocketStream) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        body += chunk
    return status, body[:length]
