"""The one place that reads settings: OLLAMA_* variables, our own LLM_APPLIANCE_* ones, a TOML file.

Users move here from Ollama with their systemd drop-ins and shell profiles, so every OLLAMA_*
variable keeps Ollama's name, default and parse rules (reference §5, pinned by Ollama's TestHost,
TestLogLevel, TestKeepAlive, TestOrigins...), including its fallbacks: a bad Ollama variable
warns and uses the default, as Ollama does. What Ollama's variables cannot say well (a memory
budget, a CA file, a list of origins) can also go in a TOML file; variables win over the file, and
anything wrong in the file, or in one of our own variables, stops start-up with a `ConfigError`
naming the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from appliance.gocompat.durations import FOREVER, env_duration_seconds, format_go_duration
from appliance.gocompat.strconv import parse_bool, parse_int, parse_int_clamped, parse_uint
from appliance.gocompat.urls import redact as mask_url_credentials
from engine.cpu_backend import VARIANT_FEATURES

if TYPE_CHECKING:
    from appliance.settings.platform import PlatformDefaults

log = logging.getLogger(__name__)
_T = TypeVar("_T")

TRACE = 5  # Ollama's slog LevelTrace (-8), as a Python logging level below DEBUG
DEFAULT_PORT = 11434
DEFAULT_CONFIG_PATH = Path("/etc/llm-appliance/config.toml")
DEFAULT_KEEP_ALIVE = 300.0
DEFAULT_LOAD_TIMEOUT = 300.0
DEFAULT_WRITE_TIMEOUT = 60.0  # a client that accepts no byte for this long is dropped
DEFAULT_MAX_QUEUE = 512
CPU_DEFAULT_NUM_CTX = 4096
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
# Host RAM (MiB) per loaded model for prompt states saved from reused slots (llama-server: 8192).
DEFAULT_CACHE_RAM_MIB = 256

# gin-contrib/cors with AllowBrowserExtensions: an origin without `*` must start with one of these.
ORIGIN_SCHEMES = (
    "http://",
    "https://",
    "chrome-extension://",
    "safari-extension://",
    "moz-extension://",
    "ms-browser-extension://",
)


def _default_origins() -> tuple[str, ...]:
    origins: list[str] = []
    for host in ("localhost", "127.0.0.1", "0.0.0.0"):
        origins += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
    origins += ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]
    return tuple(origins)


DEFAULT_ORIGINS = _default_origins()

# TOML keys and the variable each mirrors (the variable wins).
FILE_KEYS: dict[str, str] = {
    "host": "OLLAMA_HOST",
    "models": "OLLAMA_MODELS",
    "keep_alive": "OLLAMA_KEEP_ALIVE",
    "load_timeout": "OLLAMA_LOAD_TIMEOUT",
    "context_length": "OLLAMA_CONTEXT_LENGTH",
    "num_parallel": "OLLAMA_NUM_PARALLEL",
    "max_queue": "OLLAMA_MAX_QUEUE",
    "max_loaded_models": "OLLAMA_MAX_LOADED_MODELS",
    "debug": "OLLAMA_DEBUG",
    "noprune": "OLLAMA_NOPRUNE",
    "origins": "OLLAMA_ORIGINS",
    "flash_attention": "OLLAMA_FLASH_ATTENTION",
    "kv_cache_type": "OLLAMA_KV_CACHE_TYPE",
    "memory_budget": "LLM_APPLIANCE_MEMORY_BUDGET",
    "num_threads": "LLM_APPLIANCE_NUM_THREADS",
    "ca_file": "LLM_APPLIANCE_CA_FILE",
    "import_reference": "LLM_APPLIANCE_IMPORT_REFERENCE",
    "metrics": "LLM_APPLIANCE_METRICS",
    "api_keys": "LLM_APPLIANCE_API_KEYS",
    "api_key_file": "LLM_APPLIANCE_API_KEY_FILE",
    "admin_keys": "LLM_APPLIANCE_ADMIN_KEYS",
    "admin_key_file": "LLM_APPLIANCE_ADMIN_KEY_FILE",
    "metrics_keys": "LLM_APPLIANCE_METRICS_KEYS",
    "metrics_key_file": "LLM_APPLIANCE_METRICS_KEY_FILE",
    "update_url": "LLM_APPLIANCE_UPDATE_URL",
    "update_root": "LLM_APPLIANCE_UPDATE_ROOT",
    "update_state_dir": "LLM_APPLIANCE_UPDATE_STATE_DIR",
    "drop_unsupported_tools": "LLM_APPLIANCE_DROP_UNSUPPORTED_TOOLS",
    "write_timeout": "LLM_APPLIANCE_WRITE_TIMEOUT",
    "allowed_registries": "LLM_APPLIANCE_ALLOWED_REGISTRIES",
    "https_proxy": "HTTPS_PROXY",
    "http_proxy": "HTTP_PROXY",
    "no_proxy": "NO_PROXY",
    "cpu_variant": "LLM_APPLIANCE_CPU_VARIANT",
    "prompt_cache": "LLM_APPLIANCE_PROMPT_CACHE",
    "cache_ram": "LLM_APPLIANCE_CACHE_RAM",
}


# llama.cpp's x86 CPU variants, for LLM_APPLIANCE_CPU_VARIANT.
CPU_VARIANTS = tuple(VARIANT_FEATURES)


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable or file key."""


