"""End to end: the official `ollama` Python client manages models on the real server.

Conventions: the real app (`create_app` with a real Store in `tmp_path`, no scheduler: these routes
need none) is served by hypercorn's trio worker in this process on 127.0.0.1 port 0; the
synchronous `ollama` client runs in a worker thread. Bounded by `trio.fail_after`; nothing asserts
a duration.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from appliance.api.app import create_app
from appliance.api.context import Services
from appliance.config import Settings
from appliance.store.store import Store

ollama = pytest.importorskip("ollama")

TIMEOUT = 120


async def test_ollama_client_creates_lists_shows_copies_and_deletes(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    settings = Settings.for_tests(models_dir=tmp_path / "models", host="127.0.0.1")
    store = Store(settings.models_dir)
    store.startup(noprune=False)
    app = create_app(Services(settings, store, scheduler=None))  # type: ignore[arg-type]
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    stop = trio.Event()

    def session(host: str) -> dict[str, object]:
        client = ollama.Client(host=host, trust_env=False)
        seen: dict[str, object] = {}
        digest = client.create_blob(tiny_gguf)
        seen["create"] = [
            p.status for p in client.create("tiny", files={"tiny.gguf": digest}, stream=True)
        ]
        done = client.create(
            "tiny-chat",
            from_="tiny",
            system="You are terse.",
            parameters={"temperature": 0.2, "stop": ["<end>"]},
            license="MIT",
        )
        seen["create_from"] = done.status
        seen["list"] = sorted(m.model for m in client.list().models)
        shown = client.show("tiny-chat")
        seen["show"] = (
            shown.modelfile,
            shown.license,
            shown.details.parent_model,
            shown.details.family,
            shown.modelinfo["general.architecture"],
            shown.capabilities,
            shown.parameters,
        )
        seen["copy"] = client.copy("tiny-chat", "me/copied:v1").status
        seen["delete"] = client.delete("tiny-chat").status
        seen["after"] = sorted(m.model for m in client.list().models)
        with pytest.raises(ollama.ResponseError) as missing:
            client.show("tiny-chat")
        seen["missing"] = (missing.value.status_code, missing.value.error)
        return seen

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as server_nursery:
            binds = await server_nursery.start(
                lambda task_status: serve(
                    app, config, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            try:
                seen = await trio.to_thread.run_sync(session, binds[0])
            finally:
                stop.set()

    assert seen["create"][0] == "parsing GGUF" and seen["create"][-1] == "success"
    assert seen["create_from"] == "success"
    assert seen["list"] == ["tiny-chat:latest", "tiny:latest"]
    system, license_text, parent, family, arch, caps, params = seen["show"]
    assert "SYSTEM You are terse.\n" in system
    assert (license_text, parent, family, arch) == (
        "MIT",
        "tiny:latest",
        "llama",
        "llama",
    )
    assert "completion" in caps
    assert 'stop                           "<end>"' in params
    assert seen["copy"] == "success" and seen["delete"] == "success"
    assert seen["after"] == ["me/copied:v1", "tiny:latest"]
    assert seen["missing"] == (404, "model 'tiny-chat' not found")
