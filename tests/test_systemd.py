"""The systemd unit, its drop-ins, and `llm-appliance systemd install | proxy`.

Conventions: everything is written under a temporary --root with --no-reload, never into the real
/etc; `systemd-analyze verify` (systemd 252 here) checks what was written, with SYSTEMD_UNIT_PATH
pointing at the temporary unit directory so drop-ins are read too and ExecStart pointing at an
existing executable (verify checks it). verify exits 0 on unknown keys, so its stderr is checked.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.host import systemd_cli

REPO = Path(__file__).resolve().parents[1]
UNIT_DIR = "etc/systemd/system"
DROPIN_DIR = f"{UNIT_DIR}/llm-appliance.service.d"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def run_cli(*argv: str) -> int:
    return systemd_cli.main(list(argv))


def verify(root: Path) -> str:
    """Run systemd-analyze verify on the unit under root; return its complaints about our files."""
    unit_dir = root / UNIT_DIR
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_dir / "llm-appliance.service")],
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return "\n".join(line for line in result.stderr.splitlines() if str(root) in line)


def proxy(root: Path, *options: str) -> int:
    """`llm-appliance systemd proxy --root ROOT --no-reload OPTIONS...`; its exit status."""
    return run_cli("systemd", "proxy", "--root", str(root), "--no-reload", *options)


def write_launcher(path: Path) -> Path:
    """An executable at `path` that runs this checkout's systemd CLI, as the binary would."""
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m appliance.host.systemd_cli "$@"\n')
    path.chmod(0o755)
    return path