@dataclass(frozen=True)
class HostSpec:
    """OLLAMA_HOST after Ollama's envconfig.Host(): scheme, bind host ("" = all), port, path."""

    scheme: str = "http"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    path: str = ""

    @property
    def url(self) -> str:
        text = f"{self.scheme}://{join_host_port(self.host, self.port)}"
        return f"{text}/{self.path}" if self.path else text


@dataclass(frozen=True)
class Settings:
    """Effective settings, built once at start-up and passed around as one object.

    0 / None mean "automatic" for num_parallel, max_loaded_models, context_length, memory_budget,
    num_threads and flash_attention; `with_platform_defaults` fills them from the machine.
    Durations are float seconds, FOREVER (math.inf) for "never".
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    scheme: str = "http"
    base_path: str = ""
    models_dir: Path = field(default_factory=lambda: Path.home() / ".ollama" / "models")
    keep_alive: float = DEFAULT_KEEP_ALIVE
    load_timeout: float = DEFAULT_LOAD_TIMEOUT
    context_length: int = 0
    num_parallel: int = 0
    max_queue: int = DEFAULT_MAX_QUEUE
    max_loaded_models: int = 0
    log_level: int = logging.INFO
    origins: tuple[str, ...] = DEFAULT_ORIGINS
    noprune: bool = False
    flash_attention: bool | None = None
    kv_cache_type: str = ""
    memory_budget: int | None = None
    num_threads: int | None = None
    https_proxy: str | None = None
    http_proxy: str | None = None
    no_proxy: str | None = None
    ca_file: str | None = None
    config_file: Path | None = None
    import_reference: bool = True  # import the reference model into an empty store at start
    metrics: bool = True  # serve GET /metrics (Prometheus text format)
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # non-empty: every route needs one
    api_key_file: Path | None = None  # one key per line, re-read when it changes
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # Key scopes (appliance.api.middleware.auth): admin keys guard the routes that change the
    # store; metrics keys guard /metrics alone. Either set without inference keys leaves
    # inference open.
    admin_keys: tuple[str, ...] = field(default=(), repr=False)
    admin_key_file: Path | None = None
    metrics_keys: tuple[str, ...] = field(default=(), repr=False)
    metrics_key_file: Path | None = None
    update_url: str | None = None  # base URL of the TUF release feed; None: updates are off
    update_root: Path | None = None  # the trusted root.json the box starts from
    update_state_dir: Path | None = None  # tuf's trusted metadata and the last check
    # Chat with tools on a model whose template has no tools: drop them (logged once per model)
    # instead of Ollama's 400 (Open WebUI attaches its built-in tools to every chat).
    drop_unsupported_tools: bool = False
    write_timeout: float = DEFAULT_WRITE_TIMEOUT  # drop a client that accepts no byte this long
    allowed_registries: tuple[str, ...] = ()  # hosts pulls and pushes may use; empty: any
    cpu_variant: str = "auto"  # llama.cpp's CPU code: "auto" (the best that runs) or a variant
    prompt_cache: bool = True  # keep each sequence's KV for the next prompt sharing its prefix
    # MiB of host RAM per loaded model for the prompt states of reused slots; 0: none.
    cache_ram: int = DEFAULT_CACHE_RAM_MIB

    @classmethod
    def for_tests(cls, **overrides: Any) -> Settings:
        """Settings that read nothing from the environment: port 0, a fresh temporary models dir."""
        if "models_dir" not in overrides:
            overrides["models_dir"] = Path(tempfile.mkdtemp(prefix="llm-appliance-models-"))
        overrides.setdefault("port", 0)
        for name in ("origins", "api_keys", "admin_keys", "metrics_keys", "allowed_registries"):
            if name in overrides:
                overrides[name] = tuple(overrides[name])
        return cls(**overrides)

    @property
    def auth_enabled(self) -> bool:
        """Whether requests need an API key: any key given, or a key file (even an empty one)."""
        return bool(self.api_keys) or self.api_key_file is not None

    @property
    def admin_auth_enabled(self) -> bool:
        """Whether store changes need an admin key: any admin key, or an admin key file."""
        return bool(self.admin_keys) or self.admin_key_file is not None

    @property
    def any_auth_enabled(self) -> bool:
        """Whether any route needs a key (inference, admin or metrics)."""
        return self.auth_enabled or self.admin_auth_enabled or self.metrics_auth_enabled

    @property
    def metrics_auth_enabled(self) -> bool:
        """Whether /metrics has keys of its own: any metrics key, or a metrics key file."""
        return bool(self.metrics_keys) or self.metrics_key_file is not None

    @property
    def loopback_only(self) -> bool:
        """Whether the bind address is reachable from this machine only."""
        return is_loopback_host(self.host)

    @property
    def host_url(self) -> str:
        """OLLAMA_HOST as Ollama prints it, e.g. `http://127.0.0.1:11434`."""
        return HostSpec(self.scheme, self.host, self.port, self.base_path).url

    @property
    def bind(self) -> str:
        """The `host:port` hypercorn binds; an empty host (`:1234`) means all interfaces."""
        return join_host_port(self.host or "0.0.0.0", self.port)

    @property
    def client_base_url(self) -> str:
        """A URL a local client can connect to: 0.0.0.0 and "" become 127.0.0.1, :: becomes ::1."""
        host = connectable_host(self.host)
        text = f"{self.scheme}://{join_host_port(host, self.port)}"
        return f"{text}/{self.base_path}" if self.base_path else text

    @property
    def default_num_ctx(self) -> int:
        """num_ctx when neither model nor request sets one: OLLAMA_CONTEXT_LENGTH, else the CPU
        tier (4096). GPU tiers come from `platform.vram_tier_num_ctx` via with_platform_defaults."""
        return self.context_length or CPU_DEFAULT_NUM_CTX

    def with_platform_defaults(self, defaults: PlatformDefaults) -> Settings:
        """These settings with every automatic value decided by the machine's defaults."""
        return dataclasses.replace(
            self,
            num_parallel=self.num_parallel or defaults.num_parallel,
            max_loaded_models=self.max_loaded_models or defaults.max_loaded_models,
            context_length=self.context_length or defaults.num_ctx,
            memory_budget=self.memory_budget or defaults.memory_budget,
            num_threads=self.num_threads or defaults.num_threads,
        )

    def as_log_map(self) -> dict[str, str]:
        """The effective settings for the one start-up log line (Ollama logs `server config`),
        under the variable names users set, proxy credentials masked."""

        def auto(value: object) -> str:
            return "auto" if value in (0, None) else str(value)

        return {
            "OLLAMA_HOST": self.host_url,
            "OLLAMA_MODELS": str(self.models_dir),
            "OLLAMA_KEEP_ALIVE": format_go_duration(self.keep_alive),
            "OLLAMA_LOAD_TIMEOUT": format_go_duration(self.load_timeout),
            "OLLAMA_CONTEXT_LENGTH": auto(self.context_length),
            "OLLAMA_NUM_PARALLEL": auto(self.num_parallel),
            "OLLAMA_MAX_QUEUE": str(self.max_queue),
            "OLLAMA_MAX_LOADED_MODELS": auto(self.max_loaded_models),
            "OLLAMA_DEBUG": level_name(self.log_level),
            "OLLAMA_NOPRUNE": str(self.noprune).lower(),
            "OLLAMA_ORIGINS": ",".join(self.origins),
            "OLLAMA_FLASH_ATTENTION": (
                "auto" if self.flash_attention is None else str(self.flash_attention).lower()
            ),
            "OLLAMA_KV_CACHE_TYPE": self.kv_cache_type or "f16",
            "LLM_APPLIANCE_MEMORY_BUDGET": auto(self.memory_budget),
            "LLM_APPLIANCE_NUM_THREADS": auto(self.num_threads),
            "LLM_APPLIANCE_CA_FILE": self.ca_file or "",
            "LLM_APPLIANCE_CONFIG": str(self.config_file or ""),
            "LLM_APPLIANCE_METRICS": str(self.metrics).lower(),
            "LLM_APPLIANCE_API_KEYS": f"{len(self.api_keys)} keys" if self.api_keys else "",
            "LLM_APPLIANCE_API_KEY_FILE": str(self.api_key_file or ""),
            "LLM_APPLIANCE_ADMIN_KEYS": f"{len(self.admin_keys)} keys" if self.admin_keys else "",
            "LLM_APPLIANCE_ADMIN_KEY_FILE": str(self.admin_key_file or ""),
            "LLM_APPLIANCE_METRICS_KEYS": (
                f"{len(self.metrics_keys)} keys" if self.metrics_keys else ""
            ),
            "LLM_APPLIANCE_METRICS_KEY_FILE": str(self.metrics_key_file or ""),
            "LLM_APPLIANCE_UPDATE_URL": self.update_url or "",
            "LLM_APPLIANCE_UPDATE_ROOT": str(self.update_root or ""),
            "LLM_APPLIANCE_DROP_UNSUPPORTED_TOOLS": str(self.drop_unsupported_tools).lower(),
            "HTTPS_PROXY": mask_url_credentials(self.https_proxy or ""),
            "HTTP_PROXY": mask_url_credentials(self.http_proxy or ""),
            "NO_PROXY": self.no_proxy or "",
            "LLM_APPLIANCE_WRITE_TIMEOUT": format_go_duration(self.write_timeout),
            "LLM_APPLIANCE_ALLOWED_REGISTRIES": ",".join(self.allowed_registries),
            "LLM_APPLIANCE_CPU_VARIANT": self.cpu_variant,
            "LLM_APPLIANCE_PROMPT_CACHE": str(self.prompt_cache).lower(),
            "LLM_APPLIANCE_CACHE_RAM": str(self.cache_ram),
        }


