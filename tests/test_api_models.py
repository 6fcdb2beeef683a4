"""Model management routes (tags, show, copy, delete, create, blobs) against Ollama's shapes.

Conventions: each test gets a fresh store in `tmp_path` and the real app from `create_app` driven by
Quart's test client (in-process ASGI, no sockets); models are made from the session's tiny GGUF
through the real upload + create routes. No scheduler is involved (`scheduler=None`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance.api.app import create_app
from appliance.api.context import Services
from appliance.settings.config import Settings
from appliance.store.store import Store

Client = Any


def make_client(tmp_path: Path, **settings: Any) -> tuple[Client, Store]:
    config = Settings.for_tests(models_dir=tmp_path / "models", **settings)
    store = Store(config.models_dir)
    store.check_writable()
    app = create_app(Services(config, store, scheduler=None))  # type: ignore[arg-type]
    return app.test_client(), store


@pytest.fixture
def client_store(tmp_path: Path) -> tuple[Client, Store]:
    return make_client(tmp_path)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def posted(client: Client, path: str, body: dict[str, Any]) -> Any:
    """The answer to a JSON POST of `body` to `path`, within 10 s."""
    with trio.fail_after(10):
        return await client.post(path, json=body)


async def upload(client: Client, data: bytes) -> str:
    digest = digest_of(data)
    resp = await client.post(f"/api/blobs/{digest}", data=data)
    assert resp.status_code in (200, 201)
    return digest


async def post_streaming(client: Client, path: str, body: dict[str, Any]) -> bytes:
    """POST and read the body as it streams (the test client's plain `post` buffers only 10
    chunks before the app blocks, too few for a pull's progress lines)."""
    data = bytearray()
    async with client.request(
        path, method="POST", headers={"Content-Type": "application/json"}
    ) as conn:
        await conn.send(json.dumps(body).encode())
        await conn.send_complete()
        while True:
            try:
                data += await conn.receive()
            except trio.EndOfChannel:
                break
    return bytes(data)


def lines(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(x) for x in body.decode().splitlines() if x]


async def create_tiny(client: Client, tiny_gguf: Path, name: str = "tiny", **extra: Any) -> list:
    digest = await upload(client, tiny_gguf.read_bytes())
    resp = await client.post(
        "/api/create", json={"model": name, "files": {"tiny.gguf": digest}, **extra}
    )
    assert resp.status_code == 200, await resp.get_data()
    assert resp.content_type == "application/x-ndjson"
    return lines(await resp.get_data())


async def test_tags_of_an_empty_store_is_an_empty_list(client_store: tuple[Client, Store]) -> None:
    client, _ = client_store
    with trio.fail_after(10):
        resp = await client.get("/api/tags")
        assert resp.status_code == 200
        assert await resp.get_json() == {"models": []}
        assert (await client.head("/api/tags")).status_code == 200


async def test_create_from_uploaded_gguf_streams_ollama_progress(
    client_store: tuple[Client, Store], tiny_gguf: Path
) -> None:
    client, _ = client_store
    with trio.fail_after(30):
        progress = await create_tiny(client, tiny_gguf)
    statuses = [p["status"] for p in progress]
    assert statuses[0] == "parsing GGUF"
    assert statuses[1].startswith("using existing layer sha256:")
    assert statuses[-2:] == ["writing manifest", "success"]


async def test_create_with_stream_false_returns_only_the_last_object(
    client_store: tuple[Client, Store], tiny_gguf: Path
) -> None:
    client, _ = client_store
    with trio.fail_after(30):
        digest = await upload(client, tiny_gguf.read_bytes())
        resp = await client.post(
            "/api/create", json={"model": "t", "files": {"a.gguf": digest}, "stream": False}
        )
        assert resp.status_code == 200
        assert resp.content_type == "application/json"
        assert await resp.get_json() == {"status": "success"}


async def test_tags_lists_models_newest_first_with_ollama_fields(
    client_store: tuple[Client, Store], tiny_gguf: Path
) -> None:
    client, store = client_store
    with trio.fail_after(30):
        await create_tiny(client, tiny_gguf, "older")
        await create_tiny(client, tiny_gguf, "ns/newer:v1")
        old = store.manifest_path(store.resolve("older").name)
        os.utime(old, (1_600_000_000, 1_600_000_000))
        models = (await (await client.get("/api/tags")).get_json())["models"]
    assert [m["name"] for m in models] == ["ns/newer:v1", "older:latest"]
    entry = models[1]
    assert entry["model"] == "older:latest"
    assert entry["digest"] == hashlib.sha256(old.read_bytes()).hexdigest()
    assert entry["modified_at"].startswith("2020-09-13T") or "2020-09-1" in entry["modified_at"]
    assert entry["details"]["format"] == "gguf"
    assert entry["details"]["family"] == "llama"
    assert entry["details"]["parent_model"] == ""
    assert "completion" in entry["capabilities"]
    assert "expires_at" not in entry
    assert entry["size"] == store.resolve("older").size


async def test_blob_head_and_post_follow_ollama(client_store: tuple[Client, Store]) -> None:
    client, store = client_store
    data = b"some blob bytes"
    digest = digest_of(data)
    with trio.fail_after(10):
        assert (await client.head("/api/blobs/sha256:xyz")).status_code == 400
        assert (await client.head(f"/api/blobs/{digest}")).status_code == 404
        assert (await client.post(f"/api/blobs/{digest}", data=data)).status_code == 201
        assert (await client.head(f"/api/blobs/{digest}")).status_code == 200
        assert (await client.post(f"/api/blobs/{digest}", data=b"ignored")).status_code == 200
        dash = "sha256-" + digest[7:]
        assert (await client.head(f"/api/blobs/{dash}")).status_code == 200
        bad = await client.post("/api/blobs/sha256:nothex", data=data)
        assert bad.status_code == 400
        assert await bad.get_json() == {"error": "invalid digest format"}


async def test_blob_digest_mismatch_is_400_and_leaves_no_file(
    client_store: tuple[Client, Store],
) -> None:
    client, store = client_store
    claimed = "sha256:" + "0" * 64
    with trio.fail_after(10):
        resp = await client.post(f"/api/blobs/{claimed}", data=b"other bytes")
    assert resp.status_code == 400
    assert (await resp.get_json())["error"] == (
        f'digest mismatch, expected "{claimed}", got "{digest_of(b"other bytes")}"'
    )
    assert os.listdir(store.blobs_dir) == []


async def test_large_upload_streams_to_disk(client_store: tuple[Client, Store]) -> None:
    client, store = client_store
    data = os.urandom(9 * 1024 * 1024 + 7)
    with trio.fail_after(30):
        digest = await upload(client, data)
    assert store.blob_path(digest).read_bytes() == data


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m"}, "neither 'from' or 'files' was specified"),
        (
            {"model": "m", "files": {"../x.gguf": "sha256:" + "a" * 64}},
            "file path must be relative",
        ),
        (
            {"model": "m", "files": {"/abs.gguf": "sha256:" + "a" * 64}},
            "file path must be relative",
        ),
        ({"model": "m", "files": {"x.gguf": ""}}, "invalid digest format"),
        ({"model": "bad/name/x/y", "from": "tiny"}, "invalid model name"),
        ({"model": "", "from": "tiny"}, "invalid model name"),
    ],
)
async def test_create_validation_errors_are_400_with_ollama_wording(
    client_store: tuple[Client, Store], body: dict[str, Any], message: str
) -> None:
    client, _ = client_store
    resp = await posted(client, "/api/create", body)
    assert resp.status_code == 400
    assert await resp.get_json() == {"error": message}


