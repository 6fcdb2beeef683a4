"""Settings from OLLAMA_* variables, LLM_APPLIANCE_* variables and a TOML file.

Conventions: every test passes its own `environ` dict (never os.environ) and a
`default_config_path` that does not exist, so the machine's environment and /etc cannot leak in;
TOML files are real files under tmp_path. Case tables restate Ollama's envconfig/config_test.go
(TestHost, TestVar, TestBool, TestUint, TestKeepAlive, TestLoadTimeout, TestOrigins, TestLogLevel).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from appliance.gocompat.durations import FOREVER
from appliance.settings.config import (
    DEFAULT_ORIGINS,
    TRACE,
    ConfigError,
    Settings,
    env_var,
    load_settings,
    mask_url_credentials,
    parse_byte_size,
)

NO_FILE = Path("/nonexistent/llm-appliance/config.toml")


def load(env: dict[str, str] | None = None, config_path: Path | None = None) -> Settings:
    return load_settings(env or {}, config_path, default_config_path=NO_FILE)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


# --- OLLAMA_HOST (TestHost) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        ("", "http://127.0.0.1:11434"),
        ("1.2.3.4", "http://1.2.3.4:11434"),
        (":1234", "http://:1234"),
        ("1.2.3.4:1234", "http://1.2.3.4:1234"),
        ("example.com", "http://example.com:11434"),
        ("example.com:1234", "http://example.com:1234"),
        (":0", "http://:0"),
        (":66000", "http://:11434"),
        (":-1", "http://:11434"),
        ("[::1]", "http://[::1]:11434"),
        ("[::]", "http://[::]:11434"),
        ("::1", "http://[::1]:11434"),
        ("[::1]:1337", "http://[::1]:1337"),
        (" 1.2.3.4 ", "http://1.2.3.4:11434"),
        ('"1.2.3.4"', "http://1.2.3.4:11434"),
        (' " 1.2.3.4 " ', "http://1.2.3.4:11434"),
        ("'1.2.3.4'", "http://1.2.3.4:11434"),
        ("http://1.2.3.4", "http://1.2.3.4:80"),
        ("http://1.2.3.4:4321", "http://1.2.3.4:4321"),
        ("https://1.2.3.4", "https://1.2.3.4:443"),
        ("https://1.2.3.4:4321", "https://1.2.3.4:4321"),
        ("https://example.com/ollama", "https://example.com:443/ollama"),
        ("ollama.com", "https://ollama.com:443"),
    ],
)
def test_ollama_host_follows_TestHost(value: str, expect: str) -> None:
    assert load({"OLLAMA_HOST": value}).host_url == expect


def test_host_with_only_a_port_binds_all_interfaces() -> None:
    settings = load({"OLLAMA_HOST": ":1234"})
    assert (settings.host, settings.port) == ("", 1234)
    assert settings.bind == "0.0.0.0:1234"


def test_out_of_range_port_warns_and_uses_default() -> None:
    settings = load({"OLLAMA_HOST": ":66000"})
    assert settings.port == 11434
    assert any("66000" in w for w in settings.warnings)


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("0.0.0.0:8080", "http://127.0.0.1:8080"),
        ("[::]:8080", "http://[::1]:8080"),
        (":8080", "http://127.0.0.1:8080"),
        ("10.0.0.5:8080", "http://10.0.0.5:8080"),
        ("", "http://127.0.0.1:11434"),
    ],
)
def test_client_base_url_is_connectable(value: str, url: str) -> None:
    assert load({"OLLAMA_HOST": value}).client_base_url == url


# --- Var(), Bool, Uint ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [("value", "value"), (" value ", "value"), (" 'value' ", "value"), ('" value "', " value "),
     (" ' ' ", " "), ("\"'v'\"", "v")],
)  # fmt: skip
def test_var_trims_whitespace_then_quotes(raw: str, value: str) -> None:
    assert env_var({"K": raw}, "K") == value


@pytest.mark.parametrize(
    ("raw", "expect"),
    [("", False), ("true", True), ("false", False), ("1", True), ("0", False),
     ("t", True), ("F", False), ("random", True), ("something", True), (" 'false' ", False)],
)  # fmt: skip
def test_bool_variables_treat_unknown_text_as_true(raw: str, expect: bool) -> None:
    assert load({"OLLAMA_NOPRUNE": raw}).noprune is expect


def test_flash_attention_is_auto_unless_set() -> None:
    assert load().flash_attention is None
    assert load({"OLLAMA_FLASH_ATTENTION": "1"}).flash_attention is True
    assert load({"OLLAMA_FLASH_ATTENTION": "0"}).flash_attention is False


@pytest.mark.parametrize(
    ("raw", "expect"),
    [("", 512), ("0", 0), ("1", 1), ("-1", 512), ("0x10", 512), ("0o10", 512), ("10_0", 512),
     ("+5", 512), ("abc", 512), (" 64 ", 64)],
)  # fmt: skip
def test_uint_variables_fall_back_to_default_with_a_warning(raw: str, expect: int) -> None:
    settings = load({"OLLAMA_MAX_QUEUE": raw})
    assert settings.max_queue == expect
    assert bool(settings.warnings) == (expect == 512 and raw.strip() not in ("", "512"))


def test_numeric_settings_read_their_variables() -> None:
    settings = load(
        {
            "OLLAMA_NUM_PARALLEL": "3",
            "OLLAMA_MAX_LOADED_MODELS": "2",
            "OLLAMA_CONTEXT_LENGTH": "8192",
        }
    )
    assert (settings.num_parallel, settings.max_loaded_models) == (3, 2)
    assert (settings.context_length, settings.default_num_ctx) == (8192, 8192)


def test_default_num_ctx_is_4096_on_cpu() -> None:
    assert load().default_num_ctx == 4096


# --- durations (TestKeepAlive, TestLoadTimeout) --------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("", 300), ("1s", 1), ("1m", 60), ("1h", 3600), ("5m0s", 300), ("1h2m3s", 3723),
     ("60", 60), ("600", 600), ("3600", 3600), ("86400", 86400), ("0", 0), ("-0", 0),
     ("-1", FOREVER), ("-1m", FOREVER), ("1d", 300), ("1w", 300), ("???", 300), (" ", 300)],
)  # fmt: skip
def test_keep_alive_variable_follows_TestKeepAlive(raw: str, seconds: float) -> None:
    assert load({"OLLAMA_KEEP_ALIVE": raw}).keep_alive == seconds


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("", 300), ("1s", 1), ("1m", 60), ("60", 60), ("0", FOREVER), ("-0", FOREVER),
     ("-1", FOREVER), ("1d", 300), ("???", 300)],
)  # fmt: skip
def test_load_timeout_zero_or_negative_waits_forever(raw: str, seconds: float) -> None:
    assert load({"OLLAMA_LOAD_TIMEOUT": raw}).load_timeout == seconds


# --- OLLAMA_DEBUG (TestLogLevel) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "level"),
    [("", logging.INFO), ("false", logging.INFO), ("f", logging.INFO), ("0", logging.INFO),
     ("1", logging.DEBUG), ("t", logging.DEBUG), ("true", logging.DEBUG), ("2", TRACE),
     ("-1", logging.WARNING), ("-2", logging.ERROR), ("nonsense", logging.INFO)],
)  # fmt: skip
def test_debug_variable_maps_to_log_level(raw: str, level: int) -> None:
    assert load({"OLLAMA_DEBUG": raw}).log_level == level


# --- OLLAMA_ORIGINS (TestOrigins) ----------------------------------------------------------------


def test_default_origins_are_ollamas_list() -> None:
    assert load().origins == (
        "http://localhost", "https://localhost", "http://localhost:*", "https://localhost:*",
        "http://127.0.0.1", "https://127.0.0.1", "http://127.0.0.1:*", "https://127.0.0.1:*",
        "http://0.0.0.0", "https://0.0.0.0", "http://0.0.0.0:*", "https://0.0.0.0:*",
        "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "extra"),
    [("http://10.0.0.1", ("http://10.0.0.1",)),
     ("http://10.0.0.1,https://10.0.0.2", ("http://10.0.0.1", "https://10.0.0.2")),
     ("*", ("*",)),
     ("chrome-extension://*,moz-extension://*", ("chrome-extension://*", "moz-extension://*")),
     ("http://*.example.com", ("http://*.example.com",))],
)  # fmt: skip
def test_origins_variable_is_prepended_to_defaults(raw: str, extra: tuple[str, ...]) -> None:
    assert load({"OLLAMA_ORIGINS": raw}).origins == extra + DEFAULT_ORIGINS


@pytest.mark.parametrize("raw", ["example.com", "http://a, http://b", "http://*.*.com"])
def test_invalid_origins_stop_start_up_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="OLLAMA_ORIGINS"):
        load({"OLLAMA_ORIGINS": raw})


# --- other variables -----------------------------------------------------------------------------


def test_models_dir_defaults_under_home_and_follows_the_variable(tmp_path: Path) -> None:
    assert load({"HOME": str(tmp_path)}).models_dir == tmp_path / ".ollama" / "models"
    assert load({"OLLAMA_MODELS": str(tmp_path / "m")}).models_dir == tmp_path / "m"
    assert load({"HOME": str(tmp_path), "OLLAMA_MODELS": "~/x"}).models_dir == tmp_path / "x"


def test_kv_cache_type_is_lower_cased_and_checked() -> None:
    assert load({"OLLAMA_KV_CACHE_TYPE": "Q8_0"}).kv_cache_type == "q8_0"
    settings = load({"OLLAMA_KV_CACHE_TYPE": "q3"})
    assert settings.kv_cache_type == "" and settings.warnings


@pytest.mark.parametrize(
    ("raw", "size"),
    [("6GiB", 6 * 1024**3), ("512MB", 512 * 1000**2), ("1.5G", int(1.5 * 1024**3)),
     ("1048576", 1048576), ("2 gib", 2 * 1024**3), ("64k", 65536)],
)  # fmt: skip
def test_memory_budget_accepts_bytes_and_units(raw: str, size: int) -> None:
    assert load({"LLM_APPLIANCE_MEMORY_BUDGET": raw}).memory_budget == size
    assert parse_byte_size(raw) == size


@pytest.mark.parametrize("raw", ["lots", "6XB", "-1G", "1.2.3G"])
def test_bad_memory_budget_is_a_config_error_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="LLM_APPLIANCE_MEMORY_BUDGET"):
        load({"LLM_APPLIANCE_MEMORY_BUDGET": raw})


def test_num_threads_variable() -> None:
    assert load({"LLM_APPLIANCE_NUM_THREADS": "6"}).num_threads == 6
    assert load({"LLM_APPLIANCE_NUM_THREADS": "0"}).num_threads is None
    with pytest.raises(ConfigError, match="LLM_APPLIANCE_NUM_THREADS"):
        load({"LLM_APPLIANCE_NUM_THREADS": "many"})


def test_ca_file_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert load({"LLM_APPLIANCE_CA_FILE": str(ca)}).ca_file == str(ca)
    with pytest.raises(ConfigError, match="LLM_APPLIANCE_CA_FILE"):
        load({"LLM_APPLIANCE_CA_FILE": str(tmp_path / "missing.pem")})


def test_proxies_come_from_upper_then_lower_case_variables() -> None:
    settings = load({"https_proxy": "http://lower:3128", "HTTPS_PROXY": "http://upper:3128",
                     "no_proxy": "localhost"})  # fmt: skip
    assert settings.https_proxy == "http://upper:3128"
    assert settings.no_proxy == "localhost"
    assert settings.http_proxy is None


# --- TOML file -----------------------------------------------------------------------------------


def test_file_sets_every_readable_key(tmp_path: Path) -> None:
    ca = tmp_path / "corp.pem"
    ca.write_text("x")
    path = write_toml(
        tmp_path,
        """
        host = "0.0.0.0:8080"
        models = "/srv/models"
        keep_alive = "10m"
        load_timeout = 60
        num_parallel = 2
        max_queue = 16
        max_loaded_models = 1
        context_length = 8192
        memory_budget = "6GiB"
        num_threads = 4
        ca_file = "corp.pem"
        https_proxy = "http://proxy:3128"
        no_proxy = "10.0.0.0/8"
        origins = ["https://app.example.com"]
        debug = true
        noprune = true
        flash_attention = false
        kv_cache_type = "q8_0"
        """.replace("        ", ""),
    )
    s = load({}, path)
    assert (s.host, s.port, s.models_dir) == ("0.0.0.0", 8080, Path("/srv/models"))
    assert (s.keep_alive, s.load_timeout) == (600, 60)
    assert (s.num_parallel, s.max_queue, s.max_loaded_models, s.context_length) == (2, 16, 1, 8192)
    assert (s.memory_budget, s.num_threads, s.ca_file) == (6 * 1024**3, 4, str(ca))
    assert (s.https_proxy, s.no_proxy) == ("http://proxy:3128", "10.0.0.0/8")
    assert s.origins == ("https://app.example.com",) + DEFAULT_ORIGINS
    assert (s.log_level, s.noprune, s.flash_attention, s.kv_cache_type) == (
        logging.DEBUG, True, False, "q8_0"
    )  # fmt: skip
    assert s.config_file == path


def test_variables_win_over_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'keep_alive = "10m"\nnum_parallel = 2\nhost = "0.0.0.0"\n')
    s = load({"OLLAMA_KEEP_ALIVE": "1h", "OLLAMA_NUM_PARALLEL": "5"}, path)
    assert (s.keep_alive, s.num_parallel, s.host) == (3600, 5, "0.0.0.0")


def test_an_invalid_variable_falls_back_to_the_file_value(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'keep_alive = "10m"\n')
    s = load({"OLLAMA_KEEP_ALIVE": "1d"}, path)
    assert s.keep_alive == 600
    assert any("OLLAMA_KEEP_ALIVE" in w for w in s.warnings)


def test_file_comes_from_LLM_APPLIANCE_CONFIG(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_queue = 7\n")
    assert load({"LLM_APPLIANCE_CONFIG": str(path)}).max_queue == 7


def test_default_config_path_is_used_only_when_it_exists(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_queue = 9\n")
    assert load_settings({}, default_config_path=path).max_queue == 9
    assert load_settings({}, default_config_path=tmp_path / "absent.toml").max_queue == 512


def test_missing_named_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LLM_APPLIANCE_CONFIG"):
        load({"LLM_APPLIANCE_CONFIG": str(tmp_path / "nope.toml")})


def test_unknown_file_key_is_an_error_naming_key_and_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "num_paralel = 2\n")
    with pytest.raises(ConfigError) as info:
        load({}, path)
    assert "num_paralel" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [("num_parallel = -1", "num_parallel"), ('num_parallel = "2"', "num_parallel"),
     ('keep_alive = "1d"', "keep_alive"), ("noprune = 1", "noprune"),
     ('memory_budget = "lots"', "memory_budget"), ('origins = "http://a"', "origins"),
     ('origins = ["example.com"]', "origins"), ('host = ":99999"', "host"),
     ('kv_cache_type = "q3"', "kv_cache_type"), ('ca_file = "missing.pem"', "ca_file"),
     ('debug = "loud"', "debug")],
)  # fmt: skip
def test_bad_file_values_are_errors_naming_key_and_file(
    tmp_path: Path, text: str, key: str
) -> None:
    path = write_toml(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        load({}, path)
    assert key in str(info.value) and str(path) in str(info.value)


def test_invalid_toml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "host = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load({}, path)


def test_file_keep_alive_negative_number_is_forever(tmp_path: Path) -> None:
    assert load({}, write_toml(tmp_path, "keep_alive = -1\n")).keep_alive == math.inf


# --- log map, test settings ----------------------------------------------------------------------


def test_log_map_shows_effective_values_and_masks_proxy_passwords() -> None:
    s = load({"HTTPS_PROXY": "http://alice:s3cret@proxy:3128", "OLLAMA_KEEP_ALIVE": "-1"})
    log_map = s.as_log_map()
    assert log_map["HTTPS_PROXY"] == "http://alice:***@proxy:3128"
    assert "s3cret" not in repr(log_map)
    assert log_map["OLLAMA_HOST"] == "http://127.0.0.1:11434"
    assert log_map["OLLAMA_KEEP_ALIVE"] == "2562047h47m16.854775807s"


@pytest.mark.parametrize(
    ("url", "masked"),
    [("http://proxy:3128", "http://proxy:3128"), ("http://u:p@h:1", "http://u:***@h:1"),
     ("u:p@h:1", "u:***@h:1"), ("https://token@h", "https://***@h"), ("", "")],
)  # fmt: skip
def test_mask_url_credentials(url: str, masked: str) -> None:
    assert mask_url_credentials(url) == masked


def test_for_tests_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "10.9.9.9:1")
    s = Settings.for_tests(max_queue=3)
    assert (s.host, s.port, s.max_queue) == ("127.0.0.1", 0, 3)
    assert s.models_dir.is_dir() and not any(s.models_dir.iterdir())


def test_cpu_variant_is_auto_unless_a_known_variant_is_named(tmp_path: Path) -> None:
    assert load({}).cpu_variant == "auto"
    assert load({"LLM_APPLIANCE_CPU_VARIANT": "Haswell"}).cpu_variant == "haswell"
    with pytest.raises(ConfigError, match="LLM_APPLIANCE_CPU_VARIANT: 'pentium4'"):
        load({"LLM_APPLIANCE_CPU_VARIANT": "pentium4"})
    assert load(config_path=write_toml(tmp_path, 'cpu_variant = "x64"\n')).cpu_variant == "x64"
    assert load({}).as_log_map()["LLM_APPLIANCE_CPU_VARIANT"] == "auto"


def test_cache_ram_is_mib_per_model_from_the_variable_or_the_file(tmp_path: Path) -> None:
    assert load({}).cache_ram == 256
    assert load({"LLM_APPLIANCE_CACHE_RAM": "0"}).cache_ram == 0
    assert load(config_path=write_toml(tmp_path, "cache_ram = 64\n")).cache_ram == 64
    bad = load({"LLM_APPLIANCE_CACHE_RAM": "lots"})
    assert bad.cache_ram == 256 and any("LLM_APPLIANCE_CACHE_RAM" in w for w in bad.warnings)
    assert load({"LLM_APPLIANCE_CACHE_RAM": "32"}).as_log_map()["LLM_APPLIANCE_CACHE_RAM"] == "32"
