"""`llm-appliance systemd install --auto-update`: the update timer and its oneshot service.

Conventions as tests/test_systemd.py: written under a temporary --root with --no-reload, checked
with `systemd-analyze verify` with SYSTEMD_UNIT_PATH at the temporary unit directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.host import systemd_cli

UNIT_DIR = "etc/systemd/system"


def install(root: Path, *extra: str) -> None:
    argv = ["systemd", "install", "--root", str(root), "--binary", "/bin/true", "--no-reload"]
    assert systemd_cli.main([*argv, "--no-user", *extra]) == 0


def test_auto_update_is_off_unless_asked(tmp_path: Path):
    install(tmp_path)
    assert not (tmp_path / UNIT_DIR / "llm-appliance-update.timer").exists()


def test_auto_update_writes_a_randomized_daily_timer_and_a_oneshot_update(tmp_path: Path):
    install(tmp_path, "--auto-update", "--update-delay", "2h")
    timer = (tmp_path / UNIT_DIR / "llm-appliance-update.timer").read_text()
    service = (tmp_path / UNIT_DIR / "llm-appliance-update.service").read_text()
    assert "OnCalendar=daily" in timer and "RandomizedDelaySec=2h" in timer
    assert "Persistent=true" in timer
    assert "Type=oneshot" in service and "ExecStart=/bin/true update --yes" in service
    assert "EnvironmentFile=-/etc/llm-appliance/env" in service


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing")
def test_update_units_pass_systemd_analyze_verify(tmp_path: Path):
    install(tmp_path, "--auto-update")
    unit_dir = tmp_path / UNIT_DIR
    for name in ("llm-appliance-update.service", "llm-appliance-update.timer"):
        done = subprocess.run(
            ["systemd-analyze", "verify", str(unit_dir / name)],
            env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        complaints = [line for line in done.stderr.splitlines() if str(tmp_path) in line]
        assert complaints == []


def test_doctor_shows_the_feed_and_the_last_check(tmp_path: Path):
    from appliance.host import doctor
    from appliance.settings.config import Settings
    from appliance.update.state import UpdateState

    off = doctor.check_updates(Settings.for_tests(), {})
    assert off.status is doctor.Status.INFO and "off" in off.summary
    root = tmp_path / "root.json"
    root.write_text("{}")
    settings = Settings.for_tests(
        update_url="https://updates.example", update_root=root, update_state_dir=tmp_path / "s"
    )
    never = doctor.check_updates(settings, {})
    assert "never checked" in never.summary
    state = UpdateState()
    state.record("error: the update feed https://updates.example is expired")
    state.save(tmp_path / "s")
    failed = doctor.check_updates(settings, {})
    assert failed.status is doctor.Status.WARN
    assert "https://updates.example" in failed.summary and "expired" in failed.summary
    no_root = doctor.check_updates(Settings.for_tests(update_url="https://updates.example"), {})
    assert no_root.status is doctor.Status.FAIL
