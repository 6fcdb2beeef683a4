"""End to end: the official `ollama` Python client pulls through a proxy, then generates.

Conventions: the real service (`appliance.host.server.Appliance`, real llama.cpp loader) runs in this
process on 127.0.0.1 port 0, with HTTPS_PROXY/HTTP_PROXY in its Settings pointing at the loopback
`ProxyPeer`, the only way to reach `registry.test` (a loopback `RegistryPeer` serving a tiny GGUF).
The `ollama` client is synchronous, so it runs in a worker thread. Bounded by `trio.fail_after`;
nothing asserts a duration.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from peers.proxy import ProxyPeer
from peers.registry import RegistryPeer

from appliance.host.server import Appliance
from appliance.settings.config import Settings

ollama = pytest.importorskip("ollama")

TIMEOUT = 120


@pytest.mark.slow
async def test_ollama_client_pulls_through_proxy_then_generates(nursery, tmp_path: Path, tiny_gguf):
    registry = RegistryPeer("registry.test")
    registry.add_model("library/tiny", "latest", tiny_gguf.read_bytes())
    await nursery.start(registry.serve)
    proxy = ProxyPeer(names={"registry.test": ("127.0.0.1", registry.port)})
    await nursery.start(proxy.serve)
    settings = Settings.for_tests(
        models_dir=tmp_path / "models",
        https_proxy=proxy.url,
        http_proxy=proxy.url,
        import_reference=False,
    )
    appliance = Appliance(settings)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as server_nursery:
            binds = await server_nursery.start(appliance.run)
            client = ollama.Client(host=binds[0].replace("0.0.0.0", "127.0.0.1"), trust_env=False)

            def pull_and_generate() -> tuple[list[str], list[str], object]:
                statuses = [
                    p.status
                    for p in client.pull("registry.test/library/tiny", insecure=True, stream=True)
                ]
                names = [m.model for m in client.list().models]
                answer = client.generate(
                    model="registry.test/library/tiny",
                    prompt="the",
                    options={"num_predict": 4, "temperature": 0},
                )
                return statuses, names, answer

            try:
                statuses, names, answer = await trio.to_thread.run_sync(pull_and_generate)
            finally:
                appliance.request_shutdown()

    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert any(url.startswith("http://registry.test/") for url in proxy.forwards)
    assert "registry.test/library/tiny:latest" in names
    assert answer.done and answer.eval_count >= 1