# --- small Go-compatible helpers -----------------------------------------------------------------


def env_var(environ: Mapping[str, str], key: str) -> str:
    """Ollama's envconfig.Var: trim whitespace, then any surrounding `"` and `'` characters."""
    return environ.get(key, "").strip().strip("\"'")


def env_bool(text: str) -> bool:
    """Ollama's envconfig.Bool on a non-empty value: ParseBool, and any other text is true."""
    parsed = parse_bool(text)
    return True if parsed is None else parsed


def join_host_port(host: str, port: int | str) -> str:
    """Go's net.JoinHostPort: brackets around hosts that contain a colon."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _go_split_host_port(hostport: str) -> tuple[str, str] | None:
    """Go's net.SplitHostPort, returning None where Go returns an error."""
    i = hostport.rfind(":")
    if i < 0:
        return None
    j = k = 0
    if hostport[0] == "[":
        end = hostport.find("]")
        if end < 0 or end + 1 != i:
            return None
        host = hostport[1:end]
        j, k = 1, end + 1
    else:
        host = hostport[:i]
        if ":" in host:
            return None
    if "[" in hostport[j:] or "]" in hostport[k:]:
        return None
    return host, hostport[i + 1 :]


def _go_parse_ip(text: str) -> str | None:
    """Go's net.ParseIP(text).String(), or None (no zones; IPv4-mapped prints as IPv4)."""
    if "%" in text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def parse_host(value: str) -> tuple[HostSpec, str | None]:
    """OLLAMA_HOST by Ollama's envconfig.Host rules (TestHost); also a warning for a bad port."""
    s = value.strip()
    default_port = str(DEFAULT_PORT)
    if "://" in s:
        scheme, hostport = s.split("://", 1)
        if scheme == "http":
            default_port = "80"
        elif scheme == "https":
            default_port = "443"
    else:
        scheme, hostport = "http", s
        if s == "ollama.com":
            scheme, hostport = "https", "ollama.com:443"
    hostport, _, path = hostport.partition("/")
    split = _go_split_host_port(hostport)
    if split is None:
        host, port = "127.0.0.1", default_port
        ip = _go_parse_ip(hostport.strip("[]"))
        if ip is not None:
            host = ip
        elif hostport:
            host = hostport
    else:
        host, port = split
    warning = None
    number = parse_int(port, 32)
    if number is None or not 0 <= number <= 65535:
        warning = f"invalid port {port!r} in OLLAMA_HOST, using default {default_port}"
        number = int(default_port)
    return HostSpec(scheme=scheme, host=host, port=number, path=path), warning


