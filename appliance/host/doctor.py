"""`llm-appliance doctor`: what this host offers and what would stop the server, in one report.

Each check is a plain function of injected facts (the host's /proc files, the environment, the
settings), so tests build the facts they need; `gather_host_facts()` reads the real ones. The
report names the fix for each problem users hit in Ollama's issues: slow WSL2 networking (LSO),
a models directory the service user cannot write, a proxy that is not the one expected, and
which of llama.cpp's CPU variants this CPU runs (and why the better ones were rejected).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import platform
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from appliance.gocompat.urls import redact
from appliance.settings.config import Settings, load_settings
from appliance.settings.platform import decide_defaults, detect_facts, format_gib, user_name
from engine.huge_pages import thp_mode

# llama.cpp's CPU code is built once per x86-64 level (GGML_CPU_ALL_VARIANTS) and chosen at start
# (engine/cpu_backend.py), down to the x86-64 baseline: no CPU flag is required any more.
GOOD_TO_HAVE_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vnni", "avx_vnni")
BUILD_GLIBC = "2.36"  # Debian 12's; the one-file binary needs this glibc or newer
WSL_SCRIPT = "wsl/Tune-WslNetwork.ps1"
LOW_MEMORY_BYTES = 2 * 1024**3


class Status(str, enum.Enum):
    OK = "ok"
    INFO = "info"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    """One line of the report; `hint` says what to do when the status is not ok."""

    name: str
    status: Status
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)
    hint: str | None = None

    def as_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        return data


@dataclass(frozen=True)
class HostFacts:
    """What the checks read from the host; tests construct these directly."""

    proc_version: str = ""
    cpuinfo: str = ""
    meminfo: str = ""
    machine: str = "x86_64"
    glibc: str | None = None
    frozen: bool = False
    cpu_code: Any = None  # engine.cpu_backend.Choice, or why none runs (str); None: not asked
    thp_mode: str = ""  # transparent huge pages: "always", "madvise", "never"; "": none


def gather_host_facts(cpu_variant: str = "auto") -> HostFacts:
    """Read the real host: /proc files, the machine type, glibc, whether we run as the binary,
    and the CPU variant the server would load (probing in child processes what is not cached)."""

    def read(path: str) -> str:
        try:
            return Path(path).read_text(errors="replace")
        except OSError:
            return ""

    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        glibc = None
    return HostFacts(
        proc_version=read("/proc/version"),
        cpuinfo=read("/proc/cpuinfo"),
        meminfo=read("/proc/meminfo"),
        machine=platform.machine(),
        glibc=glibc,
        frozen=bool(getattr(sys, "frozen", False)),
        cpu_code=_cpu_code(cpu_variant),
        thp_mode=thp_mode(),
    )


def _cpu_code(cpu_variant: str) -> Any:
    from engine import cpu_backend

    try:
        return cpu_backend.choose(cpu_variant)
    except cpu_backend.CpuBackendError as exc:
        return str(exc)


# -- WSL ---------------------------------------------------------------------------------------


def detect_wsl(facts: HostFacts, environ: Mapping[str, str]) -> int | None:
    """2 for WSL2, 1 for WSL1, None outside WSL (from /proc/version and WSL_DISTRO_NAME)."""
    version = facts.proc_version.lower()
    if "microsoft" not in version and "wsl" not in version and not environ.get("WSL_DISTRO_NAME"):
        return None
    if "wsl2" in version or "microsoft-standard" in version:
        return 2
    if "microsoft" in version:
        return 1
    return 2


def wsl_script_path() -> Path:
    """Where the LSO script is: beside the sources, or in the release archive's wsl/ folder."""
    here = Path(getattr(sys, "_MEIPASS", Path(__file__).resolve().parents[1]))
    for base in (here, Path(sys.executable).resolve().parent):
        candidate = base / WSL_SCRIPT
        if candidate.is_file():
            return candidate
    return Path(WSL_SCRIPT)


