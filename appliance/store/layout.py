"""Where things live under OLLAMA_MODELS, what a digest looks like, how to write a file safely.

Ollama's layout (manifest/paths.go): `manifests/<host>/<ns>/<model>/<tag>` and
`blobs/sha256-<hex>`. Every path built here is checked to resolve under the store root, so no name
or digest can reach outside it. Writes go to a temp file in the target's directory, are fsynced,
then renamed over the target: a crash leaves either the old file or the new one, never half of one.
Temp files start with `.tmp-`, a name that is neither a valid digest nor a valid tag, so listing
ignores them and the startup prune removes stale ones.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO

from appliance.errors import BadRequest
from appliance.store.names import ModelName

DIGEST_RE = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
BLOB_FILE_RE = re.compile(r"^sha256-[0-9a-f]{64}$")
TEMP_PREFIX = ".tmp-"
CHUNK = 1024 * 1024


class InvalidDigest(BadRequest):
    def __init__(self, message: str = "invalid digest format") -> None:
        super().__init__(message)


class OutsideStore(ValueError):
    """A path that would resolve outside the store root (never reached with validated input)."""


def digest_hex(digest: str) -> str:
    """The lower-case hex of `sha256:<hex>` or `sha256-<hex>`; `InvalidDigest` otherwise."""
    m = DIGEST_RE.match(digest) if isinstance(digest, str) else None
    if m is None:
        raise InvalidDigest()
    return m.group(1).lower()


def api_digest(digest: str) -> str:
    """`sha256:<hex>`, the spelling used in manifests and the API."""
    return "sha256:" + digest_hex(digest)


def blob_filename(digest: str) -> str:
    return "sha256-" + digest_hex(digest)


def under_root(root: Path, *parts: str) -> Path:
    """`root/parts...`, refusing anything that escapes `root` (symlinks inside it are allowed)."""
    base = Path(os.path.abspath(root))
    path = Path(os.path.abspath(base.joinpath(*parts)))
    if path != base and base not in path.parents:
        raise OutsideStore(f"{path} is outside {base}")
    return path


def manifests_dir(root: Path) -> Path:
    return under_root(root, "manifests")


def blobs_dir(root: Path) -> Path:
    return under_root(root, "blobs")


def manifest_path(root: Path, name: ModelName) -> Path:
    name.check_storable()  # every path built from a name is built here
    return under_root(root, "manifests", *name.parts())


def blob_path(root: Path, digest: str) -> Path:
    return under_root(root, "blobs", blob_filename(digest))


def temp_path_for(target: Path) -> Path:
    return target.with_name(f"{TEMP_PREFIX}{target.name}-{secrets.token_hex(6)}")


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(target: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write `data` to `target` so readers see the old content or all of the new, never a part."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(target)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def hash_file(path: Path) -> str:
    """`sha256:<hex>` of a file's bytes (blocking: call from a worker thread)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return "sha256:" + h.hexdigest()


def copy_hashing(src: BinaryIO, dst: BinaryIO) -> tuple[str, int]:
    """Copy one open file to another, returning (`sha256:<hex>`, size)."""
    h = hashlib.sha256()
    size = 0
    while block := src.read(CHUNK):
        h.update(block)
        dst.write(block)
        size += len(block)
    return "sha256:" + h.hexdigest(), size


def link_or_copy(src: Path, dst: Path) -> str:
    """Hard-link `src` to `dst` (one copy of the bytes on disk), else copy; returns how."""
    try:
        os.link(src, dst)
        return "link"
    except OSError:
        shutil.copyfile(src, dst)
        return "copy"
