"""A release feed for `llm-appliance update`: a TUF repository made with python-tuf's Metadata API
(through packaging/tuf_release.py, the operators' own script) and served by a static file peer.

Tests change the served files to play an attacker: tampered targets, expired or replayed metadata.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

from peers.registry import H11Peer, Reply, Request

REPO = Path(__file__).resolve().parents[2]


def tuf_release() -> ModuleType:
    """packaging/tuf_release.py, imported from its path (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location(
        "tuf_release", REPO / "packaging" / "tuf_release.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FeedPeer(H11Peer):
    """Serves the files under `root` as `http://updates.test/...` (reached through the proxy)."""

    public_host = "updates.test"

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.served: list[str] = []

    def route(self, request: Request) -> Reply:
        path = (self.root / request.path.lstrip("/")).resolve()
        if self.root.resolve() not in path.parents or not path.is_file():
            return Reply(404, [("Content-Type", "text/plain")], b"not found")
        self.served.append(request.path)
        return Reply(200, [("Content-Type", "application/octet-stream")], path.read_bytes())


class Feed:
    """A TUF repository on disk with its offline keys, and the operations a publisher runs."""

    def __init__(self, base: Path) -> None:
        self.tool = tuf_release()
        self.dir = base / "feed"
        self.keys = base / "keys"
        self.root_file = self.tool.init(self.dir, self.keys)
        self.trusted_root = base / "trusted-root.json"
        shutil.copyfile(self.root_file, self.trusted_root)

    def publish(self, version: str, binary: Path, **days: float) -> Path:
        self.tool.add(self.dir, self.keys, version, binary, days or None)
        return self.target(version)

    def target(self, version: str) -> Path:
        return self.dir / "targets" / version / self.tool.TARGET_NAME

    def resign_timestamp(self, **days: float) -> None:
        self.tool.timestamp(self.dir, self.keys, days or None)

    def snapshot_metadata(self, into: Path) -> None:
        shutil.copytree(self.dir / "metadata", into)

    def restore_metadata(self, saved: Path) -> None:
        shutil.rmtree(self.dir / "metadata")
        shutil.copytree(saved, self.dir / "metadata")


def script_binary(path: Path, version: str, *, serves: bool = True) -> Path:
    """A stand-in release: answers `--version` as ours does; `serve` answers `GET /` like the
    appliance when `serves`, else never gets ready (sleeps)."""
    serve = (
        'exec python3 -c "import http.server,os\n'
        "h,p=os.environ['OLLAMA_HOST'].rsplit(':',1)\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "  def do_GET(s):\n"
        "    s.send_response(200);s.end_headers();s.wfile.write(b'Ollama is running')\n"
        "  def log_message(s,*a): pass\n"
        'http.server.HTTPServer((h,int(p)),H).serve_forever()"'
        if serves
        else "exec sleep 600"
    )
    path.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        f'  --version) echo "llm-appliance version is {version}" ;;\n'
        f"  serve) {serve} ;;\n"
        "  *) exit 2 ;;\n"
        "esac\n"
    )
    path.chmod(0o755)
    return path