def save_wsl_script(directory: Path) -> Path:
    """Copy the LSO script (bundled in the binary) to `directory`, e.g. /mnt/c/Users/Public."""
    source = wsl_script_path()
    if not source.is_file():
        raise FileNotFoundError(f"{WSL_SCRIPT} is not in this build")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / source.name
    target.write_bytes(source.read_bytes())
    return target


def check_wsl(facts: HostFacts, environ: Mapping[str, str]) -> Check:
    wsl = detect_wsl(facts, environ)
    if wsl is None:
        return Check("wsl", Status.OK, "not running under WSL")
    distro = environ.get("WSL_DISTRO_NAME", "")
    script = wsl_script_path()
    hint = (
        "If model pulls or client traffic are slow, disable 'Large Send Offload Version 2' (IPv4 "
        "and IPv6) on the 'vEthernet (WSL)' adapter: in an administrator PowerShell on Windows run "
        f"`powershell -ExecutionPolicy Bypass -File {script} -DryRun`, then without -DryRun "
        "(-Restore undoes it). Windows updates may reset the setting. Without the sources, "
        "`llm-appliance doctor --save-wsl-script /mnt/c/Users/Public` writes it where Windows "
        "sees it. See wsl/README.md."
    )
    return Check(
        "wsl",
        Status.INFO,
        f"running under WSL{wsl}" + (f" ({distro})" if distro else ""),
        {"wsl": wsl, "distro": distro, "script": str(script)},
        hint,
    )


# -- memory, CPU, glibc --------------------------------------------------------------------------


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as bytes per key."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return values


def check_memory(facts: HostFacts) -> Check:
    info = parse_meminfo(facts.meminfo)
    total, available = info.get("MemTotal"), info.get("MemAvailable")
    if total is None or available is None:
        return Check("memory", Status.WARN, "could not read /proc/meminfo")
    detail = {"total_bytes": total, "available_bytes": available}
    summary = f"{format_gib(available)} available of {format_gib(total)}"
    if available < LOW_MEMORY_BYTES:
        return Check(
            "memory",
            Status.WARN,
            summary,
            detail,
            "little memory is free: use a small quantised model, a lower num_ctx or "
            "OLLAMA_NUM_PARALLEL=1, and OLLAMA_MAX_LOADED_MODELS=1",
        )
    return Check("memory", Status.OK, summary, detail)


def check_huge_pages(facts: HostFacts) -> Check:
    """Whether model weights can sit in 2 MiB pages (engine/huge_pages.py: ~10 % faster decoding
    on the reference model), as loads read them into memory then."""
    mode = facts.thp_mode
    detail = {"thp_mode": mode or None}
    if mode in ("always", "madvise"):
        summary = f"transparent huge pages ({mode}): model weights are read into 2 MiB pages"
        return Check("hugepages", Status.OK, summary, detail)
    if mode == "never":
        return Check(
            "hugepages",
            Status.INFO,
            "transparent huge pages are off: model weights are memory-mapped in 4 KiB pages",
            detail,
            "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (as root) makes "
            "decoding faster; reload the models after it",
        )
    return Check(
        "hugepages", Status.INFO, "no transparent huge pages on this system: models are mapped"
    )


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def check_cpu(facts: HostFacts) -> Check:
    flags = cpu_flags(facts.cpuinfo)
    cores = sum(1 for line in facts.cpuinfo.splitlines() if line.startswith("processor"))
    detail: dict[str, Any] = {"machine": facts.machine, "logical_cpus": cores}
    if facts.machine not in ("x86_64", "AMD64", "amd64"):
        return Check(
            "cpu",
            Status.WARN,
            f"{facts.machine}: the release binary is built for x86-64",
            detail,
            "build from source on this machine (make binary)",
        )
    detail["extras"] = [flag for flag in GOOD_TO_HAVE_CPU_FLAGS if flag in flags]
    code = facts.cpu_code
    if isinstance(code, str):
        return Check(
            "cpu",
            Status.FAIL,
            f"no llama.cpp CPU code can be used: {code}",
            detail,
            "set LLM_APPLIANCE_CPU_VARIANT to a variant that runs here (x64 needs only x86-64), "
            "or reinstall the binary",
        )
    if code is None:
        return Check("cpu", Status.OK, f"{cores} logical CPUs (x86-64)", detail)
    detail["variant"] = code.variant
    detail["verdicts"] = dict(code.verdicts)
    detail["forced"] = code.forced
    summary = f"{cores} logical CPUs; llama.cpp CPU code {code.describe()}"
    return Check("cpu", Status.OK, summary, detail)


