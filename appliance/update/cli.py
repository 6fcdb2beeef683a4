"""`llm-appliance update [--check | --rollback | --version V] [--yes] [--allow-downgrade]`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from appliance.settings.config import ConfigError, load_settings
from appliance.update import run, service
from appliance.update.feed import UpdateError
from appliance.update.state import default_state_dir


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")


def command(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return run.EXIT_ERROR
    ctx = run.Context(settings, default_state_dir(settings, os.environ))
    try:
        if args.check:
            return run.check(ctx)
        binary = Path(args.binary).resolve() if args.binary else run.install.running_binary()
        if args.rollback:
            return run.rollback(ctx, binary, args.unit, args.health_timeout)
        request = run.UpdateRequest(
            binary=binary,
            version=args.target_version,
            yes=args.yes,
            allow_downgrade=args.allow_downgrade,
            unit=args.unit,
            health_timeout=args.health_timeout,
            confirm=None if args.yes or not sys.stdin.isatty() else _confirm,
        )
        return run.update(ctx, request)
    except UpdateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return run.EXIT_ERROR


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "update",
        help="check for, install or roll back a verified release of this binary",
        description=(
            "Updates come only from the TUF feed the operator sets (LLM_APPLIANCE_UPDATE_URL) and "
            "verify against its trusted root (LLM_APPLIANCE_UPDATE_ROOT)."
        ),
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--check",
        action="store_true",
        help="only check: exit 0 when up to date, 100 when an update is available, 1 on error",
    )
    mode.add_argument("--rollback", action="store_true", help="put <binary>.previous back in place")
    p.add_argument("--version", dest="target_version", metavar="V", help="install this version")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask before updating")
    p.add_argument(
        "--allow-downgrade", action="store_true", help="allow --version older than the running one"
    )
    p.add_argument("--unit", default=service.UNIT, help="the systemd unit to restart")
    p.add_argument(
        "--health-timeout",
        type=float,
        default=180.0,
        help="seconds the restarted service has to become ready before it is rolled back",
    )
    # The binary to replace; by default the running one. For tests and unusual layouts.
    p.add_argument("--binary", help=argparse.SUPPRESS)
    p.set_defaults(func=command)
