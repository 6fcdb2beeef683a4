#!/usr/bin/env python3
"""Publish llm-appliance releases as a TUF repository, for boxes that `llm-appliance update`.

    python packaging/tuf_release.py init --repo feed/ --keys keys/
    python packaging/tuf_release.py add --repo feed/ --keys keys/ --version 0.2.0 dist/llm-appliance
    python packaging/tuf_release.py timestamp --repo feed/ --keys keys/   # before it expires

`feed/` is what the web server (or object store) serves as LLM_APPLIANCE_UPDATE_URL: metadata
under `metadata/`, binaries under `targets/<version>/llm-appliance-linux-x86_64`.
`feed/metadata/1.root.json` is the trusted root every box is installed with
(LLM_APPLIANCE_UPDATE_ROOT).

Keys: one Ed25519 key per role in `keys/<role>.pem`. Keep `root.pem` and `targets.pem` offline
(an air-gapped machine or a hardware token): whoever holds them can publish a release.
`snapshot.pem` and `timestamp.pem` may live on the publishing host, which must re-sign the
timestamp (`timestamp`) before it expires (default 7 days) or boxes refuse the feed as frozen.
Only python-tuf's Metadata API is used; nothing here is a signature scheme of our own.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

ROLES = ("root", "targets", "snapshot", "timestamp")
TARGET_NAME = "llm-appliance-linux-x86_64"
DEFAULT_DAYS = {"root": 365, "targets": 180, "snapshot": 30, "timestamp": 7}


def _expiry(days: float) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def _signer(keys: Path, role: str) -> CryptoSigner:
    key = load_pem_private_key((keys / f"{role}.pem").read_bytes(), password=None)
    return CryptoSigner(key)  # type: ignore[arg-type]


def _write(md: Metadata, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(md.to_bytes(JSONSerializer(compact=False)))
    tmp.replace(path)


def _load(repo: Path, role: str) -> Metadata:
    return Metadata.from_bytes((repo / "metadata" / f"{role}.json").read_bytes())


def init(repo: Path, keys: Path, days: dict[str, float] | None = None) -> Path:
    """New keys (refusing to overwrite any), and version 1 of every role; returns 1.root.json."""
    days = {**DEFAULT_DAYS, **(days or {})}
    keys.mkdir(parents=True, exist_ok=True)
    signers = {}
    for role in ROLES:
        path = keys / f"{role}.pem"
        if path.exists():
            raise SystemExit(f"{path} exists: refusing to replace a key")
        signer = CryptoSigner.generate_ed25519()
        path.write_bytes(signer.private_bytes)
        path.chmod(0o600)
        signers[role] = signer
    root = Root(expires=_expiry(days["root"]), consistent_snapshot=False)
    for role, signer in signers.items():
        root.add_key(signer.public_key, role)
    root_md = Metadata(root)
    root_md.sign(signers["root"])
    metadata = repo / "metadata"
    _write(root_md, metadata / "1.root.json")
    _write(root_md, metadata / "root.json")
    targets_md = Metadata(Targets(expires=_expiry(days["targets"])))
    targets_md.sign(signers["targets"])
    _write(targets_md, metadata / "targets.json")
    _publish_snapshot_and_timestamp(repo, keys, days, targets_version=1)
    (repo / "targets").mkdir(parents=True, exist_ok=True)
    return metadata / "1.root.json"


def add(repo: Path, keys: Path, version: str, binary: Path, days: dict[str, float] | None = None):
    """Add `binary` as release `version`: copy, sign the new targets, snapshot and timestamp."""
    days = {**DEFAULT_DAYS, **(days or {})}
    name = f"{version}/{TARGET_NAME}"
    dest = repo / "targets" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(binary, dest)
    targets_md = _load(repo, "targets")
    targets: Targets = targets_md.signed
    targets.targets[name] = TargetFile.from_file(name, str(dest))
    targets.version += 1
    targets.expires = _expiry(days["targets"])
    targets_md.signatures.clear()
    targets_md.sign(_signer(keys, "targets"))
    _write(targets_md, repo / "metadata" / "targets.json")
    _publish_snapshot_and_timestamp(repo, keys, days, targets_version=targets.version)


def _publish_snapshot_and_timestamp(
    repo: Path, keys: Path, days: dict[str, float], *, targets_version: int
) -> None:
    metadata = repo / "metadata"
    try:
        old = _load(repo, "snapshot").signed.version
    except FileNotFoundError:
        old = 0
    snapshot_md = Metadata(Snapshot(version=old + 1, expires=_expiry(days["snapshot"])))
    snapshot_md.signed.meta["targets.json"] = MetaFile(version=targets_version)
    snapshot_md.sign(_signer(keys, "snapshot"))
    _write(snapshot_md, metadata / "snapshot.json")
    timestamp(repo, keys, days, snapshot_version=old + 1)


def timestamp(
    repo: Path,
    keys: Path,
    days: dict[str, float] | None = None,
    snapshot_version: int | None = None,
) -> None:
    """A new timestamp (the freshness signature boxes check on every run)."""
    days = {**DEFAULT_DAYS, **(days or {})}
    if snapshot_version is None:
        snapshot_version = _load(repo, "snapshot").signed.version
    try:
        old = _load(repo, "timestamp").signed.version
    except FileNotFoundError:
        old = 0
    ts = Timestamp(version=old + 1, expires=_expiry(days["timestamp"]))
    ts.snapshot_meta = MetaFile(version=snapshot_version)
    ts_md = Metadata(ts)
    ts_md.sign(_signer(keys, "timestamp"))
    _write(ts_md, repo / "metadata" / "timestamp.json")


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = cli.add_subparsers(dest="action", required=True)
    for action in ("init", "add", "timestamp"):
        p = sub.add_parser(action)
        p.add_argument("--repo", type=Path, required=True, help="the feed's directory")
        p.add_argument("--keys", type=Path, required=True, help="the directory of <role>.pem keys")
        if action == "add":
            p.add_argument("--version", required=True, help="the release's PEP 440 version")
            p.add_argument("binary", type=Path, help="the built one-file binary")
    args = cli.parse_args(argv)
    if args.action == "init":
        print(f"trusted root for the boxes: {init(args.repo, args.keys)}")
    elif args.action == "add":
        add(args.repo, args.keys, args.version, args.binary)
        print(f"added {args.version}/{TARGET_NAME}")
    else:
        timestamp(args.repo, args.keys)
        print("timestamp re-signed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