def run_install_script(build: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """systemd/install.sh BUILD with ROOT set, so it installs under `root`."""
    return subprocess.run(
        ["sh", str(REPO / "systemd/install.sh"), str(build)],
        env={**os.environ, "ROOT": str(root), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def install_unit(root: Path, *extra: str) -> None:
    assert (
        run_cli(
            "systemd",
            "install",
            "--root",
            str(root),
            "--binary",
            "/bin/true",
            "--no-reload",
            "--no-user",
            *extra,
        )
        == 0
    )


def test_repository_unit_is_the_rendered_template():
    assert (REPO / "systemd/llm-appliance.service").read_text() == systemd_cli.render_unit()


def test_unit_has_the_service_contract():
    unit = systemd_cli.render_unit()
    for line in (
        "Type=notify",
        "ExecStart=/usr/local/bin/llm-appliance serve",
        "User=llm-appliance",
        "Group=llm-appliance",
        "StateDirectory=llm-appliance",
        'Environment="OLLAMA_MODELS=/var/lib/llm-appliance/models"',
        "EnvironmentFile=-/etc/llm-appliance/env",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    ):
        assert line in unit.splitlines(), line
    assert any(line.startswith("WatchdogSec=") for line in unit.splitlines())
    assert any(line.startswith("TimeoutStopSec=") for line in unit.splitlines())


@needs_systemd_analyze
def test_installed_unit_passes_systemd_analyze_verify(tmp_path: Path):
    install_unit(tmp_path)
    assert verify(tmp_path) == ""
    assert (tmp_path / "etc/llm-appliance/env").is_file()


@needs_systemd_analyze
def test_verify_catches_a_dropin_without_service_header(tmp_path: Path):
    """Negative control: the check used below does see ollama#4454's mistake."""
    install_unit(tmp_path)
    dropin = tmp_path / DROPIN_DIR / "broken.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text('Environment="HTTPS_PROXY=http://proxy:3128"\n')
    assert "outside of section" in verify(tmp_path)


@needs_systemd_analyze
def test_proxy_dropin_passes_verify(tmp_path: Path):
    install_unit(tmp_path)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert (
        proxy(
            tmp_path,
            "--https-proxy",
            'http://user:p%40ss"word@proxy.corp:3128',
            "--http-proxy",
            "http://proxy.corp:3128",
            "--no-proxy",
            "localhost,.corp",
            "--ca-file",
            str(ca),
        )
        == 0
    )
    text = (tmp_path / DROPIN_DIR / "proxy.conf").read_text()
    assert text.splitlines()[1] == "[Service]"
    assert 'Environment="HTTPS_PROXY=http://user:p%%40ss\\"word@proxy.corp:3128"' in text
    assert 'Environment="NO_PROXY=localhost,.corp"' in text
    assert f'Environment="SSL_CERT_FILE={ca}"' in text
    assert f'Environment="LLM_APPLIANCE_CA_FILE={ca}"' in text
    assert verify(tmp_path) == ""


def test_proxy_with_password_is_private(tmp_path: Path):
    proxy(tmp_path, "--https-proxy", "http://user:secret@proxy:3128")
    mode = stat.S_IMODE((tmp_path / DROPIN_DIR / "proxy.conf").stat().st_mode)
    assert mode == 0o600


def test_proxy_defaults_no_proxy_to_loopback(tmp_path: Path):
    proxy(tmp_path, "--https-proxy", "http://proxy:3128")
    text = (tmp_path / DROPIN_DIR / "proxy.conf").read_text()
    assert 'Environment="NO_PROXY=localhost,127.0.0.1,::1"' in text


def test_proxy_update_replaces_and_remove_deletes(tmp_path: Path):
    dropin = tmp_path / DROPIN_DIR / "proxy.conf"
    proxy(tmp_path, "--https-proxy", "http://old:3128")
    proxy(tmp_path, "--https-proxy", "http://new:3128")
    text = dropin.read_text()
    assert "new:3128" in text and "old:3128" not in text
    assert text.count("HTTPS_PROXY") == 1
    assert proxy(tmp_path, "--remove") == 0
    assert not dropin.exists()
    assert not dropin.parent.exists()


def test_proxy_rejects_a_missing_ca_file(tmp_path: Path):
    rc = proxy(
        tmp_path, "--https-proxy", "http://proxy:3128", "--ca-file", str(tmp_path / "nope.pem")
    )
    assert rc == 2
    assert not (tmp_path / DROPIN_DIR / "proxy.conf").exists()


@needs_systemd_analyze
def test_models_dropin_under_home_binds_the_directory(tmp_path: Path):
    install_unit(tmp_path, "--models", "/home/alice/models")
    text = (tmp_path / DROPIN_DIR / "models.conf").read_text()
    assert "ReadWritePaths=/home/alice/models" in text
    assert "ProtectHome=tmpfs" in text and "BindPaths=/home/alice/models" in text
    assert verify(tmp_path) == ""


@needs_systemd_analyze
def test_shipped_proxy_example_passes_verify(tmp_path: Path):
    install_unit(tmp_path)
    (tmp_path / DROPIN_DIR).mkdir(parents=True)
    shutil.copy(REPO / "systemd/proxy.conf.example", tmp_path / DROPIN_DIR / "proxy.conf")
    assert verify(tmp_path) == ""


def test_quote_environment_escapes_specifiers_and_quotes():
    assert systemd_cli.quote_environment("A", 'x"y\\z%n') == 'Environment="A=x\\"y\\\\z%%n"'
    with pytest.raises(ValueError):
        systemd_cli.quote_environment("A", "line\nbreak")


def test_install_script_stages_binary_and_unit(tmp_path: Path):
    """systemd/install.sh with ROOT set: copies the binary, which writes its own unit."""
    launcher = write_launcher(tmp_path / "llm-appliance")
    root = tmp_path / "root"
    result = run_install_script(launcher, root)
    assert result.returncode == 0, result.stderr
    assert (root / "usr/local/bin/llm-appliance").stat().st_mode & 0o111
    unit = (root / UNIT_DIR / "llm-appliance.service").read_text()
    assert "ExecStart=/usr/local/bin/llm-appliance serve" in unit


@needs_systemd_analyze
def test_unit_sandbox_exposure_stays_low(tmp_path: Path):
    """`systemd-analyze security` scores the sandbox (0 best, 10 worst); 1.7 when written."""
    install_unit(tmp_path)
    unit_dir = tmp_path / UNIT_DIR
    result = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            f"--root={tmp_path}",
            "llm-appliance.service",
        ],
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(
        r"Overall exposure level for llm-appliance\.service: ([\d.]+)",
        result.stdout + result.stderr,
    )
    if found is None:
        pytest.skip(f"this systemd-analyze has no offline security scoring: {result.stderr[:200]}")
    assert float(found.group(1)) <= 2.5


def test_install_script_stages_a_one_directory_build(tmp_path: Path):
    """A directory (make binary-onedir) goes to lib/llm-appliance, linked from bin."""
    onedir = tmp_path / "llm-appliance-onedir"
    (onedir / "_internal").mkdir(parents=True)
    (onedir / "_internal" / "marker").write_text("bundle")
    write_launcher(onedir / "llm-appliance")
    root = tmp_path / "root"
    result = run_install_script(onedir, root)
    assert result.returncode == 0, result.stderr
    assert (root / "usr/local/lib/llm-appliance/_internal/marker").read_text() == "bundle"
    link = root / "usr/local/bin/llm-appliance"
    assert os.readlink(link) == "/usr/local/lib/llm-appliance/llm-appliance"
    unit = (root / UNIT_DIR / "llm-appliance.service").read_text()
    assert "ExecStart=/usr/local/bin/llm-appliance serve" in unit
