"""The model store: Ollama's `manifests/` + `blobs/` directory, read and written compatibly.

Every method here blocks on the filesystem; async callers use `trio.to_thread.run_sync`. The store
holds no locks: blobs are content-addressed and written by rename, manifests are written by rename
after all their blobs are in place, so concurrent readers only ever see complete models.

For the pull/push code: write a download to `partial_path(digest)` (or any temp file under
`blobs/` whose name starts with `.tmp-`), check its hash, `os.replace` it onto `blob_path(digest)`,
then call `write_manifest(name, data)` last; afterwards `remove_unreferenced(old.all_digests())`
drops the layers the previous manifest of that name no longer needs (skip that with noprune).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from appliance.errors import ApplianceError, BadRequest, NotFound
from appliance.prompting.prompts import cached_template_capabilities, template_capabilities
from appliance.store import layout
from appliance.store.layout import PRUNE_GRACE_SECONDS, api_digest, blob_filename, digest_hex
from appliance.store.manifest import (
    MEDIA_ADAPTER,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_PROMPT,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Manifest,
    ManifestError,
    parse_config,
    parse_manifest,
)
from appliance.store.names import ModelName, name_from_relpath, parse_model_name
from engine.gguf import GGUFInfo, read_gguf_info

log = logging.getLogger(__name__)

MAX_TEXT_LAYER_BYTES = 16 * 1024 * 1024


class DigestMismatch(BadRequest):
    pass


def derive_capabilities(
    info: GGUFInfo | None,
    template_caps: Iterable[str],
    *,
    projector: bool,
    recorded: Any = None,
) -> list[str]:
    """Ollama's capability names for a model (its `Model.Capabilities`): the GGUF header's
    (embedding or completion, vision, and what its chat template grants), else those `recorded`
    in the config when there are no readable weights; then what the TEMPLATE layer grants
    (`prompting.prompts.template_capabilities`), and vision for a projector. The one place this
    is decided: `/api/show`, `/api/tags`, create and the inference routes all ask here."""
    if info is not None:
        caps = list(info.capabilities())
    elif isinstance(recorded, list) and all(isinstance(c, str) for c in recorded):
        caps = list(recorded)
    else:
        caps = []
    for cap in template_caps:
        if cap not in caps:
            caps.append(cap)
    if projector and "vision" not in caps:
        caps.append("vision")
    return caps


class GGUFInfoCache:
    """Parsed GGUF headers, the one cache of them, bounded (least recently used goes first).

    A header read parses the whole vocabulary (0.15 s for 262k tokens), so it is done once per
    file: blobs are content-addressed, and a file's size and mtime are checked on each blocking
    look-up. Safe from several worker threads; one header is read at a time.
    """

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._items: OrderedDict[Path, tuple[tuple[int, int], GGUFInfo]] = OrderedDict()
        self._lock = threading.Lock()  # guards _items; held only for dict operations
        self._reading = threading.Lock()  # one header read at a time: none is read twice

    def peek(self, path: Path) -> GGUFInfo | None:
        """The cached header of `path` without touching the filesystem (safe on the trio thread)."""
        with self._lock:
            entry = self._items.get(path)
            if entry is None:
                return None
            self._items.move_to_end(path)
            return entry[1]

    def get(self, path: Path) -> GGUFInfo:
        """The header of `path`, read when not cached or changed (blocking: call it in a worker
        thread). FileNotFoundError or ValueError as `read_gguf_info` raises them."""
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns)
        info = self._fresh(path, stamp)  # a hit waits for no other file's read
        if info is not None:
            return info
        with self._reading:
            info = self._fresh(path, stamp)  # read by the thread this one waited for
            if info is None:
                info = read_gguf_info(path)
            with self._lock:
                self._items[path] = (stamp, info)
                self._items.move_to_end(path)
                while len(self._items) > self.limit:
                    self._items.popitem(last=False)
        return info

    def _fresh(self, path: Path, stamp: tuple[int, int]) -> GGUFInfo | None:
        """The cached header of `path` if it was read at `stamp` (size, mtime), marked used."""
        with self._lock:
            entry = self._items.get(path)
            if entry is None or entry[0] != stamp:
                return None
            self._items.move_to_end(path)
            return entry[1]

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class LocalModel:
    """One model of the store, as every route and the scheduler see it."""

    name: ModelName  # on-disk spelling
    manifest: Manifest
    manifest_path: Path
    model_path: Path | None
    adapters: list[Path]
    projector_paths: list[Path]
    template: str | None
    system: str
    params: dict[str, Any]
    messages: list[dict[str, Any]]
    license: list[str]
    config: dict[str, Any]
    modified_ns: int
    parent_model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """Hex sha256 of the manifest bytes."""
        return self.manifest.digest

    @property
    def size(self) -> int:
        return self.manifest.size

    @property
    def projector_path(self) -> Path | None:
        return self.projector_paths[0] if self.projector_paths else None

    @property
    def modified_at(self) -> datetime:
        """The manifest's mtime in the local zone."""
        return datetime.fromtimestamp(self.modified_ns / 1e9, tz=UTC).astimezone()

    def details(self, *, with_parent: bool = False) -> dict[str, Any]:
        """`details` of tags/show/ps, from the config blob (Go's `ModelDetails` field order)."""
        cfg = self.config
        out: dict[str, Any] = {
            "parent_model": self.parent_model if with_parent else "",
            "format": cfg.get("model_format", "") or "",
            "family": cfg.get("model_family", "") or "",
            "families": cfg.get("model_families"),
            "parameter_size": cfg.get("model_type", "") or "",
            "quantization_level": cfg.get("file_type", "") or "",
        }
        for key in ("context_length", "embedding_length"):
            if cfg.get(key):
                out[key] = cfg[key]
        return out