async def test_create_rejects_a_file_that_is_not_gguf(client_store: tuple[Client, Store]) -> None:
    client, store = client_store
    with trio.fail_after(10):
        digest = await upload(client, b"not a gguf at all")
        resp = await client.post(
            "/api/create", json={"model": "m", "files": {"m.gguf": digest}, "stream": False}
        )
        assert resp.status_code == 400
        assert await resp.get_json() == {"error": "supplied file was not in GGUF format"}
        streamed = await client.post(
            "/api/create", json={"model": "m", "files": {"m.gguf": digest}}
        )
        assert lines(await streamed.get_data()) == [
            {"status": "parsing GGUF"},
            {"error": "supplied file was not in GGUF format"},
        ]
    assert store.list_models() == []


async def test_create_rejects_a_bad_template(
    client_store: tuple[Client, Store], tiny_gguf: Path
) -> None:
    client, store = client_store
    with trio.fail_after(30):
        await create_tiny(client, tiny_gguf)
        resp = await client.post(
            "/api/create", json={"model": "t2", "from": "tiny", "template": "{{ .Prompt "}
        )
    assert resp.status_code == 400
    assert (await resp.get_json())["error"].startswith("template error: ")
    assert [m.name.model for m in store.list_models()] == ["tiny"]


async def test_create_from_a_model_replaces_and_merges_layers(
    client_store: tuple[Client, Store], tiny_gguf: Path
) -> None:
    client, store = client_store
    with trio.fail_after(30):
        await create_tiny(
            client, tiny_gguf, system="base system", parameters={"temperature": 0.5, "top_k": 10}
        )
        resp = await client.post(
            "/api/create",
            json={
                "model": "child",
                "from": "TINY",
                "template": "{{ if .Tools }}tools{{ end }}{{ .Prompt }}",
                "system": "child system",
                "license": ["MIT text"],
                "parameters": {"temperature": 1.0, "stop": ["<end>", "###"]},
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ],
            },
        )
        progress = lines(await resp.get_data())
    assert progress[-1] == {"status": "success"}
    assert any(p["status"].startswith("creating new layer sha256:") for p in progress)
    child = store.resolve("child")
    assert child.parent_model == "tiny:latest"
    assert child.system == "child system"
    assert child.template == "{{ if .Tools }}tools{{ end }}{{ .Prompt }}"
    assert child.params == {"stop": ["<end>", "###"], "temperature": 1, "top_k": 10}
    assert child.license == ["MIT text"]
    assert child.messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]
    assert "tools" in store.capabilities(child)
    assert store.resolve("tiny").system == "base system"


