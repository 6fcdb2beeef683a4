"""`llm-appliance doctor`: each check from injected host facts, plus the live port check.

Conventions: host facts (/proc/version, /proc/cpuinfo, /proc/meminfo, glibc) and the environment are
built by the test, never read from this machine, except `gather_host_facts` which only has to return
something well-formed. The server check talks to real sockets on 127.0.0.1 port 0 under
`trio.fail_after`. Directory checks use real directories under tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from appliance.host import doctor
from appliance.host.doctor import HostFacts, Status

HASWELL_FLAGS = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi1 bmi2 popcnt"
SANDY_BRIDGE_FLAGS = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx popcnt"
MEMINFO = "MemTotal:       16384000 kB\nMemFree:   1000 kB\nMemAvailable:    8192000 kB\n"
WSL2_VERSION = (
    "Linux version 5.15.153.1-microsoft-standard-WSL2 (root@1c602f52c2e4) "
    "(gcc (GCC) 11.2.0) #1 SMP Fri Mar 29 23:14:13 UTC 2024"
)
DEBIAN_VERSION = "Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org) #1 SMP Debian"


def cpuinfo(flags: str, cpus: int = 4) -> str:
    return "".join(f"processor\t: {n}\nflags\t\t: {flags}\n\n" for n in range(cpus))


def test_wsl2_is_detected_and_the_lso_hint_names_the_script():
    facts = HostFacts(proc_version=WSL2_VERSION)
    check = doctor.check_wsl(facts, {"WSL_DISTRO_NAME": "Ubuntu"})
    assert check.status is Status.INFO
    assert check.detail["wsl"] == 2 and check.detail["distro"] == "Ubuntu"
    assert "Large Send Offload Version 2" in check.hint
    assert "Tune-WslNetwork.ps1" in check.hint
    assert check.detail["script"].endswith("wsl/Tune-WslNetwork.ps1")


def test_wsl_distro_variable_alone_means_wsl():
    assert doctor.detect_wsl(HostFacts(proc_version=DEBIAN_VERSION), {"WSL_DISTRO_NAME": "x"}) == 2


def test_plain_linux_is_not_wsl():
    check = doctor.check_wsl(HostFacts(proc_version=DEBIAN_VERSION), {})
    assert check.status is Status.OK and check.hint is None


def test_wsl1_kernel_string():
    version = "Linux version 4.4.0-19041-Microsoft (Microsoft@Microsoft.com)"
    assert doctor.detect_wsl(HostFacts(proc_version=version), {}) == 1


def test_cpu_with_x86_64_v3_passes():
    check = doctor.check_cpu(HostFacts(cpuinfo=cpuinfo(HASWELL_FLAGS, 8)))
    assert check.status is Status.OK
    assert check.detail["logical_cpus"] == 8


def test_cpu_without_avx_passes_since_the_binary_carries_baseline_code():
    check = doctor.check_cpu(HostFacts(cpuinfo=cpuinfo(SANDY_BRIDGE_FLAGS.replace(" avx", ""))))
    assert check.status is Status.OK


def test_cpu_check_names_the_chosen_variant_and_why_others_were_rejected():
    from engine.cpu_backend import Choice

    choice = Choice(
        "icelake",
        "/x/libggml-cpu-icelake.so",
        "avx2 avx512 avx512_vbmi avx512_vnni run here (best of 9)",
        {"sapphirerapids": "probe died with SIGILL", "icelake": "runs"},
    )
    check = doctor.check_cpu(HostFacts(cpuinfo=cpuinfo(HASWELL_FLAGS), cpu_code=choice))
    assert check.status is Status.OK
    assert "icelake: avx2 avx512" in check.summary
    assert "sapphirerapids: probe died with SIGILL" in check.summary
    assert check.detail["variant"] == "icelake"


def test_cpu_check_fails_when_no_variant_runs():
    facts = HostFacts(cpuinfo=cpuinfo(HASWELL_FLAGS), cpu_code="no CPU variant runs here: x64: ...")
    check = doctor.check_cpu(facts)
    assert check.status is Status.FAIL
    assert "LLM_APPLIANCE_CPU_VARIANT" in check.hint


def test_non_x86_machine_is_warned():
    check = doctor.check_cpu(HostFacts(cpuinfo="Features : fp asimd\n", machine="aarch64"))
    assert check.status is Status.WARN


def test_memory_reports_total_and_available():
    check = doctor.check_memory(HostFacts(meminfo=MEMINFO))
    assert check.status is Status.OK
    assert check.detail == {"total_bytes": 16384000 * 1024, "available_bytes": 8192000 * 1024}


def test_low_memory_is_warned():
    low = "MemTotal: 2000000 kB\nMemAvailable: 500000 kB\n"
    assert doctor.check_memory(HostFacts(meminfo=low)).status is Status.WARN


def test_huge_pages_are_ok_where_the_kernel_offers_them():
    for mode in ("always", "madvise"):
        check = doctor.check_huge_pages(HostFacts(thp_mode=mode))
        assert (check.status, check.detail) == (Status.OK, {"thp_mode": mode})


def test_huge_pages_switched_off_say_how_to_switch_them_on():
    check = doctor.check_huge_pages(HostFacts(thp_mode="never"))
    assert check.status is Status.INFO
    assert "transparent_hugepage/enabled" in (check.hint or "")


def test_glibc_older_than_the_build_is_warned():
    assert doctor.check_glibc(HostFacts(glibc="glibc 2.31")).status is Status.WARN
    assert doctor.check_glibc(HostFacts(glibc="glibc 2.36")).status is Status.OK
    assert doctor.check_glibc(HostFacts(glibc="glibc 2.40")).status is Status.OK


def test_models_dir_writable(tmp_path: Path):
    assert doctor.check_models_dir(tmp_path).status is Status.OK


def test_models_dir_that_will_be_created(tmp_path: Path):
    check = doctor.check_models_dir(tmp_path / "a" / "b")
    assert check.status is Status.OK
    assert check.detail["nearest_existing"] == str(tmp_path)


def test_models_dir_that_is_a_file(tmp_path: Path):
    path = tmp_path / "file"
    path.write_text("")
    assert doctor.check_models_dir(path).status is Status.FAIL


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory the user running the tests cannot write: mode 0500 for an ordinary user; for
    root, who may write anywhere, a read-only bind mount (skipped, saying why, where mounting is
    not allowed)."""
    path = tmp_path / "ro"
    path.mkdir(mode=0o500)
    if os.geteuid() != 0:
        yield path
        return
    done = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {done.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_models_dir_not_writable(unwritable_dir: Path):
    check = doctor.check_models_dir(unwritable_dir)
    assert check.status is Status.FAIL and "chown" in check.hint


def test_proxy_password_is_masked():
    check = doctor.check_proxy({"HTTPS_PROXY": "http://alice:s3cret@proxy.corp:3128"})
    assert check.status is Status.OK
    assert "s3cret" not in json.dumps(check.as_json())
    assert "proxy.corp:3128" in check.summary


def test_lowercase_proxy_variables_count():
    check = doctor.check_proxy({"https_proxy": "http://proxy:3128", "no_proxy": "localhost"})
    assert check.detail["https_proxy"] == "http://proxy:3128"
    assert check.detail["no_proxy"] == "localhost"


def test_http_proxy_is_warned():
    check = doctor.check_proxy({"HTTPS_PROXY": "http://p:1", "HTTP_PROXY": "http://p:1"})
    assert check.status is Status.WARN and "NO_PROXY" in check.hint


def test_missing_ca_file_fails(tmp_path: Path):
    check = doctor.check_proxy({"SSL_CERT_FILE": str(tmp_path / "none.pem")})
    assert check.status is Status.FAIL


def test_no_proxy_at_all():
    assert doctor.check_proxy({}).status is Status.OK


async def test_free_port_reports_nothing_listening():
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    with trio.fail_after(10):
        check = await doctor.check_server("127.0.0.1", port)
    assert check.status is Status.INFO and "nothing listens" in check.summary


async def _serve_http(stream: trio.SocketStream, body: bytes) -> None:
    async with stream:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            if not chunk:
                return
            data += chunk
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n"
            b"Content-Type: text/plain\r\n\r\n%s" % (len(body), body)
        )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"Ollama is running", Status.OK),
        (b"<html>some other app</html>", Status.WARN),
    ],
)
async def test_port_in_use_is_told_apart_from_our_server(body: bytes, status: Status):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, lambda s: _serve_http(s, body), 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            check = await doctor.check_server("127.0.0.1", port)
            nursery.cancel_scope.cancel()
    assert check.status is status


