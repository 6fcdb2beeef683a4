"""On-disk layout, manifest bytes, prune and crash safety of the model store.

Conventions: each test builds its store in `tmp_path` with real files; "an Ollama store" is laid
out by hand, byte for byte as Ollama v0.33 writes it, never through our own writer. Blob contents
are small byte strings except where a real GGUF is needed (the session's tiny model).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from appliance.errors import ApplianceError, NotFound
from appliance.store.layout import InvalidDigest, OutsideStore, atomic_write_bytes, under_root
from appliance.store.manifest import (
    MEDIA_MODEL,
    Layer,
    build_config,
    build_manifest,
    go_json,
    human_number,
)
from appliance.store.names import parse_model_name
from appliance.store.store import DigestMismatch, Store


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_blob(root: Path, data: bytes) -> str:
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    hexd = sha(data)
    (root / "blobs" / f"sha256-{hexd}").write_bytes(data)
    return hexd


def ollama_manifest(config_hex: str, config_size: int, layers: list[tuple[str, str, int]]) -> bytes:
    """Manifest bytes exactly as Ollama's WriteManifest encodes them (json.Encoder + newline)."""
    parts = ",".join(
        f'{{"mediaType":"{mt}","digest":"sha256:{d}","size":{n}}}' for mt, d, n in layers
    )
    return (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        f'"config":{{"mediaType":"application/vnd.docker.container.image.v1+json",'
        f'"digest":"sha256:{config_hex}","size":{config_size}}},"layers":[{parts}]}}\n'
    ).encode()


def lay_out_ollama_model(root: Path, rel: str, model_bytes: bytes, *, template: str = "") -> bytes:
    model_hex = put_blob(root, model_bytes)
    layers = [(MEDIA_MODEL, model_hex, len(model_bytes))]
    if template:
        t = template.encode()
        layers.append(("application/vnd.ollama.image.template", put_blob(root, t), len(t)))
    params = b'{"stop":["<end_of_turn>"],"temperature":1}'
    layers.append(("application/vnd.ollama.image.params", put_blob(root, params), len(params)))
    config = (
        b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],'
        b'"model_type":"1.2M","file_type":"F32","architecture":"amd64","os":"linux",'
        b'"rootfs":{"type":"layers","diff_ids":[]}}'
    )
    config_hex = put_blob(root, config)
    raw = ollama_manifest(config_hex, len(config), layers)
    path = root / "manifests" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return raw


def test_manifest_serialization_matches_ollama_bytes(tmp_path: Path) -> None:
    config = Layer("application/vnd.docker.container.image.v1+json", "sha256:" + "a" * 64, 10)
    layer = Layer(MEDIA_MODEL, "sha256:" + "b" * 64, 20, from_="m:latest")
    built = build_manifest(config, [layer]).raw
    expected = ollama_manifest("a" * 64, 10, [])[:-3] + (
        b'{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:'
        + b"b" * 64
        + b'","size":20,"from":"m:latest"}]}\n'
    )
    assert built == expected


def test_go_json_escapes_html_like_go() -> None:
    assert go_json({"stop": ["<end_of_turn>", "a&b"]}) == (
        b'{"stop":["\\u003cend_of_turn\\u003e","a\\u0026b"]}\n'
    )
    assert go_json("\u00e9") == '"\u00e9"\n'.encode()


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (8_000_000_000, "8B"),
        (3_212_749_888, "3.2B"),
        (137_000_000, "137M"),
        (268_098_176, "268.10M"),
        (12_345, "12K"),
        (999, "999"),
    ],
)
def test_human_number_like_ollama(n: int, text: str) -> None:
    assert human_number(n) == text


def test_config_blob_field_order_and_omitempty() -> None:
    raw = build_config(
        model_family="llama", model_families=["llama"], model_type="8B", file_type="Q4_K_M"
    )
    assert list(json.loads(raw)) == [
        "model_format",
        "model_family",
        "model_families",
        "model_type",
        "file_type",
        "architecture",
        "os",
        "rootfs",
    ]