class Store:
    """Ollama's model directory at `root` (OLLAMA_MODELS)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(Path(root).expanduser()))
        self.gguf_infos = GGUFInfoCache()
        self.template_caps = cached_template_capabilities()

    # -- paths -------------------------------------------------------------------------------

    @property
    def blobs_dir(self) -> Path:
        return layout.blobs_dir(self.root)

    @property
    def manifests_dir(self) -> Path:
        return layout.manifests_dir(self.root)

    def blob_path(self, digest: str) -> Path:
        """Where blob `sha256:<hex>` (or `sha256-<hex>`) lives; `InvalidDigest` (400) if bad."""
        return layout.blob_path(self.root, digest)

    def partial_path(self, digest: str) -> Path:
        """`blobs/sha256-<hex>-partial`, Ollama's in-progress download name (pruned when stale)."""
        return layout.under_root(self.root, "blobs", blob_filename(digest) + "-partial")

    def manifest_path(self, name: ModelName) -> Path:
        return layout.manifest_path(self.root, name)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    # -- start-up ----------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Create `blobs/` and `manifests/` and prove we can write there: one clear error if not."""
        probe = None
        try:
            for sub in (self.blobs_dir, self.manifests_dir):
                sub.mkdir(parents=True, exist_ok=True)
                probe = layout.temp_path_for(sub / "write-check")
                with open(probe, "xb") as f:
                    f.write(b"ok")
                probe.unlink()
                probe = None
        except OSError as exc:
            if probe is not None:
                probe.unlink(missing_ok=True)
            try:
                user = getpass.getuser()
            except (KeyError, OSError):
                user = "?"
            raise ApplianceError(
                f"models directory {self.root} is not writable by user {user} (uid {os.getuid()}): "
                f"{exc.strerror or exc}; set OLLAMA_MODELS to a writable directory or fix its "
                f"ownership (e.g. chown -R {user} {self.root})"
            ) from None

    def fix_blobs(self) -> int:
        """Rename `sha256:<hex>` blob files to `sha256-<hex>` (Ollama's fixBlobs); returns count."""
        count = 0
        if not self.blobs_dir.is_dir():
            return 0
        for entry in os.scandir(self.blobs_dir):
            if entry.name.startswith("sha256:") and layout.DIGEST_RE.match(entry.name):
                target = self.blobs_dir / blob_filename(entry.name)
                if target.exists():
                    os.unlink(entry.path)
                else:
                    os.replace(entry.path, target)
                count += 1
        return count

    def startup(self, *, noprune: bool) -> None:
        """What `serve` does to the store before answering: check, fix names, prune."""
        self.check_writable()
        self.fix_blobs()
        if not noprune:
            self.prune()

    # -- manifests ---------------------------------------------------------------------------

    def iter_manifest_files(self) -> list[tuple[ModelName, Path]]:
        """Every file at `manifests/*/*/*/*` whose path is a valid name (temp files are not)."""
        found: list[tuple[ModelName, Path]] = []
        base = self.manifests_dir
        if not base.is_dir():
            return found

        def walk(directory: Path, parts: tuple[str, ...]) -> None:
            try:
                entries = list(os.scandir(directory))
            except (NotADirectoryError, FileNotFoundError):
                return
            for entry in entries:
                sub = (*parts, entry.name)
                if len(sub) < 4:
                    if entry.is_dir():
                        walk(Path(entry.path), sub)
                elif entry.is_file():
                    name = name_from_relpath(sub)
                    if name is not None:
                        found.append((name, Path(entry.path)))

        walk(base, ())
        return found

    def existing_name(self, name: ModelName) -> ModelName:
        """`name` with each part in the spelling already on disk (exact match preferred)."""
        directory = self.manifests_dir
        parts: list[str] = []
        for part in name.parts():
            chosen = part
            try:
                entries = os.listdir(directory)
            except OSError:
                entries = []
            if part not in entries:
                for entry in sorted(entries):
                    if entry.isascii() and entry.lower() == part.lower():
                        chosen = entry
                        break
            parts.append(chosen)
            directory = directory / chosen
        return ModelName(*parts, scheme=name.scheme)

    def read_manifest(self, name: ModelName) -> Manifest:
        """The manifest of `name` as spelled; FileNotFoundError or ManifestError otherwise."""
        return parse_manifest(self.manifest_path(name).read_bytes())

    def write_manifest(self, name: ModelName, data: bytes) -> Manifest:
        """Atomically write manifest bytes for `name`; every blob they reference must be present.

        Call it last, after all blobs are in place: a store never lists an incomplete model.
        """
        manifest = parse_manifest(data)
        missing = [d for d in manifest.all_digests() if not self.has_blob(d)]
        if missing:
            raise ManifestError(f"manifest references missing blobs: {', '.join(missing)}")
        layout.atomic_write_bytes(self.manifest_path(name), data)
        return manifest

    def resolve(self, name_text: str | ModelName, *, not_found: str | None = None) -> LocalModel:
        """The model named `name_text` (case-insensitive); NotFound `model '<text>' not found`."""
        if isinstance(name_text, ModelName):
            name, text = name_text, name_text.display_shortest()
        else:
            name, text = parse_model_name(name_text), name_text
        name = self.existing_name(name)
        try:
            return self.load(name)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(not_found or f"model '{text}' not found") from None

    def exists(self, name: ModelName) -> bool:
        return self.manifest_path(self.existing_name(name)).is_file()

    def load(self, name: ModelName) -> LocalModel:
        """Read a model's manifest and small layers (template, system, params, ...)."""
        path = self.manifest_path(name)
        raw = path.read_bytes()
        modified_ns = os.stat(path).st_mtime_ns
        return self._local_model(name, path, parse_manifest(raw), modified_ns)

    def _local_model(
        self, name: ModelName, path: Path, m: Manifest, modified_ns: int
    ) -> LocalModel:
        model_path = None
        parent = ""
        adapters: list[Path] = []
        projectors: list[Path] = []
        template: str | None = None
        system = ""
        params: dict[str, Any] = {}
        messages: list[dict[str, Any]] = []
        licenses: list[str] = []
        for layer in m.layers:
            mt = layer.media_type
            if mt == MEDIA_MODEL:
                model_path = self.blob_path(layer.digest)
                parent = layer.from_
            elif mt == MEDIA_ADAPTER:
                adapters.append(self.blob_path(layer.digest))
            elif mt == MEDIA_PROJECTOR:
                projectors.append(self.blob_path(layer.digest))
            elif mt in (MEDIA_TEMPLATE, MEDIA_PROMPT):
                template = self._read_text(layer.digest)
            elif mt == MEDIA_SYSTEM:
                system = self._read_text(layer.digest)
            elif mt == MEDIA_LICENSE:
                licenses.append(self._read_text(layer.digest))
            elif mt == MEDIA_PARAMS:
                value = self._read_json(layer.digest)
                params = value if isinstance(value, dict) else {}
            elif mt == MEDIA_MESSAGES:
                value = self._read_json(layer.digest)
                messages = value if isinstance(value, list) else []
        try:
            config = parse_config(self.blob_path(m.config.digest).read_bytes())
        except OSError:
            config = {}
        return LocalModel(
            name=name,
            manifest=m,
            manifest_path=path,
            model_path=model_path,
            adapters=adapters,
            projector_paths=projectors,
            template=template,
            system=system,
            params=params,
            messages=messages,
            license=licenses,
            config=config,
            modified_ns=modified_ns,
            parent_model=parent,
        )

    def _read_text(self, digest: str) -> str:
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_TEXT_LAYER_BYTES)
        except OSError as exc:
            log.warning("layer %s unreadable: %s", digest, exc)
            return ""
        return data.decode("utf-8", errors="replace")

    def _read_json(self, digest: str) -> Any:
        text = self._read_text(digest)
        try:
            return json.loads(text) if text else None
        except ValueError:
            log.warning("layer %s is not JSON", digest)
            return None

    def list_models(self) -> list[LocalModel]:
        """Every readable model, newest first; an unreadable manifest is logged and skipped."""
        models: list[LocalModel] = []
        for name, path in self.iter_manifest_files():
            try:
                raw = path.read_bytes()
                modified_ns = os.stat(path).st_mtime_ns
                models.append(self._local_model(name, path, parse_manifest(raw), modified_ns))
            except (OSError, ManifestError) as exc:
                log.warning("skipping manifest %s: %s", path, exc)
        models.sort(key=lambda m: m.modified_ns, reverse=True)
        return models

    def _all_manifests(self) -> list[Manifest] | None:
        """Every manifest, or None when any fails to parse (then nothing may be deleted)."""
        out = []
        for _, path in self.iter_manifest_files():
            try:
                out.append(parse_manifest(path.read_bytes()))
            except (OSError, ManifestError) as exc:
                log.warning("manifest %s unreadable (%s): not removing any blob", path, exc)
                return None
        return out

    def referenced_blobs(self) -> set[str] | None:
        """Blob file names some manifest uses, or None when a manifest is unreadable."""
        manifests = self._all_manifests()
        if manifests is None:
            return None
        return {blob_filename(d) for m in manifests for d in m.all_digests()}

    # -- blobs -------------------------------------------------------------------------------

    def new_blob_writer(self, expected: str | None = None) -> BlobWriter:
        """A temp file under `blobs/` that becomes a blob on `commit()` if its hash is right."""
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        return BlobWriter(self, expected)

    def write_blob_from_file(self, src: Path, *, link: bool = False) -> str:
        """Store the bytes of `src` as a blob; returns `sha256:<hex>`. `link` hard-links instead."""
        if link:
            digest = layout.hash_file(src)
            return self.import_blob_file(src, digest)
        with self.new_blob_writer() as writer, open(src, "rb") as f:
            while block := f.read(layout.CHUNK):
                writer.write(block)
            return writer.commit()

    def write_blob_bytes(self, data: bytes) -> str:
        """Store small content (template, params, config...) as a blob; returns `sha256:<hex>`."""
        with self.new_blob_writer() as writer:
            writer.write(data)
            return writer.commit()

    def import_blob_file(self, src: Path, digest: str) -> str:
        """Put `src`, whose hash is known to be `digest`, into `blobs/` as one hard link or copy."""
        target = self.blob_path(digest)
        if target.is_file():
            return api_digest(digest)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        tmp, fd, how = layout.owned_link_or_copy(src, target)
        try:
            os.replace(tmp, target)  # while owned: the temp-file sweeper never takes it
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        layout.fsync_dir(self.blobs_dir)
        log.info("imported %s as blob %s (%s)", src, digest, how)
        return api_digest(digest)

    def remove_unreferenced(self, digests: list[str] | tuple[str, ...]) -> list[str]:
        """Delete those of `digests` no manifest references (even with noprune: it is a delete)."""
        referenced = self.referenced_blobs()
        if referenced is None:
            return []
        removed = []
        for digest in dict.fromkeys(digests):
            fname = blob_filename(digest)
            if fname in referenced:
                continue
            try:
                (self.blobs_dir / fname).unlink()
                removed.append(api_digest(digest))
            except FileNotFoundError:
                pass
        return removed

    # -- copy, delete, prune -----------------------------------------------------------------

    def copy(self, src: ModelName, dst: ModelName) -> None:
        """Copy the manifest of `src` byte for byte to `dst` (both in on-disk spelling)."""
        data = self.manifest_path(src).read_bytes()
        if self.manifest_path(src) == self.manifest_path(dst):
            return
        layout.atomic_write_bytes(self.manifest_path(dst), data)

    def delete(self, name: ModelName) -> Manifest:
        """Remove a manifest, its empty directories, and the blobs nothing else references.

        A loaded model keeps working: on Linux an open or mmapped file outlives its unlink.
        """
        path = self.manifest_path(name)
        manifest = parse_manifest(path.read_bytes())
        path.unlink()
        layout.fsync_dir(path.parent)
        self._remove_empty_parents(path.parent)
        self.remove_unreferenced(manifest.all_digests())
        return manifest

    def _remove_empty_parents(self, directory: Path) -> None:
        base = self.manifests_dir
        while directory != base and base in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def prune(self, *, now: float | None = None) -> list[str]:
        """Ollama's start-up prune: drop stale unreferenced or misnamed blobs and empty dirs.

        Only files older than an hour are touched (others may be mid-write by a peer process),
        and nothing is removed if any manifest fails to parse.
        """
        now = time.time() if now is None else now
        referenced = self.referenced_blobs()
        if referenced is None:
            return []
        removed: list[str] = []
        cutoff = now - PRUNE_GRACE_SECONDS
        if self.blobs_dir.is_dir():
            for entry in os.scandir(self.blobs_dir):
                if not entry.is_file(follow_symlinks=False) and not entry.is_symlink():
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                        continue
                except FileNotFoundError:
                    continue
                valid = layout.BLOB_FILE_RE.match(entry.name) is not None
                if valid and entry.name in referenced:
                    continue
                if not valid and layout.owned(entry.path):  # a live writer's, maybe another process
                    continue
                try:
                    os.unlink(entry.path)
                    removed.append(entry.name)
                except FileNotFoundError:
                    pass
        self._prune_manifest_tree(cutoff)
        if removed:
            log.info("pruned %d unused blob(s)", len(removed))
        return removed

    def _prune_manifest_tree(self, cutoff: float) -> None:
        base = self.manifests_dir
        if not base.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(base, topdown=False):
            for fname in filenames:
                if fname.startswith(layout.TEMP_PREFIX):
                    path = Path(dirpath) / fname
                    try:
                        if path.stat().st_mtime <= cutoff:
                            path.unlink()
                    except FileNotFoundError:
                        pass
            if Path(dirpath) != base:
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass

    # -- GGUF metadata -----------------------------------------------------------------------

    def capabilities(self, model: LocalModel) -> list[str]:
        """`derive_capabilities` for `model`, its GGUF header read through the cache."""
        info = None
        if model.model_path is not None:
            try:
                info = self.gguf_info(model.model_path)
            except (OSError, ValueError) as exc:
                log.warning("cannot read GGUF of %s: %s", model.name, exc)
        return model_capabilities(model, info, self.template_caps(model.template))

    def gguf_info(self, path: Path) -> GGUFInfo:
        """`engine.gguf.read_gguf_info(path)` through the store's one bounded header cache."""
        return self.gguf_infos.get(path)