def is_loopback_host(host: str) -> bool:
    """Whether a bind host is loopback only: `localhost`, 127.0.0.0/8, ::1 (also IPv4-mapped).

    "" and 0.0.0.0 / :: mean every interface; any other name may resolve to a public address.
    """
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def connectable_host(host: str) -> str:
    """Ollama's ConnectableHost: where a client on this machine reaches a server bound to `host`."""
    if host == "":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.is_unspecified:
        return "127.0.0.1" if ip.version == 4 else "::1"
    return host


def log_level_from_debug(text: str) -> int:
    """OLLAMA_DEBUG to a Python logging level (TestLogLevel): true/1 DEBUG, 2 TRACE, -1 WARNING,
    -2 ERROR, anything else INFO. Ollama's slog level is -4n for an integer n."""
    if not text:
        return logging.INFO
    if parse_bool(text) is True:
        return logging.DEBUG
    n = parse_int_clamped(text)
    return _level_for_verbosity(0 if n is None else n)


def _level_for_verbosity(n: int) -> int:
    if n == 0:
        return logging.INFO
    if n == 1:
        return logging.DEBUG
    if n >= 2:
        return max(1, TRACE - (n - 2))
    return {-1: logging.WARNING, -2: logging.ERROR}.get(n, logging.CRITICAL)


