"""Manifests and config blobs, serialized byte for byte as Ollama writes them.

Ollama encodes with Go's `json.NewEncoder(...).Encode`: compact, struct field order, a trailing
newline, and `<`, `>`, `&`, U+2028, U+2029 escaped. The model digest shown by `/api/tags` is the
sha256 of these bytes, so matching them exactly keeps digests equal to Ollama's for the same model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from appliance.gocompat.humanfmt import human_number
from appliance.store.layout import api_digest

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MEDIA_PREFIX = "application/vnd.ollama.image."
MEDIA_MODEL = MEDIA_PREFIX + "model"
MEDIA_ADAPTER = MEDIA_PREFIX + "adapter"
MEDIA_PROJECTOR = MEDIA_PREFIX + "projector"
MEDIA_TEMPLATE = MEDIA_PREFIX + "template"
MEDIA_PROMPT = MEDIA_PREFIX + "prompt"  # legacy name of the template layer
MEDIA_SYSTEM = MEDIA_PREFIX + "system"
MEDIA_PARAMS = MEDIA_PREFIX + "params"
MEDIA_MESSAGES = MEDIA_PREFIX + "messages"
MEDIA_LICENSE = MEDIA_PREFIX + "license"

_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def go_json(value: Any) -> bytes:
    """`value` as Go's json.Encoder writes it: compact, HTML-escaped, newline-terminated."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    # These characters only ever occur inside JSON strings, so escaping them textually is exact.
    for ch, esc in _GO_ESCAPES.items():
        if ch in text:
            text = text.replace(ch, esc)
    return (text + "\n").encode("utf-8")


class ManifestError(ValueError):
    """A manifest file that does not parse as one."""


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int
    from_: str = ""
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.from_:
            out["from"] = self.from_
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_json(cls, value: Any) -> Layer:
        if not isinstance(value, dict):
            raise ManifestError("layer is not an object")
        try:
            media_type = value.get("mediaType", "")
            digest = api_digest(value["digest"])
            size = value.get("size", 0)
        except (KeyError, ValueError) as exc:
            raise ManifestError(f"bad layer: {exc}") from None
        if not isinstance(media_type, str) or not isinstance(size, int) or isinstance(size, bool):
            raise ManifestError("bad layer fields")
        return cls(
            media_type, digest, size, str(value.get("from") or ""), str(value.get("name") or "")
        )


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest plus the exact bytes it came from (its digest is theirs)."""

    config: Layer
    layers: tuple[Layer, ...]
    raw: bytes = field(repr=False, default=b"")

    @property
    def digest(self) -> str:
        """Hex sha256 of the manifest bytes: the model digest of `/api/tags` and `/api/ps`."""
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def size(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers)

    def all_digests(self) -> list[str]:
        return [self.config.digest, *(layer.digest for layer in self.layers)]


def build_manifest(config: Layer, layers: list[Layer] | tuple[Layer, ...]) -> Manifest:
    """A new manifest, serialized as Ollama's `WriteManifest` does."""
    value = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    return Manifest(config, tuple(layers), go_json(value))


def parse_manifest(raw: bytes) -> Manifest:
    """Parse manifest bytes; `ManifestError` when they are not a v2 manifest."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest is not JSON: {exc}") from None
    if not isinstance(value, dict) or "config" not in value:
        raise ManifestError("manifest has no config")
    layers = value.get("layers") or []
    if not isinstance(layers, list):
        raise ManifestError("manifest layers is not a list")
    return Manifest(
        Layer.from_json(value["config"]), tuple(Layer.from_json(x) for x in layers), raw
    )


def build_config(
    *,
    model_format: str = "gguf",
    model_family: str = "",
    model_families: list[str] | None = None,
    model_type: str = "",
    file_type: str = "",
    renderer: str = "",
    parser: str = "",
    requires: str = "",
    capabilities: list[str] | None = None,
    context_length: int = 0,
    embedding_length: int = 0,
    diff_ids: list[str] | None = None,
) -> bytes:
    """A config blob in `ConfigV2` field order (types/model/config.go), omitempty as Go does."""
    value: dict[str, Any] = {
        "model_format": model_format,
        "model_family": model_family,
        "model_families": model_families if model_families is not None else None,
        "model_type": model_type,
        "file_type": file_type,
    }
    for key, item in (("renderer", renderer), ("parser", parser), ("requires", requires)):
        if item:
            value[key] = item
    if capabilities:
        value["capabilities"] = capabilities
    if context_length:
        value["context_length"] = context_length
    if embedding_length:
        value["embedding_length"] = embedding_length
    value["architecture"] = "amd64"
    value["os"] = "linux"
    value["rootfs"] = {"type": "layers", "diff_ids": diff_ids or []}
    return go_json(value)


def config_from_gguf(info: Any, diff_ids: list[str]) -> bytes:
    """The config blob of a model made from one GGUF, as `ollama create` writes it.

    `info` is an `engine.gguf.GGUFInfo` (header facts only; no weights are read)."""
    return build_config(
        model_format="gguf",
        model_family=info.architecture,
        model_families=[info.architecture],
        model_type=human_number(info.parameter_count),
        file_type=info.file_type or "",
        capabilities=list(info.capabilities()),
        context_length=info.context_length or 0,
        embedding_length=info.embedding_length or 0,
        diff_ids=diff_ids,
    )


def parse_config(raw: bytes) -> dict[str, Any]:
    """A config blob as a dict; an unreadable one is `{}` (Ollama tolerates it too)."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
