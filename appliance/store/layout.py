"""Where things live under OLLAMA_MODELS, what a digest looks like, how to write a file safely.

Ollama's layout (manifest/paths.go): `manifests/<host>/<ns>/<model>/<tag>` and
`blobs/sha256-<hex>`. Every path built here is checked to resolve under the store root, so no name
or digest can reach outside it. Writes go to a temp file in the target's directory, are fsynced,
then renamed over the target: a crash leaves either the old file or the new one, never half of one.
Temp files start with `.tmp-`, a name that is neither a valid digest nor a valid tag, so listing
ignores them.

A temp file is owned by the writer that holds an exclusive `flock` on it, from its creation
(`open_temp`) until it has been renamed onto its target; resumable pulls lock their `-partial`
file the same way while they fetch. `sweep_temp_files` (at start and periodically while serving)
deletes only files it can lock itself, without waiting: a crashed or killed writer's file, never a
live one's, even when another process shares the store. Partials are meant to survive a restart
(see appliance/store/remote/download.py), so an unowned one is deleted only once it is older than
Ollama's prune grace of an hour.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
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
PARTIAL_SUFFIX = "-partial"
PRUNE_GRACE_SECONDS = 3600.0  # Ollama's prune grace: the start-up prune's, and stale partials'
CHUNK = 1024 * 1024

log = logging.getLogger(__name__)


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


def _lock(fd: int) -> bool:
    """Take an exclusive flock on `fd` without waiting; False when another holder has it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def open_temp(target: Path) -> tuple[Path, BinaryIO]:
    """A new temp file next to `target`, created and owned (flocked) by the caller.

    Rename it onto its target *before* closing it: closing ends the ownership, and an unowned
    temp file is the sweeper's. A sweeper that locked the new file first (or deleted it) is seen
    by the lock or the identity check, and another name is tried.
    """
    for _ in range(16):
        tmp = temp_path_for(target)
        f = open(tmp, "xb")
        try:
            if _lock(f.fileno()) and _same_file(tmp, f.fileno()):
                return tmp, f
        except BaseException:
            f.close()
            raise
        f.close()
    raise OSError(errno.EBUSY, f"could not create an owned temp file for {target}")


def lock_existing(path: Path, flags: int = os.O_RDWR) -> int | None:
    """Open `path` and own it (flock, without waiting); the fd, or None if another owns it."""
    fd = os.open(path, flags)
    try:
        if _lock(fd) and _same_file(path, fd):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def owned(path: Path | str) -> bool:
    """Whether a live writer (in any process) holds `path`'s lock right now."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return not _lock(fd)
    finally:
        os.close(fd)


def _remove_unowned(path: Path) -> bool:
    """Delete `path` if nobody owns it; the check and the delete happen under our own lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not _lock(fd) or not _same_file(path, fd):
            return False
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _is_partial_state(name: str) -> bool:
    base, sep, n = name.rpartition(PARTIAL_SUFFIX + "-")
    return bool(sep) and n.isdigit() and BLOB_FILE_RE.match(base) is not None


def sweep_temp_files(
    root: Path, *, keep_partials: bool = False, now: float | None = None
) -> list[str]:
    """Delete every temp file under the store that no live writer owns; returns their names.

    `.tmp-*` files anywhere under `blobs/` and `manifests/` go whatever their age (a writer owns
    its temp file from the moment it exists). A `-partial` blob and its `-partial-N` state files
    go only when unowned and older than `PRUNE_GRACE_SECONDS`, and never with `keep_partials`
    (OLLAMA_NOPRUNE). Blocking: call from a worker thread.
    """
    import time

    now = time.time() if now is None else now
    removed: list[str] = []
    blobs = blobs_dir(root)
    if blobs.is_dir():
        partials: list[os.DirEntry[str]] = []
        states: list[os.DirEntry[str]] = []
        for entry in os.scandir(blobs):
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.name.startswith(TEMP_PREFIX):
                if _remove_unowned(Path(entry.path)):
                    removed.append(entry.name)
            elif entry.name.endswith(PARTIAL_SUFFIX):
                partials.append(entry)
            elif _is_partial_state(entry.name):
                states.append(entry)
        if not keep_partials:
            for entry in partials:
                if _older(entry, now) and _remove_unowned(Path(entry.path)):
                    removed.append(entry.name)
            for entry in states:
                partial = blobs / entry.name.rpartition("-")[0]
                if not partial.exists() and _older(entry, now):
                    Path(entry.path).unlink(missing_ok=True)
                    removed.append(entry.name)
    manifests = manifests_dir(root)
    if manifests.is_dir():
        for dirpath, _dirnames, filenames in os.walk(manifests):
            for fname in filenames:
                if fname.startswith(TEMP_PREFIX) and _remove_unowned(Path(dirpath) / fname):
                    removed.append(fname)
    if removed:
        log.info("removed %d temp file(s) no writer owns: %s", len(removed), ", ".join(removed))
    return removed


def _older(entry: os.DirEntry[str], now: float) -> bool:
    try:
        return entry.stat(follow_symlinks=False).st_mtime <= now - PRUNE_GRACE_SECONDS
    except FileNotFoundError:
        return False


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
    tmp, f = open_temp(target)
    with f:  # renamed while still owned: the sweeper never sees it unowned
        try:
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


def owned_link_or_copy(src: Path, target: Path) -> tuple[Path, int, str]:
    """A temp file next to `target` with `src`'s bytes (a hard link, else a copy), owned like
    `open_temp`'s: returns (path, the fd holding the lock, "link" or "copy")."""
    for _ in range(16):
        tmp = temp_path_for(target)
        try:
            os.link(src, tmp)
        except OSError:
            break  # another filesystem, or links not allowed: copy
        try:
            fd = lock_existing(tmp, os.O_RDONLY)
        except FileNotFoundError:  # a sweeper took it between the link and the lock
            continue
        if fd is not None:
            return tmp, fd, "link"
        tmp.unlink(missing_ok=True)  # someone holds a lock on `src` itself: copy instead
        break
    tmp, f = open_temp(target)
    try:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, f, CHUNK)
        f.flush()
        os.fsync(f.fileno())
        return tmp, os.dup(f.fileno()), "copy"
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        f.close()