def test_store_written_by_ollama_lists_and_resolves_as_is(tmp_path: Path) -> None:
    raw = lay_out_ollama_model(tmp_path, "registry.ollama.ai/library/llama3.2/latest", b"GGUF...")
    lay_out_ollama_model(tmp_path, "example.com/team/Mixed/v1", b"GGUF other")
    store = Store(tmp_path)
    models = {m.name.display_shortest(): m for m in store.list_models()}
    assert set(models) == {"llama3.2:latest", "example.com/team/Mixed:v1"}
    m = models["llama3.2:latest"]
    assert m.digest == sha(raw)
    assert m.params == {"stop": ["<end_of_turn>"], "temperature": 1}
    assert m.details()["family"] == "llama"
    assert m.size == sum(x.size for x in m.manifest.layers) + m.manifest.config.size
    assert store.resolve("LLAMA3.2:LATEST").name.model == "llama3.2"
    assert store.resolve("example.com/TEAM/mixed:V1").name.parts() == (
        "example.com",
        "team",
        "Mixed",
        "v1",
    )


def test_resolve_missing_is_not_found_with_ollama_wording(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="model 'nope' not found"):
        Store(tmp_path).resolve("nope")


def test_fix_blobs_renames_colon_names(tmp_path: Path) -> None:
    hexd = "c" * 64
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / f"sha256:{hexd}").write_bytes(b"x")
    assert Store(tmp_path).fix_blobs() == 1
    assert (tmp_path / "blobs" / f"sha256-{hexd}").read_bytes() == b"x"


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_prune_removes_only_stale_unreferenced_blobs_and_empty_dirs(tmp_path: Path) -> None:
    lay_out_ollama_model(tmp_path, "registry.ollama.ai/library/kept/latest", b"model")
    blobs = tmp_path / "blobs"
    for p in blobs.iterdir():
        _age(p, 7200)
    stale_orphan = blobs / f"sha256-{put_blob(tmp_path, b'orphan')}"
    fresh_orphan = blobs / f"sha256-{put_blob(tmp_path, b'fresh')}"
    stale_partial = blobs / f"sha256-{'d' * 64}-partial"
    stale_partial.write_bytes(b"half")
    _age(stale_orphan, 7200)
    _age(stale_partial, 7200)
    (tmp_path / "manifests" / "registry.ollama.ai" / "empty" / "dir").mkdir(parents=True)
    Store(tmp_path).prune()
    assert not stale_orphan.exists() and not stale_partial.exists()
    assert fresh_orphan.exists()
    assert not (tmp_path / "manifests" / "registry.ollama.ai" / "empty").exists()
    assert Store(tmp_path).resolve("kept").model_path.exists()  # type: ignore[union-attr]


def test_prune_does_nothing_when_a_manifest_is_unreadable(tmp_path: Path) -> None:
    lay_out_ollama_model(tmp_path, "registry.ollama.ai/library/kept/latest", b"model")
    bad = tmp_path / "manifests" / "registry.ollama.ai" / "library" / "bad" / "latest"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"{not json")
    orphan = tmp_path / "blobs" / f"sha256-{put_blob(tmp_path, b'orphan')}"
    _age(orphan, 7200)
    assert Store(tmp_path).prune() == []
    assert orphan.exists()


def test_paths_never_leave_the_root(tmp_path: Path) -> None:
    with pytest.raises(OutsideStore):
        under_root(tmp_path, "..", "etc")
    with pytest.raises(InvalidDigest):
        Store(tmp_path).blob_path("sha256-../../etc/passwd")
    with pytest.raises(InvalidDigest):
        Store(tmp_path).blob_path("sha256:" + "g" * 64)


def test_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["b"]


def test_manifest_of_a_crashed_write_is_never_listed(tmp_path: Path) -> None:
    """A kill between temp write and rename leaves `.tmp-*`: not a model, pruned once stale."""
    lay_out_ollama_model(tmp_path, "registry.ollama.ai/library/ok/latest", b"model")
    leftover = tmp_path / "manifests" / "registry.ollama.ai" / "library" / "ok" / ".tmp-latest-1"
    leftover.write_bytes(b"{")
    store = Store(tmp_path)
    assert [m.name.model for m in store.list_models()] == ["ok"]
    _age(leftover, 7200)
    store.prune()
    assert not leftover.exists()


