"""The `llm-appliance` command line: `serve`, and client commands that talk to the HTTP API."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from appliance import __version__

# Modules that add their own subcommands through `add_parser(subparsers)`.
SUBCOMMAND_MODULES = (
    "appliance.server",  # serve
    "appliance.client_cli",  # run, pull, list, ps, stop, rm, show, create, cp, version
    "appliance.systemd_cli",  # systemd install | proxy
    "appliance.doctor",  # doctor
    "appliance.update.cli",  # update
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-appliance", description=__doc__)
    parser.add_argument(
        "--version", "-v", action="version", version=f"llm-appliance version is {__version__}"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