def level_name(level: int) -> str:
    if level == TRACE:
        return "TRACE"
    if level < TRACE:
        return f"TRACE-{TRACE - level}"
    return logging.getLevelName(level)


_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}  # fmt: skip
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*")


def parse_byte_size(text: str) -> int:
    """Bytes from `6442450944`, `6GiB`, `512MB`, `1.5G` (k/m/g/t alone are binary)."""
    match = _SIZE.fullmatch(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size (use bytes, or a unit such as 6GiB or 512MB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def check_origins(origins: tuple[str, ...], source: str) -> None:
    """gin-contrib/cors's start-up validation (Ollama panics on these; we stop with a message)."""
    for origin in origins:
        if origin.count("*") > 1:
            raise ConfigError(f"{source}: origin {origin!r}: only one * is allowed")
        if "*" not in origin and not origin.startswith(ORIGIN_SCHEMES):
            raise ConfigError(
                f"{source}: bad origin {origin!r}: origins must contain '*' or include "
                + ",".join(ORIGIN_SCHEMES)
            )


# --- loading -------------------------------------------------------------------------------------


def load_settings(
    environ: Mapping[str, str] | None = None,
    config_path: Path | str | None = None,
    *,
    default_config_path: Path = DEFAULT_CONFIG_PATH,
) -> Settings:
    """Settings from `environ` (default os.environ) over the TOML file over the defaults.

    The file is `config_path`, else LLM_APPLIANCE_CONFIG, else `default_config_path` if it exists.
    Raises ConfigError for a bad file, or a bad variable that Ollama has no fallback for.
    """
    env = os.environ if environ is None else environ
    path = _config_path(env, config_path, default_config_path)
    file_values = _read_file(path) if path is not None else {}
    loader = _Loader(env, file_values, path)
    return loader.load()


def _config_path(env: Mapping[str, str], explicit: Path | str | None, default: Path) -> Path | None:
    if explicit is not None:
        path, source = Path(explicit), "config path"
    elif env_var(env, "LLM_APPLIANCE_CONFIG"):
        path, source = Path(env_var(env, "LLM_APPLIANCE_CONFIG")), "LLM_APPLIANCE_CONFIG"
    else:
        return default if default.is_file() else None
    if not path.is_file():
        raise ConfigError(f"{source}: config file {str(path)!r} does not exist")
    return path


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(FILE_KEYS))})"
        )
    return data