def model_capabilities(
    model: LocalModel, info: GGUFInfo | None, template_caps: Iterable[str] | None = None
) -> list[str]:
    """`derive_capabilities` for a stored model whose GGUF header is `info` (None: unreadable);
    `template_caps`, when the caller already knows them, saves parsing its template again."""
    if template_caps is None:
        template_caps = template_capabilities(model.template)
    return derive_capabilities(
        info,
        template_caps,
        projector=bool(model.projector_paths),
        recorded=model.config.get("capabilities"),
    )


class BlobWriter:
    """Streams bytes into a temp file while hashing; `commit()` renames it onto its digest.

    Used as a context manager: leaving it without `commit()` removes the temp file, so a failed
    or cancelled upload never leaves a half blob that counts as present.
    """

    def __init__(self, store: Store, expected: str | None) -> None:
        import hashlib

        self._store = store
        self._expected = expected
        if expected is not None:
            digest_hex(expected)
        self._hash = hashlib.sha256()
        self.size = 0
        self._tmp, file = layout.open_temp(store.blobs_dir / "upload")  # owned until closed
        self._file: BinaryIO | None = file

    def write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def commit(self) -> str:
        """Verify and publish; `DigestMismatch` (400) when the bytes are not `expected`."""
        assert self._file is not None
        actual = "sha256:" + self._hash.hexdigest()
        if self._expected is not None and digest_hex(self._expected) != actual[7:]:
            self.abort()
            raise DigestMismatch(f'digest mismatch, expected "{self._expected}", got "{actual}"')
        self._file.flush()
        os.fsync(self._file.fileno())
        target = self._store.blob_path(actual)
        if target.is_file():
            self._tmp.unlink(missing_ok=True)
        else:
            os.chmod(self._tmp, 0o644)
            os.replace(self._tmp, target)  # before closing: the temp file is never unowned
            layout.fsync_dir(target.parent)
        self._file.close()
        self._file = None
        return actual

    def abort(self) -> None:
        if self._file is not None:
            self._tmp.unlink(missing_ok=True)
            self._file.close()
            self._file = None

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()