def check_glibc(facts: HostFacts) -> Check:
    version = (facts.glibc or "").replace("glibc", "").strip()
    detail = {"glibc": version or None, "binary_needs": BUILD_GLIBC}
    if not version:
        return Check("glibc", Status.INFO, "not glibc (musl?): use the Docker image", detail)
    if _version_tuple(version) < _version_tuple(BUILD_GLIBC):
        return Check(
            "glibc",
            Status.WARN,
            f"glibc {version} is older than {BUILD_GLIBC}",
            detail,
            f"the release binary needs glibc >= {BUILD_GLIBC} (Debian 12, Ubuntu 22.10, "
            "RHEL 10): use the Docker image or build on this host",
        )
    return Check("glibc", Status.OK, f"glibc {version} (binary needs >= {BUILD_GLIBC})", detail)


# -- models directory ----------------------------------------------------------------------------


def check_models_dir(path: Path) -> Check:
    """The store must exist (or be creatable) and be writable by the user running the server."""
    detail: dict[str, Any] = {"path": str(path), "user": user_name()}
    if path.exists():
        st = path.stat()
        detail.update(mode=stat.filemode(st.st_mode), owner_uid=st.st_uid, uid=os.geteuid())
        if not path.is_dir():
            return Check(
                "models",
                Status.FAIL,
                f"{path} is not a directory",
                detail,
                "point OLLAMA_MODELS at a directory",
            )
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            return Check(
                "models",
                Status.FAIL,
                f"{path} is not writable by {detail['user']}",
                detail,
                f"chown -R {detail['user']} {path} (the service runs as "
                "llm-appliance; under systemd also add ReadWritePaths=, see "
                "`llm-appliance systemd install --models`)",
            )
        return Check("models", Status.OK, f"{path} is writable", detail)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    detail["nearest_existing"] = str(parent)
    if os.access(parent, os.W_OK | os.X_OK):
        return Check("models", Status.OK, f"{path} will be created", detail)
    return Check(
        "models",
        Status.FAIL,
        f"{path} is missing and {parent} is not writable",
        detail,
        f"mkdir -p {path} && chown {detail['user']} {path}",
    )


# -- proxy ---------------------------------------------------------------------------------------


def _env(environ: Mapping[str, str], name: str) -> str | None:
    return environ.get(name) or environ.get(name.lower()) or None


def check_proxy(environ: Mapping[str, str]) -> Check:
    """Which proxy pulls will use, passwords masked (proxy trouble is a top Ollama issue)."""
    https_proxy = _env(environ, "HTTPS_PROXY")
    http_proxy = _env(environ, "HTTP_PROXY")
    no_proxy = _env(environ, "NO_PROXY")
    ca_file = environ.get("LLM_APPLIANCE_CA_FILE") or environ.get("SSL_CERT_FILE")
    detail = {
        "https_proxy": redact(https_proxy) if https_proxy else None,
        "http_proxy": redact(http_proxy) if http_proxy else None,
        "no_proxy": no_proxy,
        "ca_file": ca_file,
    }
    if ca_file and not Path(ca_file).is_file():
        return Check(
            "proxy",
            Status.FAIL,
            f"CA file {ca_file} does not exist",
            detail,
            "fix SSL_CERT_FILE / LLM_APPLIANCE_CA_FILE",
        )
    if not https_proxy and not http_proxy:
        return Check("proxy", Status.OK, "no proxy: pulls connect directly", detail)
    summary = f"pulls go through {detail['https_proxy'] or detail['http_proxy']}"
    if http_proxy:
        return Check(
            "proxy",
            Status.WARN,
            summary,
            detail,
            "HTTP_PROXY is set; pulls only need HTTPS_PROXY, and HTTP_PROXY can reroute "
            "clients' plain-HTTP calls: keep localhost,127.0.0.1 in NO_PROXY",
        )
    if not https_proxy:
        return Check(
            "proxy",
            Status.WARN,
            summary,
            detail,
            "only HTTP_PROXY is set: registries are HTTPS, set HTTPS_PROXY on the server",
        )
    return Check("proxy", Status.OK, summary, detail)


