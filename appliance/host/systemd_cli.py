"""`llm-appliance systemd install | proxy`: write the service unit and its drop-ins.

The unit text lives here (not only in `systemd/`) so the one-file binary can install itself with no
other file at hand; `systemd/llm-appliance.service` in the repository is this text rendered for
`/usr/local/bin/llm-appliance`, and a test keeps the two equal. Every path is under `--root`, so the
tests write into a temporary directory and check the result with `systemd-analyze verify`.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

log = logging.getLogger(__name__)

UNIT_NAME = "llm-appliance.service"
SERVICE_USER = "llm-appliance"
DEFAULT_BINARY = "/usr/local/bin/llm-appliance"
STATE_DIR = "/var/lib/llm-appliance"
UNIT_DIR = "etc/systemd/system"
ENV_FILE = "etc/llm-appliance/env"
DEFAULT_NO_PROXY = "localhost,127.0.0.1,::1"

UNIT_TEMPLATE = """\
# llm-appliance: a local LLM server speaking Ollama's API.
# Written by `llm-appliance systemd install`. Change settings in /etc/llm-appliance/env
# (OLLAMA_HOST=0.0.0.0:11434, OLLAMA_KEEP_ALIVE=..., HTTPS_PROXY=...) or with a drop-in
# (`systemctl edit llm-appliance`); a drop-in needs its own [Service] header.
[Unit]
Description=llm-appliance local LLM server (Ollama API)
Documentation=https://github.com/ollama/ollama/blob/main/docs/faq.md
After=network-online.target
Wants=network-online.target

[Service]
# READY=1 is sent once the port listens; the watchdog pings from the event loop.
Type=notify
# `main` would be enough for the one-directory build; the one-file binary's bootloader is the
# main PID while its child (the real server) sends READY=1, so the child must be heard too.
NotifyAccess=all
ExecStart={binary} serve
User={user}
Group={user}
StateDirectory=llm-appliance
StateDirectoryMode=0750
WorkingDirectory={state_dir}
Environment="HOME={state_dir}"
Environment="OLLAMA_MODELS={state_dir}/models"
EnvironmentFile=-/etc/llm-appliance/env
Restart=on-failure
RestartSec=3
TimeoutStartSec=180
TimeoutStopSec=30
WatchdogSec=60
LimitNOFILE=65536

# Sandboxing: read-only system, private /tmp (the one-file binary unpacks there), no home
# directories, no privilege gain. Models live in the state directory; a models directory elsewhere
# needs ReadWritePaths= (and ProtectHome=tmpfs + BindPaths= under /home): see
# `llm-appliance systemd install --models DIR`.
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
# CPU inference needs no devices. For a GPU build, add DeviceAllow= for its nodes and remove this.
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
PrivateMounts=yes
# AF_NETLINK lets the allowed-hosts check list this machine's interface addresses.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
SystemCallFilter=@system-service
# MemoryDenyWriteExecute= is left off: ctypes callbacks (llama.cpp's log hook) may need W+X
# memory for libffi trampolines. SystemCallFilter=~@resources is left off too: OpenMP threads
# set their affinity, and a denied call kills the process.
UMask=0027

[Install]
WantedBy=multi-user.target
"""

ENV_TEMPLATE = """\
# Environment for llm-appliance.service, read at every start (KEY=value, one a line).
# Restart after a change: systemctl restart llm-appliance
#OLLAMA_HOST=0.0.0.0:11434
#OLLAMA_KEEP_ALIVE=5m
#OLLAMA_NUM_PARALLEL=1
#HTTPS_PROXY=http://proxy.example:3128
"""


UPDATE_SERVICE_NAME = "llm-appliance-update.service"
UPDATE_TIMER_NAME = "llm-appliance-update.timer"

UPDATE_SERVICE_TEMPLATE = """\
# Written by `llm-appliance systemd install --auto-update`: checks the operator's release feed
# (LLM_APPLIANCE_UPDATE_URL and LLM_APPLIANCE_UPDATE_ROOT in /etc/llm-appliance/env), installs a
# verified newer release, restarts llm-appliance.service and rolls back if it does not come up.
# Nothing is updated while LLM_APPLIANCE_UPDATE_URL is unset.
[Unit]
Description=llm-appliance verified self-update
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
# Root: it replaces {binary} and restarts the service.
ExecStart={binary} update --yes
EnvironmentFile=-/etc/llm-appliance/env
StateDirectory=llm-appliance
Environment="LLM_APPLIANCE_UPDATE_STATE_DIR={state_dir}/update"
# The health gate may wait for the restarted service (TimeoutStartSec=180) and a rollback.
TimeoutStartSec=900
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome=yes
PrivateTmp=yes
"""

UPDATE_TIMER_TEMPLATE = """\
# Written by `llm-appliance systemd install --auto-update`. The randomized delay spreads a fleet's
# checks over {delay}, so a release does not reach every box (and the feed) at once.
[Unit]
Description=Check for a verified llm-appliance release