class _Loader:
    """Resolves each setting: variable (Ollama's rules), else file key (strict), else default."""

    def __init__(self, env: Mapping[str, str], file_values: dict[str, Any], path: Path | None):
        self.env = env
        self.file = file_values
        self.path = path
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("%s", message)

    def file_value(self, key: str, convert: Callable[[Any], Any]) -> Any:
        """The converted file value for `key`, or None when absent; errors name file and key."""
        if key not in self.file:
            return None
        try:
            return convert(self.file[key])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{self.path}: {key}: {exc}") from None

    def strict(self, var: str, key: str, convert: Callable[[Any], _T]) -> _T | None:
        """The variable through `convert`, else the file's `key` (None when neither is set); a
        value `convert` refuses stops start-up, named by its variable (no fallback as Ollama's)."""
        text = env_var(self.env, var)
        if not text:
            return self.file_value(key, convert)
        try:
            return convert(text)
        except ValueError as exc:
            raise ConfigError(f"{var}: {exc}") from None

    def load(self) -> Settings:
        host = self.host()
        return Settings(
            host=host.host,
            port=host.port,
            scheme=host.scheme,
            base_path=host.path,
            models_dir=self.models_dir(),
            keep_alive=self.duration("OLLAMA_KEEP_ALIVE", "keep_alive", DEFAULT_KEEP_ALIVE),
            load_timeout=self.load_timeout(),
            context_length=self.uint("OLLAMA_CONTEXT_LENGTH", "context_length", 0),
            num_parallel=self.uint("OLLAMA_NUM_PARALLEL", "num_parallel", 0),
            max_queue=self.uint("OLLAMA_MAX_QUEUE", "max_queue", DEFAULT_MAX_QUEUE),
            max_loaded_models=self.uint("OLLAMA_MAX_LOADED_MODELS", "max_loaded_models", 0),
            log_level=self.log_level(),
            origins=self.origins(),
            noprune=self.flag("OLLAMA_NOPRUNE", "noprune", False),
            flash_attention=self.flag("OLLAMA_FLASH_ATTENTION", "flash_attention", None),
            kv_cache_type=self.kv_cache_type(),
            memory_budget=self.memory_budget(),
            num_threads=self.num_threads(),
            https_proxy=self.proxy("https_proxy", "HTTPS_PROXY", "https_proxy"),
            http_proxy=self.proxy("http_proxy", "HTTP_PROXY", "http_proxy"),
            no_proxy=self.proxy("no_proxy", "NO_PROXY", "no_proxy"),
            ca_file=self.ca_file(),
            config_file=self.path,
            import_reference=self.flag("LLM_APPLIANCE_IMPORT_REFERENCE", "import_reference", True),
            metrics=bool(self.flag("LLM_APPLIANCE_METRICS", "metrics", True)),
            api_keys=self.api_keys(),
            api_key_file=self.api_key_file(),
            update_url=self.update_url(),
            update_root=self.readable_file("LLM_APPLIANCE_UPDATE_ROOT", "update_root"),
            update_state_dir=self.directory("LLM_APPLIANCE_UPDATE_STATE_DIR", "update_state_dir"),
            write_timeout=self.write_timeout(),
            allowed_registries=self.allowed_registries(),
            cache_ram=self.uint("LLM_APPLIANCE_CACHE_RAM", "cache_ram", DEFAULT_CACHE_RAM_MIB),
            admin_keys=self.keys("LLM_APPLIANCE_ADMIN_KEYS", "admin_keys"),
            admin_key_file=self.key_file("LLM_APPLIANCE_ADMIN_KEY_FILE", "admin_key_file"),
            metrics_keys=self.keys("LLM_APPLIANCE_METRICS_KEYS", "metrics_keys"),
            metrics_key_file=self.key_file("LLM_APPLIANCE_METRICS_KEY_FILE", "metrics_key_file"),
            drop_unsupported_tools=bool(
                self.flag("LLM_APPLIANCE_DROP_UNSUPPORTED_TOOLS", "drop_unsupported_tools", False)
            ),
            cpu_variant=self.cpu_variant(),
            prompt_cache=bool(self.flag("LLM_APPLIANCE_PROMPT_CACHE", "prompt_cache", True)),
            warnings=tuple(self.warnings),  # last: every setting above may have added one
        )

    # Each method below handles one setting.

    def host(self) -> HostSpec:
        text = env_var(self.env, "OLLAMA_HOST")
        if text:
            spec, warning = parse_host(text)
            if warning:
                self.warn(warning)
            return spec

        def convert(value: Any) -> HostSpec:
            spec, warning = parse_host(_require_str(value))
            if warning:
                raise ValueError(f"{value!r} has an invalid port (use 0-65535)")
            return spec

        return self.file_value("host", convert) or HostSpec()

    def models_dir(self) -> Path:
        home = Path(self.env.get("HOME") or str(Path.home()))
        text = env_var(self.env, "OLLAMA_MODELS")
        if text:
            return _expand_home(text, home)

        def convert(value: Any) -> Path:
            path = _expand_home(_require_str(value), home)
            return path if path.is_absolute() or self.path is None else self.path.parent / path

        return self.file_value("models", convert) or home / ".ollama" / "models"

    def duration(self, var: str, key: str, default: float) -> float:
        return self.env_over_file(
            var,
            key,
            default,
            _file_duration,
            env_duration_seconds,
            lambda text, fallback: (
                f"invalid {var}={text!r}, using default {format_go_duration(fallback)}"
            ),
        )

    def write_timeout(self) -> float:
        """LLM_APPLIANCE_WRITE_TIMEOUT: 0 or less never drops a client that stops reading."""
        return self.timeout("LLM_APPLIANCE_WRITE_TIMEOUT", "write_timeout", DEFAULT_WRITE_TIMEOUT)

    def allowed_registries(self) -> tuple[str, ...]:
        """LLM_APPLIANCE_ALLOWED_REGISTRIES: comma-separated hosts (`host` or `host:port`)."""
        text = env_var(self.env, "LLM_APPLIANCE_ALLOWED_REGISTRIES")
        if text:
            return _registry_list(text.split(","))
        value = self.file_value("allowed_registries", _file_str_list)
        return _registry_list(value or ())

    def load_timeout(self) -> float:
        return self.timeout("OLLAMA_LOAD_TIMEOUT", "load_timeout", DEFAULT_LOAD_TIMEOUT)

    def timeout(self, var: str, key: str, default: float) -> float:
        """A duration where 0 or less means never (Ollama's rule for OLLAMA_LOAD_TIMEOUT)."""
        seconds = self.duration(var, key, default)
        return FOREVER if seconds <= 0 else seconds

    def uint(self, var: str, key: str, default: int) -> int:
        return self.env_over_file(
            var,
            key,
            default,
            _file_uint,
            parse_uint,
            lambda text, fallback: (
                f"invalid environment variable {var}={text!r}, using default {fallback}"
            ),
        )

    def env_over_file(
        self,
        var: str,
        key: str,
        default: _T,
        from_file: Callable[[Any], _T],
        from_env: Callable[[str], _T | None],
        invalid: Callable[[str, _T], str],
    ) -> _T:
        """The variable, else the file's `key`, else `default`; a variable `from_env` cannot read
        (None) is warned about with `invalid(text, fallback)` and the fallback used, as Ollama
        falls back."""
        file_default = self.file_value(key, from_file)
        fallback = default if file_default is None else file_default
        text = env_var(self.env, var)
        if not text:
            return fallback
        value = from_env(text)
        if value is None:
            self.warn(invalid(text, fallback))
            return fallback
        return value

    def flag(self, var: str, key: str, default: bool | None) -> bool | None:
        text = env_var(self.env, var)
        if text:
            return env_bool(text)
        value = self.file_value(key, _file_bool)
        return default if value is None else value

    def log_level(self) -> int:
        text = env_var(self.env, "OLLAMA_DEBUG")
        if text:
            return log_level_from_debug(text)
        value = self.file_value("debug", _file_debug)
        return logging.INFO if value is None else value

    def origins(self) -> tuple[str, ...]:
        text = env_var(self.env, "OLLAMA_ORIGINS")
        if text:
            extra, source = tuple(text.split(",")), "OLLAMA_ORIGINS"
        else:
            extra = self.file_value("origins", _file_str_list) or ()
            source = f"{self.path}: origins"
        origins = extra + DEFAULT_ORIGINS
        check_origins(extra, source)
        return origins

    def kv_cache_type(self) -> str:
        text = env_var(self.env, "OLLAMA_KV_CACHE_TYPE").lower()
        if text:
            if text not in KV_CACHE_TYPES:
                self.warn(f"unsupported OLLAMA_KV_CACHE_TYPE={text!r}, using f16")
                return ""
            return text

        def convert(value: Any) -> str:
            kind = _require_str(value).lower()
            if kind and kind not in KV_CACHE_TYPES:
                raise ValueError(f"{kind!r} is not one of {', '.join(KV_CACHE_TYPES)}")
            return kind

        return self.file_value("kv_cache_type", convert) or ""

    def memory_budget(self) -> int | None:
        return self.strict("LLM_APPLIANCE_MEMORY_BUDGET", "memory_budget", _budget)

    def num_threads(self) -> int | None:
        text = env_var(self.env, "LLM_APPLIANCE_NUM_THREADS")
        if text:
            value = parse_uint(text)
            if value is None:
                raise ConfigError(
                    f"LLM_APPLIANCE_NUM_THREADS: {text!r} is not a whole number of threads"
                )
            return value or None
        return self.file_value("num_threads", _file_uint) or None

    def proxy(self, key: str, *names: str) -> str | None:
        for name in names:
            value = self.env.get(name, "").strip()
            if value:
                return value
        return self.file_value(key, lambda v: _require_str(v).strip() or None)

    def ca_file(self) -> str | None:
        path = self.readable_file("LLM_APPLIANCE_CA_FILE", "ca_file")
        return str(path) if path is not None else None

    def api_keys(self) -> tuple[str, ...]:
        return self.keys("LLM_APPLIANCE_API_KEYS", "api_keys")

    def api_key_file(self) -> Path | None:
        return self.key_file("LLM_APPLIANCE_API_KEY_FILE", "api_key_file")

    def keys(self, var: str, key: str) -> tuple[str, ...]:
        """A comma-separated key list from `var`, else a list of strings under `key`."""
        text = self.env.get(var, "").strip()
        if text:
            return _key_list(text.split(","))
        return self.file_value(key, lambda v: _key_list(_file_str_list(v))) or ()

    def key_file(self, var: str, key: str) -> Path | None:
        """A key file that must exist at start (it may be emptied or rotated later)."""
        return self.readable_file(var, key)

    def update_url(self) -> str | None:
        def convert(value: Any) -> str | None:
            text = _require_str(value).strip()
            if text and not text.startswith(("http://", "https://")):
                raise ValueError(f"{text!r} is not an http:// or https:// URL")
            return text.rstrip("/") or None

        return self.strict("LLM_APPLIANCE_UPDATE_URL", "update_url", convert)

    def readable_file(self, var: str, key: str) -> Path | None:
        """A file that must exist; a relative file value is relative to the config file."""
        text = env_var(self.env, var)
        if text:
            if not Path(text).is_file():
                raise ConfigError(f"{var}: {text!r} is not a readable file")
            return Path(text)

        def convert(value: Any) -> Path:
            path = self.relative_to_file(value)
            if not path.is_file():
                raise ValueError(f"{str(path)!r} is not a readable file")
            return path

        return self.file_value(key, convert)

    def relative_to_file(self, value: Any) -> Path:
        path = Path(_require_str(value))
        return path if path.is_absolute() or self.path is None else self.path.parent / path

    def directory(self, var: str, key: str) -> Path | None:
        """A directory path (created when first used); relative to the config file in it."""
        text = env_var(self.env, var)
        if text:
            return Path(text)

        return self.file_value(key, self.relative_to_file)

    def cpu_variant(self) -> str:
        def check(value: Any) -> str:
            name = _require_str(value).strip().lower() or "auto"
            if name != "auto" and name not in CPU_VARIANTS:
                raise ValueError(f"{name!r} is not auto or one of {', '.join(CPU_VARIANTS)}")
            return name

        return self.strict("LLM_APPLIANCE_CPU_VARIANT", "cpu_variant", check) or "auto"


