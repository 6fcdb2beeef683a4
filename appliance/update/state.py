"""What the updater remembers between runs: the last check and the versions that failed.

One small JSON file beside tuf's trusted metadata, written atomically, so `doctor` can say when
the feed was last checked and how it went, and a version whose activation failed is not tried
again until a newer one appears.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.store.layout import atomic_write_bytes

STATE_FILE = "state.json"


def default_state_dir(settings: Any, environ: Mapping[str, str]) -> Path:
    """Where tuf's trusted metadata lives: the setting, else systemd's StateDirectory, else
    /var/lib/llm-appliance for root, else the user's state directory."""
    if settings.update_state_dir is not None:
        return settings.update_state_dir
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / "update"
    if os.geteuid() == 0:
        return Path("/var/lib/llm-appliance/update")
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "llm-appliance" / "update"


@dataclass
class UpdateState:
    last_check: float | None = None  # epoch seconds
    last_result: str = ""  # "up to date", "update available: 0.2.0", "updated to ...", "error: ..."
    failed_versions: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, state_dir: Path) -> UpdateState:
        try:
            data: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return cls()
        return cls(
            last_check=data.get("last_check"),
            last_result=str(data.get("last_result", "")),
            failed_versions=[str(v) for v in data.get("failed_versions", [])],
        )

    def save(self, state_dir: Path) -> None:
        data = json.dumps(asdict(self), indent=1).encode()
        atomic_write_bytes(state_dir / STATE_FILE, data, mode=0o600)  # as mkstemp made it

    def record(self, result: str) -> None:
        self.last_check = time.time()
        self.last_result = result

    def mark_failed(self, version: str) -> None:
        if version not in self.failed_versions:
            self.failed_versions.append(version)
