"""llm-appliance: a local LLM server that speaks Ollama's HTTP API, on llama.cpp and trio."""

import sys as _sys
from pathlib import Path as _Path

#: The version of the source tree; a release build stamps its own (see `_stamped_version`).
SOURCE_VERSION = "0.1.0"


def _stamped_version() -> str | None:
    """The version `make binary` wrote into the bundle (LLM_APPLIANCE_BUILD_VERSION), if any."""
    base = getattr(_sys, "_MEIPASS", None)
    if not base:
        return None
    try:
        return (_Path(base) / "llm_appliance_version.txt").read_text().strip() or None
    except OSError:
        return None


__version__ = _stamped_version() or SOURCE_VERSION

#: The Ollama release whose API this server matches (reference/ollama-api.md); `/api/version`
#: reports it so clients that gate features on the version treat us as that Ollama.
OLLAMA_COMPAT_VERSION = "0.33.0"