def read_api_key_file(text: str) -> tuple[str, ...]:
    """The keys of a key file: one a line, blank lines and `#` comment lines skipped."""
    lines = (line.strip() for line in text.splitlines())
    return _key_list(line for line in lines if line and not line.startswith("#"))


def client_api_key(environ: Mapping[str, str] | None = None) -> str | None:
    """The key the CLI client sends: LLM_APPLIANCE_ADMIN_KEY when set (an admin key works on
    every route, and pull/create/rm need one once admin keys exist), else LLM_APPLIANCE_API_KEY."""
    env = os.environ if environ is None else environ
    return env_var(env, "LLM_APPLIANCE_ADMIN_KEY") or env_var(env, "LLM_APPLIANCE_API_KEY") or None


def _key_list(keys: Any) -> tuple[str, ...]:
    """Keys stripped, empty entries dropped, order kept, duplicates removed."""
    return tuple(dict.fromkeys(k.strip() for k in keys if k.strip()))


def _registry_list(hosts: Any) -> tuple[str, ...]:
    """Registry hosts lower-cased, a scheme or path someone pasted dropped, order kept."""
    out = []
    for raw in hosts:
        host = raw.strip().lower()
        host = host.split("://", 1)[-1].split("/", 1)[0]
        if host:
            out.append(host)
    return tuple(dict.fromkeys(out))