async def test_full_report_renders_as_text_and_json(tmp_path: Path):
    facts = HostFacts(
        proc_version=WSL2_VERSION,
        cpuinfo=cpuinfo(HASWELL_FLAGS),
        meminfo=MEMINFO,
        glibc="glibc 2.36",
    )
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    with trio.fail_after(20):
        checks = await doctor.run_checks(
            facts, {"HTTPS_PROXY": "http://u:pw@p:1"}, doctor.Target("127.0.0.1", port, tmp_path)
        )
    names = [check.name for check in checks]
    assert names == [
        "wsl", "cpu", "memory", "hugepages", "glibc", "models", "proxy", "exposure", "server", "platform",
        "updates",
    ]  # fmt: skip
    text = doctor.render_text(checks)
    assert "Large Send Offload" in text and "pw@" not in text
    data = json.loads(json.dumps([check.as_json() for check in checks]))
    assert data[0]["status"] == "info"
    assert doctor.exit_code(checks) == 0


def test_exit_code_is_1_on_a_failure():
    failing = doctor.check_cpu(HostFacts(cpuinfo=cpuinfo(HASWELL_FLAGS), cpu_code="none runs"))
    assert doctor.exit_code([failing]) == 1


def test_gather_host_facts_reads_this_host():
    facts = doctor.gather_host_facts()
    assert facts.machine
    assert isinstance(facts.cpuinfo, str)
    assert facts.cpu_code is not None  # a Choice, or the reason none runs