def test_write_manifest_refuses_missing_blobs(tmp_path: Path) -> None:
    config = Layer("application/vnd.docker.container.image.v1+json", "sha256:" + "a" * 64, 1)
    store = Store(tmp_path)
    with pytest.raises(ValueError, match="missing blobs"):
        store.write_manifest(parse_model_name("m"), build_manifest(config, []).raw)
    assert store.list_models() == []


def test_blob_writer_verifies_digest_and_leaves_nothing_on_mismatch(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(DigestMismatch, match='digest mismatch, expected "sha256:'):
        with store.new_blob_writer("sha256:" + "0" * 64) as w:
            w.write(b"data")
            w.commit()
    assert os.listdir(tmp_path / "blobs") == []
    with store.new_blob_writer("sha256-" + sha(b"data")) as w:
        w.write(b"data")
        assert w.commit() == "sha256:" + sha(b"data")
    assert store.has_blob("sha256:" + sha(b"data"))


def test_copy_then_delete_keeps_shared_blobs(tmp_path: Path) -> None:
    raw = lay_out_ollama_model(tmp_path, "registry.ollama.ai/library/a/latest", b"model")
    store = Store(tmp_path)
    a, b = parse_model_name("a"), parse_model_name("ns/b:t")
    store.copy(a, b)
    assert store.manifest_path(b).read_bytes() == raw
    store.delete(a)
    assert not (tmp_path / "manifests" / "registry.ollama.ai" / "library").exists()
    kept = store.resolve("ns/b:t")
    assert kept.model_path is not None and kept.model_path.exists()
    store.delete(b)
    assert os.listdir(tmp_path / "blobs") == []
    assert os.listdir(tmp_path / "manifests") == []


def test_unwritable_store_gives_one_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_bytes(b"")
        root = blocker / "models"  # a path under a regular file can never be created
    else:
        root = tmp_path / "ro"
        root.mkdir(mode=0o500)
    with pytest.raises(ApplianceError) as info:
        Store(root).check_writable()
    assert str(root) in info.value.message and "not writable by user" in info.value.message


WRITER = """
import os, sys
from appliance.store.manifest import Layer, build_config, build_manifest, MEDIA_MODEL
from appliance.store.names import parse_model_name
from appliance.store.store import Store
store = Store(sys.argv[1])
for i in range(10_000):
    data = os.urandom(256 * 1024)
    digest = store.write_blob_bytes(data)
    config = build_config(model_family="llama")
    config_digest = store.write_blob_bytes(config)
    manifest = build_manifest(
        Layer("application/vnd.docker.container.image.v1+json", config_digest, len(config)),
        [Layer(MEDIA_MODEL, digest, len(data))],
    )
    store.write_manifest(parse_model_name(f"m{i}"), manifest.raw)
    print(i, flush=True)
"""


def test_a_killed_writer_leaves_only_complete_models(tmp_path: Path) -> None:
    """SIGKILL at an arbitrary point of a create loop: every listed model is whole."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        for _ in range(5):
            proc.stdout.readline()  # a few models are complete, the next one is under way
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    models = Store(tmp_path).list_models()
    assert len(models) >= 5
    for model in models:
        for digest in model.manifest.all_digests():
            blob = Store(tmp_path).blob_path(digest)
            assert "sha256:" + sha(blob.read_bytes()) == digest


def test_startup_fixes_names_and_prunes_unless_noprune(tmp_path: Path) -> None:
    lay_out_ollama_model(tmp_path, "registry.ollama.ai/library/kept/latest", b"model")
    orphan = tmp_path / "blobs" / f"sha256-{put_blob(tmp_path, b'orphan')}"
    _age(orphan, 7200)
    colon = tmp_path / "blobs" / f"sha256:{'e' * 64}"
    colon.write_bytes(b"x")
    Store(tmp_path).startup(noprune=True)
    assert orphan.exists() and not colon.exists()
    assert (tmp_path / "blobs" / f"sha256-{'e' * 64}").exists()
    Store(tmp_path).startup(noprune=False)
    assert not orphan.exists()
    assert Store(tmp_path).resolve("kept").model_path.exists()  # type: ignore[union-attr]