async def test_create_from_a_model_not_present_pulls_it_first(
    nursery: trio.Nursery, tmp_path: Path, tiny_gguf: Path
) -> None:
    from peers.proxy import ProxyPeer
    from peers.registry import RegistryPeer

    registry = RegistryPeer("registry.test")
    registry.add_model("library/tiny", "latest", tiny_gguf.read_bytes())
    await nursery.start(registry.serve)
    proxy = ProxyPeer(names={"registry.test": ("127.0.0.1", registry.port)})
    await nursery.start(proxy.serve)
    client, store = make_client(tmp_path, https_proxy=proxy.url, http_proxy=proxy.url)
    with trio.fail_after(60):
        body = await post_streaming(
            client,
            "/api/create",
            {"model": "mine", "from": "http://registry.test/library/tiny", "system": "hi"},
        )
        progress = [p["status"] for p in lines(body)]
    assert progress[0] == "pulling manifest"
    assert progress[-2:] == ["writing manifest", "success"]
    assert store.resolve("registry.test/library/tiny").model_path is not None
    mine = store.resolve("mine")
    assert mine.parent_model == "registry.test/library/tiny:latest" and mine.system == "hi"


async def test_create_from_a_model_that_cannot_be_pulled_creates_nothing(
    client_store: tuple[Client, Store],
) -> None:
    client, store = client_store
    with trio.fail_after(30):
        resp = await client.post(
            "/api/create",
            json={"model": "m", "from": "http://127.0.0.1:1/library/absent", "stream": False},
        )
    assert resp.status_code >= 400
    assert "error" in await resp.get_json()
    assert store.list_models() == []


async def test_recreating_a_model_prunes_layers_it_no_longer_uses(
    client_store: tuple[Client, Store], tiny_gguf: Path
) -> None:
    client, store = client_store
    with trio.fail_after(30):
        await create_tiny(client, tiny_gguf, system="first")
        first = store.resolve("tiny")
        await create_tiny(client, tiny_gguf, system="second")
    gone = [
        d
        for d in first.manifest.all_digests()
        if d not in store.resolve("tiny").manifest.all_digests()
    ]
    assert gone and not any(store.has_blob(d) for d in gone)


async def test_recreating_keeps_old_layers_with_noprune(tmp_path: Path, tiny_gguf: Path) -> None:
    client, store = make_client(tmp_path, noprune=True)
    with trio.fail_after(30):
        await create_tiny(client, tiny_gguf, system="first")
        first = store.resolve("tiny")
        await create_tiny(client, tiny_gguf, system="second")
    assert all(store.has_blob(d) for d in first.manifest.all_digests())


