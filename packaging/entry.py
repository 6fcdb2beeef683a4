"""Entry script for the PyInstaller build: the same `main` as the `llm-appliance` console script."""

import sys

from appliance.cli import main

if __name__ == "__main__":
    sys.exit(main())
