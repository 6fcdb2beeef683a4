"""The `llm-appliance` command line: `serve`, and client commands that talk to the HTTP API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from appliance.client import commands
from appliance.host import doctor, server, systemd_cli
from appliance.update import cli as update_cli

# Modules that add their own subcommands through `add_parser(subparsers)`.
SUBCOMMAND_MODULES = (
    server,  # serve
    commands,  # run, pull, list, ps, stop, rm, show, create, cp, version
    systemd_cli,  # systemd install | proxy
    doctor,  # doctor
    update_cli,  # update
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-appliance", description=__doc__)
    parser.add_argument("-v", "--version", action="store_true", help="show version information")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version and not args.command:
        return print_version()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


def print_version() -> int:
    """`ollama --version`'s two lines: the running server's version, and the client's when it
    differs (or when no server answers)."""
    from appliance import __version__
    from appliance.client.commands import PROGRAM, Client, CLIError

    server = ""
    try:
        with Client() as client:
            data = client.request("GET", "/api/version") or {}
        server = str(data.get("appliance_version") or data.get("version") or "")
    except CLIError:
        print(f"Warning: could not connect to a running {PROGRAM} instance")
    if server:
        print(f"{PROGRAM} version is {server}")
    if server != __version__:
        print(f"Warning: client version is {__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