# -- exposure ------------------------------------------------------------------------------------


def check_exposure(settings: Settings | None) -> Check:
    """Fail a bind reachable from the network without API keys (the usual exposed-Ollama story)."""
    if settings is None:
        return Check("exposure", Status.INFO, "no settings to check")
    from appliance.api.middleware.auth import exposure_warning

    detail = {
        "host": settings.host,
        "loopback_only": settings.loopback_only,
        "api_keys": settings.auth_enabled,
        "admin_keys": settings.admin_auth_enabled,
        "metrics_keys": settings.metrics_auth_enabled,
    }
    warning = exposure_warning(settings)
    if warning is None:
        if settings.loopback_only:
            summary = f"bound to {settings.host}: reachable from this machine only"
        else:
            summary = f"bound to {settings.host or '0.0.0.0'}: every route needs a key"
        return Check("exposure", Status.OK, summary, detail)
    status = Status.WARN if settings.admin_auth_enabled else Status.FAIL
    summary, _, hint = warning.partition(": ")
    return Check("exposure", status, summary, detail, hint)


# -- the port and the server ---------------------------------------------------------------------


_PORT_TAKEN = "another program holds the port: stop it or set OLLAMA_HOST"


async def check_server(host: str, port: int, *, timeout: float = 3.0) -> Check:
    """Whether something listens on the port, and whether it is an Ollama-compatible server."""
    import httpx

    connect_host = "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)
    detail: dict[str, Any] = {"host": host, "port": port}
    url_host = f"[{connect_host}]" if ":" in connect_host else connect_host
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(connect_host, port)
        except OSError:
            return Check(
                "server",
                Status.INFO,
                f"nothing listens on {host}:{port}",
                detail,
                "start it: llm-appliance serve (or systemctl start llm-appliance)",
            )
        await stream.aclose()
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=timeout) as client:
                response = await client.get(f"http://{url_host}:{port}/")
                version = await client.get(f"http://{url_host}:{port}/api/version")
        except httpx.HTTPError as exc:
            detail["error"] = str(exc)
            return Check(
                "server",
                Status.WARN,
                f"port {port} is in use but does not answer HTTP",
                detail,
                _PORT_TAKEN,
            )
        detail["answer"] = response.text.strip()[:80]
        if response.status_code == 200 and "running" in response.text:
            try:
                detail["version"] = version.json().get("version")
            except (ValueError, AttributeError):
                detail["version"] = None  # an older or partial server: "/" is what matters
            return Check("server", Status.OK, f"a server answers on {host}:{port}", detail)
        return Check(
            "server",
            Status.WARN,
            f"port {port} answers, but not as Ollama would",
            detail,
            _PORT_TAKEN,
        )
    return Check("server", Status.WARN, f"{host}:{port} did not answer in {timeout:g} s", detail)


# -- platform defaults ---------------------------------------------------------------------------


def check_platform(settings: Settings | None = None) -> Check:
    """The defaults the platform rules chose, and the rule that chose each
    (appliance.settings.platform)."""
    facts = detect_facts()
    decided = decide_defaults(facts, context_length=settings.context_length if settings else 0)
    values = _jsonable(decided)
    reasons = values.pop("rules", {}) if isinstance(values, dict) else {}
    defaults = {name: {"value": value, "rule": reasons.get(name)} for name, value in values.items()}
    summary = ", ".join(f"{name}={_short(item['value'])}" for name, item in defaults.items())
    hint = "\n".join(f"{name}: {item['rule']}" for name, item in defaults.items() if item["rule"])
    return Check(
        "platform",
        Status.INFO,
        f"defaults {summary}",
        {"facts": _jsonable(facts), "defaults": defaults},
        hint or None,
    )