async def test_show_returns_ollama_fields(
    client_store: tuple[Client, Store], tiny_gguf: Path
) -> None:
    client, store = client_store
    with trio.fail_after(30):
        await create_tiny(
            client,
            tiny_gguf,
            system="be brief",
            parameters={"temperature": 0.7, "stop": ["<end>"]},
            license="Some license",
            messages=[{"role": "user", "content": "x"}],
        )
        await client.post("/api/copy", json={"source": "tiny", "destination": "tiny2"})
        await client.post("/api/create", json={"model": "kid", "from": "tiny2"})
        resp = await client.post("/api/show", json={"model": "kid"})
        body = await resp.get_json()
        verbose = await (
            await client.post("/api/show", json={"name": "kid", "verbose": True})
        ).get_json()
    kid = store.resolve("kid")
    assert resp.status_code == 200
    assert body["license"] == "Some license"
    assert body["system"] == "be brief"
    assert body["modelfile"].startswith(
        '# Modelfile generated by "ollama show"\n# To build a new Modelfile based on this, '
        f"replace FROM with:\n# FROM kid:latest\n\nFROM {kid.model_path}\n"
    )
    assert "PARAMETER stop <end>\n" in body["modelfile"]
    assert "SYSTEM be brief\n" in body["modelfile"]
    assert "MESSAGE user x\n" in body["modelfile"]
    assert sorted(body["parameters"].split("\n")) == [
        'stop                           "<end>"',
        "temperature                    0.7",
    ]
    assert body["template"] == store.gguf_info(kid.model_path).chat_template
    assert body["details"]["parent_model"] == "tiny2:latest"
    assert body["messages"] == [{"role": "user", "content": "x"}]
    info = body["model_info"]
    assert "general.name" not in info and "tokenizer.chat_template" not in info
    assert info["general.architecture"] == "llama"
    assert info["tokenizer.ggml.tokens"] == []
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) > 5
    assert list(info) == sorted(info)
    assert body["tensors"][0].keys() == {"name", "type", "shape"}
    assert "completion" in body["capabilities"]
    assert body["modified_at"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "model is required"),
        ({"model": "absent"}, 404, "model 'absent' not found"),
        ({"model": "../x"}, 400, "invalid model name"),
    ],
)
async def test_show_errors(
    client_store: tuple[Client, Store], body: dict[str, Any], status: int, message: str
) -> None:
    client, _ = client_store
    resp = await posted(client, "/api/show", body)
    assert resp.status_code == status
    assert await resp.get_json() == {"error": message}


async def test_show_with_empty_body_is_missing_request_body(
    client_store: tuple[Client, Store],
) -> None:
    client, _ = client_store
    with trio.fail_after(10):
        resp = await client.post("/api/show", data=b"")
    assert resp.status_code == 400
    assert await resp.get_json() == {"error": "missing request body"}


async def test_copy_copies_the_manifest_bytes_and_answers_empty(
    client_store: tuple[Client, Store], tiny_gguf: Path
) -> None:
    client, store = client_store
    with trio.fail_after(30):
        await create_tiny(client, tiny_gguf)
        resp = await client.post("/api/copy", json={"source": "Tiny", "destination": "me/copy:v2"})
        assert resp.status_code == 200
        assert await resp.get_data() == b""
        same = await client.post("/api/copy", json={"source": "tiny", "destination": "tiny"})
        assert same.status_code == 200
    src = store.manifest_path(store.resolve("tiny").name).read_bytes()
    assert store.manifest_path(store.resolve("me/copy:v2").name).read_bytes() == src


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"source": "absent", "destination": "x"}, 404, 'model "absent" not found'),
        ({"source": "a/", "destination": "x"}, 400, 'source "a/" is invalid'),
        ({"source": "absent", "destination": ""}, 400, 'destination "" is invalid'),
    ],
)
async def test_copy_errors(
    client_store: tuple[Client, Store], body: dict[str, Any], status: int, message: str
) -> None:
    client, _ = client_store
    resp = await posted(client, "/api/copy", body)
    assert resp.status_code == status
    assert await resp.get_json() == {"error": message}


async def test_delete_removes_manifest_and_unshared_blobs(
    client_store: tuple[Client, Store], tiny_gguf: Path
) -> None:
    client, store = client_store
    with trio.fail_after(30):
        await create_tiny(client, tiny_gguf, system="only in a")
        await client.post("/api/create", json={"model": "b", "from": "tiny", "system": "only b"})
        a = store.resolve("tiny")
        resp = await client.delete("/api/delete", json={"model": "TINY"})
        assert resp.status_code == 200
        assert await resp.get_data() == b""
        again = await client.delete("/api/delete", json={"model": "tiny"})
        assert again.status_code == 404
        assert await again.get_json() == {"error": "model 'tiny' not found"}
        invalid = await client.delete("/api/delete", json={})
        assert invalid.status_code == 400
        assert await invalid.get_json() == {"error": 'name "" is invalid'}
    b = store.resolve("b")
    assert b.model_path is not None and b.model_path.exists()  # shared weights survive
    a_only = set(a.manifest.all_digests()) - set(b.manifest.all_digests())
    assert a_only and not any(store.has_blob(d) for d in a_only)


async def test_delete_does_not_break_an_open_model_file(
    client_store: tuple[Client, Store], tiny_gguf: Path
) -> None:
    client, store = client_store
    with trio.fail_after(30):
        await create_tiny(client, tiny_gguf)
        path = store.resolve("tiny").model_path
        assert path is not None
        with open(path, "rb") as held:
            await client.delete("/api/delete", json={"model": "tiny"})
            assert not path.exists()
            assert held.read(4) == b"GGUF"