[Timer]
OnCalendar=daily
RandomizedDelaySec={delay}
Persistent=true

[Install]
WantedBy=timers.target
"""


def render_update_units(binary: str = DEFAULT_BINARY, delay: str = "6h") -> tuple[str, str]:
    """The oneshot update service and its timer."""
    service = UPDATE_SERVICE_TEMPLATE.format(binary=binary, state_dir=STATE_DIR)
    return service, UPDATE_TIMER_TEMPLATE.format(delay=delay)


def render_unit(binary: str = DEFAULT_BINARY) -> str:
    """The unit text with ExecStart pointing at `binary`."""
    if any(c.isspace() for c in binary) or not binary.startswith("/"):
        raise ValueError(f"binary must be an absolute path without spaces: {binary!r}")
    return UNIT_TEMPLATE.format(binary=binary, user=SERVICE_USER, state_dir=STATE_DIR)


def quote_environment(name: str, value: str) -> str:
    """One `Environment=` line that systemd reads back as exactly `name=value`.

    systemd unquotes C-style inside double quotes and expands `%` specifiers in Environment=,
    so `\\`, `"` and `%` are escaped (a proxy password often holds `%40`).
    """
    if not name.isidentifier():
        raise ValueError(f"not a variable name: {name!r}")
    if any(ord(c) < 32 for c in value):
        raise ValueError(f"control character in the value of {name}")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'Environment="{name}={escaped}"'


def render_proxy_dropin(
    https_proxy: str | None,
    http_proxy: str | None = None,
    no_proxy: str | None = None,
    ca_file: str | None = None,
) -> str:
    """The proxy drop-in, `[Service]` header included (its absence was ollama#4454)."""
    lines = [
        "# Written by `llm-appliance systemd proxy`; remove with `llm-appliance systemd proxy"
        " --remove`.",
        "[Service]",
    ]
    if https_proxy:
        lines.append(quote_environment("HTTPS_PROXY", https_proxy))
    if http_proxy:
        lines.append(quote_environment("HTTP_PROXY", http_proxy))
    if no_proxy is None:
        no_proxy = DEFAULT_NO_PROXY
    lines.append(quote_environment("NO_PROXY", no_proxy))
    if ca_file:
        lines.append(quote_environment("SSL_CERT_FILE", ca_file))
        lines.append(quote_environment("LLM_APPLIANCE_CA_FILE", ca_file))
    return "\n".join(lines) + "\n"


def render_models_dropin(models_dir: str) -> str:
    """A drop-in that moves the model store and opens the sandbox for it."""
    path = Path(models_dir)
    if not path.is_absolute():
        raise ValueError(f"models directory must be absolute: {models_dir!r}")
    lines = [
        "# Written by `llm-appliance systemd install --models`.",
        "[Service]",
        quote_environment("OLLAMA_MODELS", str(path)),
        f"ReadWritePaths={_escape_path(str(path))}",
    ]
    if path.parts[1:2] in (("home",), ("root",)):
        # ProtectHome=yes hides /home whatever ReadWritePaths says; tmpfs + a bind shows just this.
        lines += ["ProtectHome=tmpfs", f"BindPaths={_escape_path(str(path))}"]
    return "\n".join(lines) + "\n"


def _escape_path(path: str) -> str:
    if any(c.isspace() for c in path):
        raise ValueError(f"path with whitespace is not supported here: {path!r}")
    return path.replace("%", "%%")


def _write(path: Path, text: str, mode: int) -> None:
    """Write atomically so a half-written unit is never read by a concurrent daemon-reload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _reload(no_reload: bool) -> int:
    if no_reload:
        return 0
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        print("systemctl not found: run `systemctl daemon-reload` yourself", file=sys.stderr)
        return 1
    result = subprocess.run([systemctl, "daemon-reload"], check=False)
    if result.returncode != 0:
        print("systemctl daemon-reload failed (is systemd running here?)", file=sys.stderr)
    return result.returncode


def ensure_user(root: Path) -> str:
    """Create the system user when installing for real as root; say what happened."""
    try:
        pwd.getpwnam(SERVICE_USER)
        return f"user {SERVICE_USER} exists"
    except KeyError:
        pass
    if root != Path("/") or os.geteuid() != 0:
        return f"create the system user yourself: useradd --system --user-group {SERVICE_USER}"
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--home-dir",
            STATE_DIR,
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            SERVICE_USER,
        ],
        check=True,
    )
    return f"created system user {SERVICE_USER}"


def install(args: argparse.Namespace) -> int:
    """Write the unit (and the env file once) under --root, then daemon-reload."""
    root = Path(args.root)
    binary = str(Path(args.binary).absolute())
    unit = root / UNIT_DIR / UNIT_NAME
    _write(unit, render_unit(binary), 0o644)
    print(f"wrote {unit}")
    env_file = root / ENV_FILE
    if not env_file.exists():
        _write(env_file, ENV_TEMPLATE, 0o640)
        print(f"wrote {env_file}")
    if args.models:
        dropin = root / UNIT_DIR / f"{UNIT_NAME}.d" / "models.conf"
        _write(dropin, render_models_dropin(args.models), 0o644)
        print(f"wrote {dropin}; the directory must be writable by user {SERVICE_USER}")
    if args.auto_update:
        service, timer = render_update_units(binary, args.update_delay)
        for name, text in ((UPDATE_SERVICE_NAME, service), (UPDATE_TIMER_NAME, timer)):
            _write(root / UNIT_DIR / name, text, 0o644)
            print(f"wrote {root / UNIT_DIR / name}")
    if not args.no_user:
        print(ensure_user(root))
    rc = _reload(args.no_reload)
    if rc == 0:
        print(f"start it with: systemctl enable --now {UNIT_NAME}")
        if args.auto_update:
            print(
                "set LLM_APPLIANCE_UPDATE_URL and LLM_APPLIANCE_UPDATE_ROOT in "
                f"/etc/llm-appliance/env, then: systemctl enable --now {UPDATE_TIMER_NAME}"
            )
    return rc


def proxy(args: argparse.Namespace) -> int:
    """Write, replace or remove the proxy drop-in, then daemon-reload."""
    dropin = Path(args.root) / UNIT_DIR / f"{UNIT_NAME}.d" / "proxy.conf"
    if args.remove:
        if dropin.exists():
            dropin.unlink()
            print(f"removed {dropin}")
        else:
            print(f"{dropin} was not there")
        try:
            dropin.parent.rmdir()
        except OSError:
            pass  # other drop-ins remain, or it never existed
        return _reload(args.no_reload)
    if not (args.https_proxy or args.http_proxy):
        print("give --https-proxy (and optionally --http-proxy), or --remove", file=sys.stderr)
        return 2
    ca_file = None
    if args.ca_file:
        ca_path = Path(args.ca_file).absolute()
        if not ca_path.is_file():
            print(f"CA file not found: {ca_path}", file=sys.stderr)
            return 2
        if ca_path.parts[1:2] in (("home",), ("root",)):
            print(
                f"warning: {ca_path} is hidden by ProtectHome=yes; copy it under /etc",
                file=sys.stderr,
            )
        ca_file = str(ca_path)
    if args.http_proxy:
        print(
            "note: HTTP_PROXY also applies to plain-HTTP requests; pulls only need HTTPS_PROXY",
            file=sys.stderr,
        )
    text = render_proxy_dropin(args.https_proxy, args.http_proxy, args.no_proxy, ca_file)
    has_secret = any(
        urllib.parse.urlsplit(url).password for url in (args.https_proxy, args.http_proxy) if url
    )
    _write(dropin, text, 0o600 if has_secret else 0o644)
    print(f"wrote {dropin}")
    rc = _reload(args.no_reload)
    if rc == 0 and not args.no_reload:
        print(f"apply it with: systemctl restart {UNIT_NAME}")
    return rc


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `systemd install` and `systemd proxy`."""
    parser = subparsers.add_parser("systemd", help="install the systemd service and its proxy")
    sub = parser.add_subparsers(dest="systemd_command", metavar="ACTION", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default="/", help="write under this directory (default /)")
    common.add_argument("--no-reload", action="store_true", help="skip systemctl daemon-reload")

    p_install = sub.add_parser("install", parents=[common], help="write the service unit")
    p_install.add_argument("--binary", default=_default_binary(), help="path for ExecStart")
    p_install.add_argument("--models", help="models directory outside the state directory")
    p_install.add_argument("--no-user", action="store_true", help="do not create the system user")
    p_install.add_argument(
        "--auto-update",
        action="store_true",
        help="also write the update timer and service (verified updates from your feed)",
    )
    p_install.add_argument(
        "--update-delay", default="6h", help="the timer's RandomizedDelaySec (default 6h)"
    )
    p_install.set_defaults(func=install)

    p_proxy = sub.add_parser("proxy", parents=[common], help="write the proxy drop-in")
    p_proxy.add_argument("--https-proxy", help="proxy URL for HTTPS (model pulls)")
    p_proxy.add_argument("--http-proxy", help="proxy URL for plain HTTP")
    p_proxy.add_argument("--no-proxy", help=f"hosts to reach directly (default {DEFAULT_NO_PROXY})")
    p_proxy.add_argument("--ca-file", help="PEM bundle of the proxy's CA")
    p_proxy.add_argument("--remove", action="store_true", help="delete the proxy drop-in")
    p_proxy.set_defaults(func=proxy)


def _default_binary() -> str:
    """This executable when frozen (installing itself), else the conventional path."""
    if getattr(sys, "frozen", False):
        return sys.executable
    return DEFAULT_BINARY


def main(argv: list[str] | None = None) -> int:
    """Only the `systemd` subcommand: lets install.sh tests run it without the whole CLI."""
    parser = argparse.ArgumentParser(prog="llm-appliance")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