def _expand_home(text: str, home: Path) -> Path:
    if text == "~" or text.startswith("~/"):
        return home / text[2:]
    return Path(text)


def _require_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {_toml_type(value)}")
    return value


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    for kind, name in names.items():
        if type(value) is kind:
            return name
    return "an array" if isinstance(value, list) else "a table"


def _file_uint(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def _file_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {_toml_type(value)}")
    return value


def _file_duration(value: Any) -> float:
    """A file duration: a number of seconds or a duration string ("10m", "3600"); < 0 = forever."""
    if isinstance(value, bool):
        raise TypeError('expected a duration such as "10m" or a number of seconds')
    if isinstance(value, (int, float)):
        return FOREVER if value < 0 else float(value)
    seconds = env_duration_seconds(_require_str(value).strip())
    if seconds is None:
        raise ValueError(f'{value!r} is not a duration (use e.g. "10m", "1h30m" or "3600")')
    return seconds


def _file_debug(value: Any) -> int:
    if isinstance(value, bool):
        return logging.DEBUG if value else logging.INFO
    if isinstance(value, int):
        return _level_for_verbosity(value)
    text = _require_str(value).strip()
    names = {
        "trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO,
        "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR,
    }  # fmt: skip
    if text.lower() in names:
        return names[text.lower()]
    if parse_bool(text) is not None or parse_int_clamped(text) is not None:
        return log_level_from_debug(text)
    raise ValueError(f"{text!r} is not a log level (trace, debug, info, warn, error)")


def _file_str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return tuple(value)


def _budget(value: Any) -> int | None:
    """A memory budget: bytes or a size string; 0 or "auto" mean automatic (None)."""
    if isinstance(value, bool):
        raise TypeError('expected bytes or a size such as "6GiB"')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a size >= 0, got {value}")
        return value or None
    text = _require_str(value).strip()
    if text.lower() == "auto":
        return None
    return parse_byte_size(text) or None
