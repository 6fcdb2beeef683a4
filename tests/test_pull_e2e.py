"""End to end: the official `ollama` Python client pulls through a proxy, then generates.

Conventions: the real service (tests/helpers.py `running_appliance`, real llama.cpp loader) runs in
this process on 127.0.0.1 port 0, with HTTPS_PROXY/HTTP_PROXY in its Settings pointing at the
loopback `ProxyPeer`, the only way to reach `registry.test` (a loopback `RegistryPeer` serving a
tiny GGUF; both are the fixtures of tests/pullkit.py).
The `ollama` client is synchronous, so it runs in a worker thread. Bounded by `trio.fail_after`;
nothing asserts a duration.
"""

from __future__ import annotations

from pathlib import Path

import ollama
import pytest
import trio
from helpers import running_appliance
from peers.proxy import ProxyPeer

TIMEOUT = 120


@pytest.mark.slow
async def test_ollama_client_pulls_through_proxy_then_generates(tmp_path: Path, proxy: ProxyPeer):
    with trio.fail_after(TIMEOUT):
        async with running_appliance(
            tmp_path / "models", https_proxy=proxy.url, http_proxy=proxy.url
        ) as server:
            client = ollama.Client(host=server.url, trust_env=False)

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

            statuses, names, answer = await trio.to_thread.run_sync(pull_and_generate)

    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert any(url.startswith("http://registry.test/") for url in proxy.forwards)
    assert "registry.test/library/tiny:latest" in names
    assert answer.done and answer.eval_count >= 1
