"""Outbound HTTP settings: which proxy a URL uses (Go's rules), what is logged, NO_PROXY bypass.

Conventions: rule tests are pure functions over an injected environ; the bypass test pulls from a
real loopback registry addressed by this machine's host name (which resolves to loopback but is not
`localhost`, so only NO_PROXY can exempt it) while the proxy points at a closed port. Every I/O test
has a `trio.fail_after` bound; nothing asserts a duration.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from peers.registry import RegistryPeer

from appliance.errors import ApplianceError
from appliance.net import NetConfig, open_client, redact
from appliance.store.remote.pull import pull_model
from appliance.store.store import Store

TIMEOUT = 30
PROXY = "http://proxy.corp:3128"


def proxy_for(url: str, **env: str) -> str | None:
    return NetConfig.resolve(None, env).proxy_for(url)


def test_https_urls_use_https_proxy_and_http_urls_use_http_proxy():
    env = {"HTTPS_PROXY": "http://secure:1", "HTTP_PROXY": "http://plain:2"}
    assert proxy_for("https://registry.test/v2/", **env) == "http://secure:1"
    assert proxy_for("http://registry.test/v2/", **env) == "http://plain:2"


def test_lower_case_variables_are_read_when_upper_case_are_absent():
    assert proxy_for("https://r.test/", https_proxy=PROXY) == PROXY
    assert proxy_for("https://r.test/", HTTPS_PROXY="http://upper:1", https_proxy=PROXY) == (
        "http://upper:1"
    )


def test_proxy_without_scheme_means_http():
    assert proxy_for("https://r.test/", HTTPS_PROXY="proxy.corp:3128") == PROXY


@pytest.mark.parametrize("url", ["https://localhost/", "https://127.0.0.1:5000/", "https://[::1]/"])
def test_loopback_is_never_proxied(url):
    assert proxy_for(url, HTTPS_PROXY=PROXY) is None


@pytest.mark.parametrize(
    ("no_proxy", "host", "bypassed"),
    [
        ("registry.test", "registry.test", True),
        ("registry.test", "cdn.registry.test", True),
        (".registry.test", "registry.test", False),
        (".registry.test", "cdn.registry.test", True),
        ("*.registry.test", "cdn.registry.test", True),
        ("other.test", "registry.test", False),
        ("notregistry.test", "registry.test", False),
        ("registry.test:8443", "registry.test", False),
        ("registry.test:443", "registry.test", True),
        ("10.0.0.0/8", "10.1.2.3", True),
        ("10.0.0.0/8", "11.1.2.3", False),
        ("10.1.2.3", "10.1.2.3", True),
        ("*", "anything.test", True),
        (" a.test , registry.test ", "registry.test", True),
    ],
)
def test_no_proxy_rules_follow_go(no_proxy, host, bypassed):
    result = proxy_for(f"https://{host}/v2/", HTTPS_PROXY=PROXY, NO_PROXY=no_proxy)
    assert (result is None) is bypassed


def test_settings_proxies_win_over_the_environment():
    settings = SimpleNamespace(
        https_proxy="http://from-settings:1", http_proxy=None, no_proxy=None, ca_file=None
    )
    config = NetConfig.resolve(settings, {"HTTPS_PROXY": "http://from-env:2"})
    assert config.proxy_for("https://r.test/") == "http://from-settings:1"


def test_ca_file_from_settings_and_ssl_cert_file_are_both_trusted():
    config = NetConfig.resolve(
        SimpleNamespace(ca_file="/etc/corp-ca.pem"),
        {"SSL_CERT_FILE": "/etc/extra.pem", "SSL_CERT_DIR": "/etc/certs"},
    )
    assert config.ca_files == ("/etc/extra.pem", "/etc/corp-ca.pem")
    assert config.ca_dirs == ("/etc/certs",)


def test_redact_hides_the_password_only():
    assert redact("http://alice:s3cret@proxy.corp:3128") == "http://alice:***@proxy.corp:3128"
    assert redact("https://proxy.corp") == "https://proxy.corp"


async def test_client_logs_the_proxy_in_use_without_its_password(caplog):
    caplog.set_level(logging.INFO, logger="appliance.net")
    config = NetConfig.resolve(None, {"HTTPS_PROXY": "http://alice:s3cret@proxy.corp:3128"})

    async with open_client(config):
        pass

    assert "https proxy http://alice:***@proxy.corp:3128" in caplog.text
    assert "s3cret" not in caplog.text


def _loopback_hostname() -> str:
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        pytest.skip("this machine's host name does not resolve")
    if not address.startswith("127.") or name.lower() == "localhost":
        pytest.skip("this machine's host name does not resolve to loopback")
    return name


async def _pull(tmp_path: Path, name: str, env: dict[str, str]) -> None:
    async def ignore(line: dict[str, Any]) -> None:
        pass

    with trio.fail_after(TIMEOUT):
        await pull_model(
            Store(tmp_path / "models"), name, insecure=True, environ=env, progress=ignore
        )


async def test_no_proxy_host_is_reached_directly(nursery, tmp_path, tiny_gguf):
    host = _loopback_hostname()
    registry = RegistryPeer(host)
    registry.add_model("library/tiny", "latest", tiny_gguf.read_bytes())
    await nursery.start(registry.serve)
    dead_proxy = "http://127.0.0.1:9"  # discard port: nothing listens there
    name = f"{host}:{registry.port}/library/tiny"

    with pytest.raises(ApplianceError, match=f"via proxy {dead_proxy}: connection refused"):
        await _pull(tmp_path, name, {"HTTP_PROXY": dead_proxy})

    await _pull(tmp_path, name, {"HTTP_PROXY": dead_proxy, "NO_PROXY": host})

    assert Store(tmp_path / "models").resolve(name)
    assert registry.served