def check_updates(settings: Settings | None, environ: Mapping[str, str]) -> Check:
    """The update feed, and when it was last checked with what result (`llm-appliance update`)."""
    url = settings.update_url if settings is not None else None
    if not url:
        return Check(
            "updates",
            Status.INFO,
            "self-update is off (no LLM_APPLIANCE_UPDATE_URL)",
            hint="to update from your own verified feed: packaging/README.md, 'Self-update'",
        )
    from appliance.update.state import UpdateState, default_state_dir

    state_dir = default_state_dir(settings, environ)
    state = UpdateState.load(state_dir)
    detail = {
        "feed": url,
        "trusted_root": str(settings.update_root or ""),
        "state_dir": str(state_dir),
        "last_check": state.last_check,
        "last_result": state.last_result,
        "failed_versions": state.failed_versions,
    }
    if settings.update_root is None:
        return Check(
            "updates",
            Status.FAIL,
            f"feed {url} but no trusted root",
            detail,
            "set LLM_APPLIANCE_UPDATE_ROOT to the feed's root.json",
        )
    if state.last_check is None:
        return Check(
            "updates",
            Status.INFO,
            f"feed {url}, never checked",
            detail,
            "run: llm-appliance update --check",
        )
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(state.last_check))
    status = Status.WARN if state.last_result.startswith("error") else Status.OK
    return Check(
        "updates",
        status,
        f"feed {url}, last checked {when}: {state.last_result}",
        detail,
        "see `llm-appliance update --check`" if status is Status.WARN else None,
    )


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# -- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where the server should be and keep its models, from the settings (or the environment)."""

    host: str
    port: int
    models_dir: Path
    settings: Settings | None = None


def target_from_settings(environ: Mapping[str, str]) -> Target:
    settings = load_settings(dict(environ))
    return Target(settings.host, settings.port, Path(settings.models_dir), settings)


async def run_checks(
    facts: HostFacts,
    environ: Mapping[str, str],
    target: Target,
    *,
    server_timeout: float = 3.0,
) -> list[Check]:
    """Every check, in report order."""
    return [
        check_wsl(facts, environ),
        check_cpu(facts),
        check_memory(facts),
        check_huge_pages(facts),
        check_glibc(facts),
        check_models_dir(target.models_dir),
        check_proxy(environ),
        check_exposure(target.settings),
        await check_server(target.host, target.port, timeout=server_timeout),
        check_platform(target.settings),
        check_updates(target.settings, environ),
    ]


def render_text(checks: Sequence[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"[{check.status.value:>4}] {check.name:<9} {check.summary}")
        if check.hint and check.status is not Status.OK:  # info hints too: WSL, platform rules
            lines.extend(f"{'':17}{line}" for line in check.hint.splitlines())
    return "\n".join(lines)


def exit_code(checks: Sequence[Check]) -> int:
    return 1 if any(check.status is Status.FAIL for check in checks) else 0


def command(args: argparse.Namespace) -> int:
    if args.save_wsl_script:
        try:
            target = save_wsl_script(Path(args.save_wsl_script))
        except OSError as exc:
            print(f"llm-appliance doctor: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {target}")
        return 0
    environ = dict(os.environ)
    try:
        target = target_from_settings(environ)
    except ValueError as exc:  # config.ConfigError: the server would refuse to start too
        print(f"[fail] config    {exc}")
        return 1
    cpu_variant = target.settings.cpu_variant if target.settings else "auto"
    checks = trio.run(run_checks, gather_host_facts(cpu_variant), environ, target)
    if args.json:
        print(json.dumps([check.as_json() for check in checks], indent=2))
    else:
        print(render_text(checks))
    return exit_code(checks)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `doctor`."""
    parser = subparsers.add_parser("doctor", help="check this host and the server's settings")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--save-wsl-script",
        metavar="DIR",
        help="write Tune-WslNetwork.ps1 into DIR (e.g. /mnt/c/Users/Public)",
    )
    parser.set_defaults(func=command)


def _short(value: Any) -> str:
    if isinstance(value, int) and value >= 1024**3:
        return format_gib(value)
    return str(value)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)
