"""The command-line client (`llm-appliance list/ps/show/run/stop/cp/rm/create/version`) against the
real server.

Conventions: the `server` fixture runs the real appliance on 127.0.0.1 port 0 with the tiny model
stored as `tiny`; OLLAMA_HOST points the client at it. The CLI's blocking `main([...])` runs in a
worker thread (`trio.to_thread.run_sync`) so the server keeps serving in the test's trio run; its
output is read with capsys. Models that must answer briefly are added with `num_predict` set.
Every test is bounded by fail_after.
"""

from __future__ import annotations

import io
import re
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from helpers import add_model, running_appliance
from peers.proxy import ProxyPeer
from peers.registry import RegistryPeer

from appliance.cli import main
from appliance.client.commands import (
    HELP,
    SET_HELP,
    human_bytes,
    human_time,
    print_metrics,
    processor,
    until,
)

LIMIT = 60


@pytest.fixture
def cli(server, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    """Async callable(*argv) -> (exit code, stdout, stderr), talking to the fixture server."""
    monkeypatch.setenv("OLLAMA_HOST", server.url.split("://", 1)[1])
    monkeypatch.delenv("LLM_APPLIANCE_CONFIG", raising=False)

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with trio.fail_after(LIMIT):
            code = await trio.to_thread.run_sync(main, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _short_model(tmp_path: Path, tiny_gguf: Path, name: str = "short") -> str:
    """A model in the fixture server's store that stops after 8 tokens, deterministically."""
    return add_model(
        tmp_path / "models", name, tiny_gguf, params={"num_predict": 8, "temperature": 0}
    )


async def test_list_prints_ollama_table_with_id_size_and_age(cli):
    code, out, err = await cli("list")
    assert code == 0 and err == ""
    header, row = out.splitlines()
    assert re.fullmatch(r"NAME\s{4,}ID\s{4,}SIZE\s{4,}MODIFIED", header)
    cells = re.split(r"\s{4,}", row)
    assert cells[0] == "tiny:latest"
    assert re.fullmatch(r"[0-9a-f]{12}", cells[1])
    assert re.fullmatch(r"\d+(\.\d)? (B|KB|MB|GB)", cells[2])
    assert cells[3].endswith(" ago")


async def test_ls_is_an_alias_of_list(cli):
    code, out, _ = await cli("ls")
    assert code == 0 and "tiny:latest" in out


async def test_ps_lists_a_model_loaded_by_run(cli, tmp_path, tiny_gguf):
    model = _short_model(tmp_path, tiny_gguf)
    await cli("run", model, "hi", "--keepalive", "10m")
    code, out, err = await cli("ps")
    assert code == 0, err
    header, row = out.splitlines()
    assert re.fullmatch(r"NAME\s+ID\s+SIZE\s+PROCESSOR\s+CONTEXT\s+UNTIL", header)
    cells = re.split(r"\s{4,}", row)
    assert cells[0] == "short:latest"
    assert cells[3] == "100% CPU"
    assert cells[4].isdigit() and int(cells[4]) > 0
    assert cells[5].endswith("from now")


async def test_run_with_prompt_streams_the_answer_to_stdout(cli, tmp_path, tiny_gguf):
    model = _short_model(tmp_path, tiny_gguf)
    code, out, err = await cli("run", model, "hello")
    assert code == 0, err
    assert out.endswith("\n") and out.strip() != ""
    again = await cli("run", model, "hello")
    assert again[1] == out  # temperature 0: the same text


async def test_run_verbose_prints_timing_stats_on_stderr(cli, tmp_path, tiny_gguf):
    model = _short_model(tmp_path, tiny_gguf)
    code, _, err = await cli("run", model, "hello", "--verbose")
    assert code == 0
    assert re.search(r"^eval count:\s+8 token\(s\)$", err, re.M)
    assert re.search(r"^eval rate:\s+[\d.]+ tokens/s$", err, re.M)
    assert re.search(r"^total duration:\s+\S+s$", err, re.M)


async def test_run_without_prompt_chats_until_bye(cli, tmp_path, tiny_gguf, monkeypatch):
    model = _short_model(tmp_path, tiny_gguf)
    monkeypatch.setattr(sys, "stdin", _Lines("hello\n/set verbose\nagain\n/bye\nnever sent\n"))
    code, out, err = await cli("run", model)
    assert code == 0, err
    assert "Set 'verbose' mode." in out
    assert len(re.findall(r"^eval count:", err, re.M)) == 1  # only the second turn was verbose


async def test_show_of_an_unknown_model_is_one_error_line(cli):
    code, out, err = await cli("show", "nope")
    assert code == 1 and out == ""
    assert err == "Error: model 'nope' not found\n"


async def test_stop_unloads_a_running_model(cli, tmp_path, tiny_gguf):
    model = _short_model(tmp_path, tiny_gguf)
    await cli("run", model, "")  # preload
    assert "short:latest" in (await cli("ps"))[1]
    code, out, err = await cli("stop", model)
    assert (code, out, err) == (0, "", "")
    with trio.fail_after(LIMIT):
        while "short:latest" in (await cli("ps"))[1]:
            await trio.sleep(0.05)


async def test_show_prints_model_section_and_single_fields(cli, tmp_path, tiny_gguf):
    add_model(tmp_path / "models", "sys", tiny_gguf, system="Be brief.", params={"temperature": 0})
    code, out, err = await cli("show", "sys")
    assert code == 0, err
    assert out.startswith("  Model\n")
    assert re.search(r"^    architecture\s{4,}llama$", out, re.M)
    assert re.search(r"^  Parameters\n    temperature\s{4,}0$", out, re.M)
    assert "  System\n    Be brief.\n" in out
    assert (await cli("show", "sys", "--system"))[1] == "Be brief."
    params = (await cli("show", "sys", "--parameters"))[1]
    assert re.fullmatch(r"temperature\s+0\n", params)
    modelfile = (await cli("show", "sys", "--modelfile"))[1]
    assert "\nFROM " in modelfile and "\nSYSTEM " in modelfile


async def test_cp_then_rm_copies_and_deletes(cli):
    code, out, err = await cli("cp", "tiny", "tiny2")
    assert (code, out, err) == (0, "copied 'tiny' to 'tiny2'\n", "")
    assert "tiny2:latest" in (await cli("list"))[1]
    code, out, err = await cli("rm", "tiny2")
    assert (code, out, err) == (0, "deleted 'tiny2'\n", "")
    assert "tiny2" not in (await cli("list"))[1]


async def test_rm_of_a_missing_model_fails(cli):
    code, _, err = await cli("rm", "ghost")
    assert code == 1 and err == "Error: model 'ghost' not found\n"


async def test_create_from_modelfile_builds_a_model_with_params_and_system(cli, tmp_path):
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM tiny\nPARAMETER temperature 0\nSYSTEM You are terse.\n")
    code, out, err = await cli("create", "terse", "-f", str(modelfile))
    assert code == 0, err
    assert err.rstrip().endswith("success")
    assert (await cli("show", "terse", "--system"))[1] == "You are terse."
    assert re.search(r"temperature\s+0", (await cli("show", "terse", "--parameters"))[1])
    assert "terse:latest" in (await cli("list"))[1]


async def test_create_uploads_a_local_gguf_as_a_blob(cli, tmp_path, tiny_gguf):
    (tmp_path / "m.gguf").write_bytes(tiny_gguf.read_bytes())
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM ./m.gguf\n")
    code, _, err = await cli("create", "fromfile", "-f", str(modelfile))
    assert code == 0, err
    assert "copying file sha256:" in err and err.rstrip().endswith("success")
    assert "fromfile:latest" in (await cli("list"))[1]


async def test_pull_shows_layer_progress_and_success(
    nursery, tmp_path, tiny_gguf, monkeypatch, capsys
):
    registry = RegistryPeer("registry.test")
    registry.add_model("library/tiny", "latest", tiny_gguf.read_bytes())
    await nursery.start(registry.serve)
    proxy = ProxyPeer(names={"registry.test": ("127.0.0.1", registry.port)})
    await nursery.start(proxy.serve)
    async with running_appliance(
        tmp_path / "models", https_proxy=proxy.url, http_proxy=proxy.url
    ) as server:
        monkeypatch.setenv("OLLAMA_HOST", server.url.split("://", 1)[1])
        monkeypatch.delenv("LLM_APPLIANCE_CONFIG", raising=False)
        with trio.fail_after(LIMIT):
            code = await trio.to_thread.run_sync(
                main, ["pull", "registry.test/library/tiny", "--insecure"]
            )
    out, err = capsys.readouterr()
    assert code == 0 and out == ""
    lines = err.splitlines()
    assert lines[0] == "pulling manifest" and lines[-1] == "success"
    assert any(
        re.fullmatch(r"pulling [0-9a-f]{12}: 100% ▕█{16}▏ \d+(\.\d)? [KM]?B", x) for x in lines
    )


async def test_version_prints_client_and_server_versions(cli):
    code, out, err = await cli("version")
    assert code == 0 and err == ""
    assert re.search(r"server version is \d+\.\d+\.\d+", out)
    assert re.search(r"client version is \d+\.\d+\.\d+", out)


async def test_not_running_server_is_one_clear_error(monkeypatch, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{port}")
    monkeypatch.delenv("LLM_APPLIANCE_CONFIG", raising=False)
    with trio.fail_after(LIMIT):
        code = await trio.to_thread.run_sync(main, ["list"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err == (
        f"Error: could not connect to llm-appliance at http://127.0.0.1:{port}; is it running? "
        "(start it with: llm-appliance serve)\n"
    )


def test_formats_match_ollama():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert [human_bytes(n) for n in (512, 12_345, 1_500_000, 4_700_000_000, 2 * 10**9)] == [
        "512 B",
        "12 KB",
        "1.5 MB",
        "4.7 GB",
        "2 GB",
    ]
    assert human_time(now - timedelta(days=3), now=now) == "3 days ago"
    assert until(now + timedelta(days=365 * 292), now=now) == "Forever"
    assert until(now - timedelta(seconds=1), now=now) == "Stopping..."
    assert until(now + timedelta(minutes=4, seconds=59), now=now) == "4 minutes from now"
    assert processor(100, 0) == "100% CPU" and processor(100, 100) == "100% GPU"
    assert processor(100, 25) == "75%/25% CPU/GPU"


class _Lines:
    """A piped stdin (not a terminal) holding `text`."""

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines(keepends=True)

    def readline(self) -> str:
        return self._lines.pop(0) if self._lines else ""

    def isatty(self) -> bool:
        return False


async def test_chat_slash_commands_answer_as_ollama_does(cli, tmp_path, tiny_gguf, monkeypatch):
    model = _short_model(tmp_path, tiny_gguf)
    commands = [
        "/set system Be brief.", "/set parameter temperature 0", "/set parameter num_predict x",
        "/set format json", "/set noformat", "/set quiet", "/set", "/clear", "/nope now", "/?",
        "/bye",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "stdin", _Lines("".join(f"{c}\n" for c in commands)))
    code, out, err = await cli("run", model)
    assert (code, err) == (0, "")
    assert out == (
        "Set system message.\n"
        "Set parameter 'temperature' to '0'\n"
        "Couldn't set parameter: invalid int value [x]\n"
        "Set format to 'json' mode.\n"
        "Disabled format.\n"
        "Set 'quiet' mode.\n"
        f"{SET_HELP}\n"
        "Cleared session context\n"
        "Unknown command '/nope'. Type /? for help\n"
        f"{HELP}\n"
    )


def test_verbose_stats_are_ollamas_summary_lines():
    out = io.StringIO()
    print_metrics(
        {"total_duration": 2_500_000_000, "load_duration": 1_000_000, "prompt_eval_count": 4,
         "prompt_eval_duration": 500_000_000, "eval_count": 8, "eval_duration": 2_000_000_000},
        out,
    )  # fmt: skip
    assert out.getvalue() == (
        "total duration:       2.5s\n"
        "load duration:        1ms\n"
        "prompt eval count:    4 token(s)\n"
        "prompt eval duration: 500ms\n"
        "prompt eval rate:     8.00 tokens/s\n"
        "eval count:           8 token(s)\n"
        "eval duration:        2s\n"
        "eval rate:            4.00 tokens/s\n"
    )
