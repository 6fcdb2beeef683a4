"""One rule hides proxy credentials: the proxy log line, the doctor report and the settings log
map show the same text (gocompat/urls.redact)."""

from __future__ import annotations

import pytest

from appliance.gocompat.urls import redact
from appliance.host import doctor
from appliance.net import NetConfig
from appliance.settings.config import load_settings


def _shown_everywhere(proxy: str, tmp_path) -> set[str]:
    env = {"HTTPS_PROXY": proxy}
    log_line = NetConfig.resolve(None, env).describe()
    report = doctor.check_proxy(env).detail["https_proxy"]
    log_map = load_settings(env, default_config_path=tmp_path / "none.toml").as_log_map()
    assert log_line.startswith("https proxy ")
    return {log_line.split(";")[0].removeprefix("https proxy "), report, log_map["HTTPS_PROXY"]}


@pytest.mark.parametrize(
    ("proxy", "shown"),
    [("http://alice:s3cret@proxy.corp:3128", "http://alice:***@proxy.corp:3128"),
     ("https://t0ken@proxy.corp", "https://***@proxy.corp"),
     ("proxy.corp:3128", "proxy.corp:3128")],
)  # fmt: skip
def test_log_line_doctor_and_log_map_show_the_same_redacted_proxy(proxy, shown, tmp_path):
    assert _shown_everywhere(proxy, tmp_path) == {shown}


def test_a_password_holding_an_at_sign_is_hidden_whole():
    assert redact("http://alice:p@ss@proxy:3128/") == "http://alice:***@proxy:3128/"


def test_an_at_sign_after_the_host_is_not_userinfo():
    assert redact("http://proxy:3128/a@b?c=d@e") == "http://proxy:3128/a@b?c=d@e"
