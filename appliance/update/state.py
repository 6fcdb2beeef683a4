"""What the updater remembers between runs: the last check and the versions that failed.

One small JSON file beside tuf's trusted metadata, written atomically, so `doctor` can say when
the feed was last checked and how it went, and a version whose activation failed is not tried
again until a newer one appears.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
        state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".state-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(self), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, state_dir / STATE_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def record(self, result: str) -> None:
        self.last_check = time.time()
        self.last_result = result

    def mark_failed(self, version: str) -> None:
        if version not in self.failed_versions:
            self.failed_versions.append(version)