def test_platform_defaults_are_listed_with_their_rule():
    check = doctor.check_platform()
    assert check.status is Status.INFO
    defaults = check.detail["defaults"]
    assert {"max_loaded_models", "num_parallel"} <= set(defaults)
    assert all(item["rule"] for item in defaults.values() if item["value"] is not None)
    assert f"num_parallel={defaults['num_parallel']['value']}," in check.summary
    assert "max_loaded_models:" in check.hint


def test_doctor_command_prints_json_for_the_configured_port_and_store(
    tmp_path, monkeypatch, capsys
):
    import argparse

    from serverproc import free_port

    port = free_port()
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{port}")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HTTPS_PROXY", "http://bob:hunter2@proxy.example:8080")
    parser = argparse.ArgumentParser()
    doctor.add_parser(parser.add_subparsers())
    args = parser.parse_args(["doctor", "--json"])
    code = args.func(args)
    out = capsys.readouterr().out
    checks = {check["name"]: check for check in json.loads(out)}
    assert checks["models"]["detail"]["path"] == str(tmp_path / "models")
    assert checks["server"]["detail"]["port"] == port
    assert checks["proxy"]["detail"]["https_proxy"] == "http://bob:***@proxy.example:8080"
    assert "hunter2" not in out
    assert code == (1 if any(c["status"] == "fail" for c in checks.values()) else 0)


def test_save_wsl_script_copies_the_shipped_script(tmp_path: Path):
    target = doctor.save_wsl_script(tmp_path / "public")
    repo_script = Path(__file__).resolve().parents[1] / "wsl" / "Tune-WslNetwork.ps1"
    assert target.read_bytes() == repo_script.read_bytes()


# -- exposure: a bind reachable from the network without API keys --------------------------------


def test_all_interfaces_without_keys_fails_and_says_how_to_set_one():
    from appliance.settings.config import Settings

    check = doctor.check_exposure(Settings(host="0.0.0.0"))
    assert check.status is Status.FAIL
    assert check.summary == "bound to 0.0.0.0 (every network interface) without an API key"
    assert "LLM_APPLIANCE_API_KEYS=" in check.hint and "LLM_APPLIANCE_ADMIN_KEYS=" in check.hint
    assert "/api/pull" in check.hint and "OLLAMA_HOST=127.0.0.1" in check.hint
    assert doctor.exit_code([check]) == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "::ffff:127.0.0.1"])
def test_loopback_binds_pass_without_keys(host: str):
    from appliance.settings.config import Settings

    assert doctor.check_exposure(Settings(host=host)).status is Status.OK


@pytest.mark.parametrize("host", ["", "::", "192.168.1.20", "box.lan"])
def test_other_binds_without_keys_fail(host: str):
    from appliance.settings.config import Settings

    assert doctor.check_exposure(Settings(host=host)).status is Status.FAIL


def test_an_exposed_bind_with_api_keys_passes():
    from appliance.settings.config import Settings

    check = doctor.check_exposure(Settings(host="0.0.0.0", api_keys=("k",)))
    assert check.status is Status.OK and check.summary.endswith("every route needs a key")


def test_admin_keys_alone_warn_that_inference_is_open():
    from appliance.settings.config import Settings

    check = doctor.check_exposure(Settings(host="0.0.0.0", admin_keys=("a",)))
    assert check.status is Status.WARN
    assert "store changes need an admin key" in check.hint


def test_doctor_command_fails_on_an_all_interfaces_bind_without_keys(tmp_path, monkeypatch, capsys):
    import argparse

    from serverproc import free_port

    monkeypatch.setenv("OLLAMA_HOST", f"0.0.0.0:{free_port()}")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    for name in ("LLM_APPLIANCE_API_KEYS", "LLM_APPLIANCE_API_KEY_FILE", "LLM_APPLIANCE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    parser = argparse.ArgumentParser()
    doctor.add_parser(parser.add_subparsers())
    args = parser.parse_args(["doctor"])
    code = args.func(args)
    out = capsys.readouterr().out
    assert code == 1
    assert "[fail] exposure  bound to 0.0.0.0 (every network interface) without an API key" in out
