"""Entry script for the PyInstaller build: the same `main` as the `llm-appliance` console script.

The binary is also the CPU probe's child process (engine/cpu_backend.py): with PROBE_ENV set it
tries the CPU variants named on its command line instead of running the CLI.
"""

import os
import sys

if __name__ == "__main__":
    from engine import cpu_backend

    if os.environ.get(cpu_backend.PROBE_ENV):
        sys.exit(cpu_backend.probe_main(sys.argv[1:]))

    from appliance.cli import main

    sys.exit(main())
