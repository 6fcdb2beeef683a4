"""Client commands (`run`, `pull`, `push`, `list`, `ps`, `stop`, `rm`, `show`, `create`, `cp`,
`version`): a thin HTTP client of our own API, printing what Ollama's CLI prints.

Users switch from `ollama` to `llm-appliance` without relearning anything, so tables, size and time
formats, progress lines and messages follow Ollama's cmd/cmd.go and format/*.go. The server is
found as Ollama's client finds it (OLLAMA_HOST, with 0.0.0.0 meaning this machine). Every failure
is one `Error: ...` line on stderr and exit code 1. Streams are read with a blocking httpx client:
a CLI has nothing else to do while it waits.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

from appliance import __version__
from appliance.gocompat.humanfmt import human_number

PROGRAM = "llm-appliance"
# Ollama's tablewriter settings: no borders, left aligned, four spaces between columns.
TABLE_PADDING = "    "
BAR_WIDTH = 16


class CLIError(Exception):
    """A failure to report as `Error: <message>` with exit code 1."""


class NotRunning(CLIError):
    """Nothing answers at the server's address."""


# -- formatting (Ollama's format/bytes.go, format/time.go) ---------------------------------------


def human_bytes(n: int) -> str:
    """Ollama's format.HumanBytes: decimal units, one decimal only below 10 and when not whole."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            value = n / size
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{n} B"


def human_duration(seconds: float) -> str:
    """Ollama's humanDuration for a non-negative span."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(_go_round(seconds / 3600))
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def _go_round(x: float) -> float:
    """Go's math.Round: half away from zero."""
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def human_time(when: datetime | None, zero: str = "Never", *, now: datetime | None = None) -> str:
    """Ollama's format.HumanTime: "2 days ago", "4 minutes from now", "Forever" (> 20 years)."""
    if when is None:
        return zero
    now = now or datetime.now(UTC)
    delta = (now - when).total_seconds()
    if int(int(delta / 3600) / 24 / 365) < -20:  # Go's truncating integer division
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$")


def parse_go_time(text: str | None) -> datetime | None:
    """An RFC3339(Nano) timestamp as an aware datetime; None for missing, zero or unreadable."""
    if not text:
        return None
    m = _TIME_RE.match(text.strip())
    if not m:
        return None
    base, frac, zone = m.groups()
    if base.startswith("0001-01-01"):
        return None  # Go's zero time
    micro = f"{(frac or '.0')[1:7]:0<6}"
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        return datetime.fromisoformat(f"{base}.{micro}{zone}")
    except ValueError:
        # Far-future years (keep_alive -1 gives now + 292 years) still fit; anything else does not.
        return None


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell with four spaces between, as Ollama's tables."""
    all_rows = ([header] if header else []) + rows
    if not all_rows:
        return ""
    ncols = max(len(r) for r in all_rows)
    widths = [max((len(r[i]) for r in all_rows if i < len(r)), default=0) for i in range(ncols)]
    lines = []
    for r in all_rows:
        cells = [c.ljust(widths[i]) for i, c in enumerate(r)]
        lines.append(TABLE_PADDING.join(cells).rstrip())
    return "\n".join(lines) + "\n"


def format_go_ns(ns: int) -> str:
    """A nanosecond count as Go's Duration.String() (the `--verbose` stats)."""
    from appliance.gocompat.durations import format_go_duration

    return format_go_duration(ns / 1e9)


def processor(size: int, size_vram: int) -> str:
    """The PROCESSOR column of `ps` (cmd/cmd.go ListRunningHandler)."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu = int(_go_round((size - size_vram) / size * 100))
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def until(expires: datetime | None, *, now: datetime | None = None) -> str:
    """The UNTIL column of `ps`: "Stopping..." once past, "Forever" far ahead, else relative."""
    now = now or datetime.now(UTC)
    if expires is not None and expires < now:
        return "Stopping..."
    return human_time(expires, "Never", now=now)


# -- the HTTP client ------------------------------------------------------------------------------


def base_url(environ: dict[str, str] | None = None) -> str:
    """Where the server is, by OLLAMA_HOST (Ollama's rules; 0.0.0.0 -> 127.0.0.1)."""
    from appliance.settings.config import ConfigError, load_settings

    try:
        return load_settings(environ).client_base_url
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def _is_local(url: str) -> bool:
    host = httpx.URL(url).host
    return host in ("localhost", "::1") or host.startswith("127.")


class Client:
    """Blocking calls to the API, turning HTTP and stream errors into CLIError."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or base_url()
        timeout = httpx.Timeout(30.0, read=None, write=None)
        headers = {"User-Agent": f"{PROGRAM}/{__version__}"}
        from appliance.settings.config import client_api_key

        api_key = client_api_key()
        if api_key:  # the admin key, else the API key (LLM_APPLIANCE_ADMIN_KEYS / _API_KEYS)
            headers["Authorization"] = f"Bearer {api_key}"
        # Go's client never proxies loopback; httpx would, so skip the environment there.
        self.http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            trust_env=not _is_local(self.url),
            headers=headers,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def _connect_error(self) -> CLIError:
        return NotRunning(
            f"could not connect to {PROGRAM} at {self.url}; is it running? "
            f"(start it with: {PROGRAM} serve)"
        )

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """One request; the decoded JSON answer (None for an empty body)."""
        try:
            response = self.http.request(method, path, json=body, **kwargs)
        except httpx.ConnectError:
            raise self._connect_error() from None
        except httpx.TransportError as exc:
            raise CLIError(str(exc) or type(exc).__name__) from None
        _check(response, response.content)
        if not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError:
            return None

    def has_blob(self, digest: str) -> bool:
        try:
            return self.http.head(f"/api/blobs/{digest}").status_code == 200
        except httpx.ConnectError:
            raise self._connect_error() from None
        except httpx.TransportError as exc:
            raise CLIError(str(exc) or type(exc).__name__) from None

    def stream(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        """POST and yield each NDJSON line; an `{"error": ...}` line raises CLIError."""
        try:
            with self.http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    _check(response, response.read())
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        item = json.loads(line)
                    except ValueError:
                        raise CLIError(f"unexpected response from server: {line[:200]}") from None
                    if isinstance(item, dict) and item.get("error"):
                        raise CLIError(str(item["error"]))
                    yield item
        except httpx.ConnectError:
            raise self._connect_error() from None
        except httpx.TransportError as exc:
            raise CLIError(str(exc) or type(exc).__name__) from None


def _check(response: httpx.Response, content: bytes) -> None:
    if response.status_code < 400:
        return
    message = ""
    try:
        data = json.loads(content)
        if isinstance(data, dict):
            message = str(data.get("error") or "")
    except ValueError:
        message = content.decode("utf-8", "replace").strip()
    raise CLIError(message or f"{response.status_code} {response.reason_phrase}")


# -- progress (pull, push, create) ---------------------------------------------------------------


class Progress:
    """Ollama-style progress on stderr: one line per layer with a bar; redrawn on a terminal,
    printed once per status (and once complete) otherwise, so logs stay readable."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = _isatty(out)
        self.current = ""  # the key of the line being drawn
        self.open = False  # a redrawable line without its newline yet
        self.done: set[str] = set()

    def update(self, item: dict[str, Any]) -> None:
        status = str(item.get("status") or "")
        digest = str(item.get("digest") or "")
        total = int(item.get("total") or 0)
        if digest and total:
            completed = int(item.get("completed") or 0)
            short = digest.split(":", 1)[-1][:12]
            label = status if short in status else f"{status} {short}".strip()
            self._bar(label, digest, completed, total)
        elif status:
            self._line(status)

    def _bar(self, label: str, key: str, completed: int, total: int) -> None:
        pct = min(100, int(completed * 100 / total)) if total else 100
        filled = BAR_WIDTH * pct // 100
        bar = "█" * filled + " " * (BAR_WIDTH - filled)
        size = (
            human_bytes(total)
            if completed >= total
            else (f"{human_bytes(completed)}/{human_bytes(total)}")
        )
        text = f"{label}: {pct:3d}% ▕{bar}▏ {size}"
        if self.tty:
            if self.open and self.current != key:
                self.out.write("\n")
            self.out.write("\r\x1b[K" + text)
            self.open, self.current = True, key
            if completed >= total:
                self.out.write("\n")
                self.open = False
        else:
            state = f"{key}:{label}:{'done' if completed >= total else 'start'}"
            if state not in self.done:
                self.done.add(state)
                self.out.write(text + "\n")
        self.out.flush()

    def _line(self, text: str) -> None:
        if self.open:
            self.out.write("\n")
            self.open = False
        if text == self.current:
            return
        self.current = text
        self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.open:
            self.out.write("\n")
            self.open = False
        self.out.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _follow(client: Client, path: str, body: dict[str, Any]) -> None:
    progress = Progress(sys.stderr)
    try:
        for item in client.stream(path, body):
            progress.update(item)
    finally:
        progress.close()


# -- commands --------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    with Client() as client:
        data = client.request("GET", "/api/tags") or {}
    rows = []
    for m in data.get("models") or []:
        rows.append(
            [
                str(m.get("name") or m.get("model") or ""),
                str(m.get("digest") or "")[:12],
                human_bytes(int(m.get("size") or 0)),
                human_time(parse_go_time(m.get("modified_at"))),
            ]
        )
    sys.stdout.write(format_table(["NAME", "ID", "SIZE", "MODIFIED"], rows))
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    with Client() as client:
        data = client.request("GET", "/api/ps") or {}
    rows = []
    now = datetime.now(UTC)
    for m in data.get("models") or []:
        size = int(m.get("size") or 0)
        rows.append(
            [
                str(m.get("name") or m.get("model") or ""),
                str(m.get("digest") or "")[:12],
                human_bytes(size),
                processor(size, int(m.get("size_vram") or 0)),
                str(int(m.get("context_length") or 0)),
                until(parse_go_time(m.get("expires_at")), now=now),
            ]
        )
    sys.stdout.write(format_table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    with Client() as client:
        try:
            client.request("POST", "/api/generate", {"model": args.model, "keep_alive": 0})
        except CLIError as exc:
            if "not found" in str(exc):
                raise CLIError(f'couldn\'t find model "{args.model}" to stop') from None
            raise
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with Client() as client:
        for name in args.models:
            try:  # unload first, as Ollama does; a model that is not loaded is fine
                client.request("POST", "/api/generate", {"model": name, "keep_alive": 0})
            except NotRunning:
                raise
            except CLIError:
                pass
            client.request("DELETE", "/api/delete", {"model": name})
            sys.stdout.write(f"deleted '{name}'\n")
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    with Client() as client:
        body = {"source": args.source, "destination": args.destination}
        client.request("POST", "/api/copy", body)
    sys.stdout.write(f"copied '{args.source}' to '{args.destination}'\n")
    return 0


SHOW_FIELDS = ("license", "modelfile", "parameters", "system", "template")


def cmd_show(args: argparse.Namespace) -> int:
    chosen = [f for f in SHOW_FIELDS if getattr(args, f)]
    if len(chosen) > 1:
        flags = ", ".join(f"'--{f}'" for f in SHOW_FIELDS)
        raise CLIError(f"only one of {flags} can be specified")
    with Client() as client:
        resp = client.request("POST", "/api/show", {"model": args.model, "verbose": args.verbose})
    resp = resp or {}
    out = sys.stdout
    if chosen:
        value = str(resp.get(chosen[0]) or "")
        # Ollama prints system and template as they are, the others with a newline.
        out.write(value if chosen[0] in ("system", "template") else value + "\n")
        return 0
    out.write(show_info(resp))
    return 0


def show_info(resp: dict[str, Any]) -> str:
    """The default `show` text: Model, Capabilities, Parameters, System, License sections."""
    parts: list[str] = []

    def section(title: str, rows: list[list[str]]) -> None:
        parts.append(f"  {title}\n" + format_table([], rows) + "\n")

    details = resp.get("details") or {}
    info = resp.get("model_info") or {}
    rows: list[list[str]] = []
    if info:
        arch = str(info.get("general.architecture") or "")
        rows.append(["", "architecture", arch])
        params = str(details.get("parameter_size") or "")
        if not params and isinstance(info.get("general.parameter_count"), (int, float)):
            params = human_number(int(info["general.parameter_count"]))
        rows.append(["", "parameters", params])
        for key, label in (
            ("context_length", "context length"),
            ("embedding_length", "embedding length"),
        ):
            value = info.get(f"{arch}.{key}")
            if isinstance(value, (int, float)):
                rows.append(["", label, f"{value:g}" if isinstance(value, float) else str(value)])
    else:
        rows.append(["", "architecture", str(details.get("family") or "")])
        rows.append(["", "parameters", str(details.get("parameter_size") or "")])
    rows.append(["", "quantization", str(details.get("quantization_level") or "")])
    if resp.get("requires"):
        rows.append(["", "requires", str(resp["requires"])])
    section("Model", rows)
    if resp.get("capabilities"):
        section("Capabilities", [["", str(c)] for c in resp["capabilities"]])
    if resp.get("parameters"):
        section(
            "Parameters",
            [["", *line.split()] for line in str(resp["parameters"]).splitlines() if line.strip()],
        )

    def head(text: str, n: int) -> list[list[str]]:
        lines = [t.strip() for t in text.splitlines() if t.strip()]
        return [["", t] for t in lines[:n]] + ([["", "..."]] if len(lines) > n else [])

    if resp.get("system"):
        section("System", head(str(resp["system"]), 2))
    if resp.get("license"):
        section("License", head(str(resp["license"]), 2))
    return "".join(parts)


def cmd_version(args: argparse.Namespace) -> int:
    out = sys.stdout
    try:
        with Client() as client:
            data = client.request("GET", "/api/version") or {}
        out.write(
            f"{PROGRAM} server version is {data.get('version', 'unknown')}"
            " (the Ollama API it speaks)\n"
        )
    except CLIError as exc:
        sys.stderr.write(f"Warning: {exc}\n")
    out.write(f"{PROGRAM} client version is {__version__}\n")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    return _transfer(args, "/api/pull")


def cmd_push(args: argparse.Namespace) -> int:
    return _transfer(args, "/api/push")


def _transfer(args: argparse.Namespace, path: str) -> int:
    """`pull` or `push`: the server's progress lines followed as Ollama's CLI shows them."""
    body = {"model": args.model, "insecure": args.insecure, "stream": True}
    with Client() as client:
        _follow(client, path, body)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from appliance.errors import ApplianceError
    from appliance.store.modelfile import create_request, parse_modelfile

    path = Path(args.file).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CLIError(f"specified Modelfile wasn't found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read {path}: {exc}") from None
    try:
        body, uploads = create_request(parse_modelfile(text), path.resolve().parent, args.model)
    except ApplianceError as exc:
        raise CLIError(exc.message) from None
    if args.quantize:
        body["quantize"] = args.quantize
    body["stream"] = True
    err = sys.stderr
    with Client() as client:
        if uploads:
            err.write("gathering model components\n")
        for digest, local in uploads.items():
            err.write(f"copying file {digest} 100%\n")
            # Ask first: the server answers an upload of a blob it has before reading the body,
            # and some HTTP clients take the early answer for a dropped connection.
            if client.has_blob(digest):
                continue
            with local.open("rb") as fh:
                client.request("POST", f"/api/blobs/{digest}", content=fh)
        err.flush()
        _follow(client, "/api/create", body)
    return 0


# -- run -------------------------------------------------------------------------------------------


def _keep_alive(text: str | None) -> Any:
    """`--keepalive` as the JSON value: numbers as seconds, anything else as a Go duration."""
    if text is None:
        return None
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text


def print_metrics(item: dict[str, Any], out: TextIO) -> None:
    """Ollama's Metrics.Summary on stderr, for `run --verbose`."""

    def ns(key: str) -> int:
        return int(item.get(key) or 0)

    def line(label: str, value: str) -> None:
        out.write(f"{label + ':':<22}{value}\n")

    for label, key in (("total duration", "total_duration"), ("load duration", "load_duration")):
        if ns(key) > 0:
            line(label, format_go_ns(ns(key)))
    for stage, key in (("prompt eval", "prompt_eval"), ("eval", "eval")):
        count, duration = ns(f"{key}_count"), ns(f"{key}_duration")
        if count > 0:
            line(f"{stage} count", f"{count} token(s)")
        if duration > 0:
            line(f"{stage} duration", format_go_ns(duration))
            line(f"{stage} rate", f"{count / (duration / 1e9):.2f} tokens/s")
    out.flush()


class Session:
    """The settings of one `run`, changed by `/set` in the chat loop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.model: str = args.model
        self.format: str = args.format or ""
        self.keep_alive = _keep_alive(args.keepalive)
        self.verbose: bool = args.verbose
        self.options: dict[str, Any] = {}
        self.system: str = ""

    def base(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "stream": True}
        if self.format:
            body["format"] = self.format
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        if self.options:
            body["options"] = dict(self.options)
        return body


def _emit(client: Client, path: str, body: dict[str, Any], session: Session) -> str:
    """Stream a generate/chat answer to stdout; returns the full text."""
    out = sys.stdout
    text: list[str] = []
    thinking = False
    last: dict[str, Any] = {}
    for item in client.stream(path, body):
        last = item
        msg = item.get("message") or {}
        think = item.get("thinking") or msg.get("thinking") or ""
        piece = item.get("response") or msg.get("content") or ""
        if think:
            if not thinking:
                out.write("Thinking...\n")
                thinking = True
            out.write(think)
        if piece:
            if thinking:
                out.write("\n...done thinking.\n\n")
                thinking = False
            out.write(piece)
            text.append(piece)
        out.flush()
    if thinking:
        out.write("\n...done thinking.\n\n")
    out.write("\n")
    out.flush()
    if session.verbose:
        print_metrics(last, sys.stderr)
    return "".join(text)


def _ensure_model(client: Client, model: str, insecure: bool) -> None:
    """Like `ollama run`: a model that is not here is pulled first."""
    try:
        client.request("POST", "/api/show", {"model": model})
        return
    except CLIError as exc:
        if "not found" not in str(exc):
            raise
    _follow(client, "/api/pull", {"model": model, "insecure": insecure, "stream": True})


def cmd_run(args: argparse.Namespace) -> int:
    session = Session(args)
    prompt = args.prompt
    stdin = sys.stdin
    if prompt is not None and not _isatty(stdin) and _readable(stdin):
        piped = stdin.read()
        if piped:
            prompt = f"{piped} {prompt}" if prompt else piped
    with Client() as client:
        _ensure_model(client, args.model, args.insecure)
        if prompt is not None:
            body = session.base()
            body["prompt"] = prompt
            if prompt:
                _emit(client, "/api/generate", body, session)
            else:  # `run MODEL ""`: load it and return
                for _ in client.stream("/api/generate", body):
                    pass
            return 0
        preload = session.base()  # an empty prompt loads the model, as `ollama run` does
        for _ in client.stream("/api/generate", preload):
            pass
        chat_loop(client, session, stdin)
    return 0


def _readable(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message.
"""

SET_HELP = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
"""


def _read_message(stdin: TextIO, tty: bool) -> str | None:
    """One user message: a line, or a `\"\"\"` block; None at end of input."""
    if tty:
        sys.stdout.write(">>> ")
        sys.stdout.flush()
    line = stdin.readline()
    if not line:
        return None
    line = line.rstrip("\n")
    if not line.lstrip().startswith('"""'):
        return line
    text = line.lstrip()[3:]
    if text.endswith('"""') and len(text) >= 3:
        return text[:-3]
    parts = [text]
    while True:
        if tty:
            sys.stdout.write("... ")
            sys.stdout.flush()
        more = stdin.readline()
        if not more:
            return "\n".join(parts)
        more = more.rstrip("\n")
        if more.endswith('"""'):
            parts.append(more[:-3])
            return "\n".join(parts).strip("\n")
        parts.append(more)


def chat_loop(client: Client, session: Session, stdin: TextIO) -> None:
    """The interactive chat: each line is a user turn sent with the whole history."""
    tty = _isatty(stdin)
    out = sys.stdout
    messages: list[dict[str, str]] = []
    while True:
        try:
            line = _read_message(stdin, tty)
        except KeyboardInterrupt:
            out.write("\nUse Ctrl + d or /bye to exit.\n")
            continue
        if line is None:
            out.write("\n" if tty else "")
            return
        stripped = line.strip()
        if not stripped:
            continue
        if stripped in ("/bye", "/exit"):
            return
        if stripped.startswith("/"):
            _slash_command(stripped, client, session, messages, out)
        else:
            _chat_turn(line, client, session, messages, out)


def _slash_command(
    command: str, client: Client, session: Session, messages: list[dict[str, str]], out: TextIO
) -> None:
    """`/help`, `/clear`, `/set ...`, `/show`; anything else is an unknown command."""
    if command in ("/?", "/help"):
        out.write(HELP + "\n")
    elif command == "/clear":
        messages.clear()
        out.write("Cleared session context\n")
    elif command.startswith("/set"):
        _set_command(command, session, out)
    elif command == "/show":
        resp = client.request("POST", "/api/show", {"model": session.model}) or {}
        out.write(show_info(resp))
    else:
        out.write(f"Unknown command '{command.split()[0]}'. Type /? for help\n")


def _set_command(command: str, session: Session, out: TextIO) -> None:
    """`/set verbose|quiet|format json|noformat|system ...|parameter KEY VALUE`, else its help."""
    words = command.split(maxsplit=2)
    what = words[1] if len(words) > 1 else ""
    if what == "verbose":
        session.verbose = True
        out.write("Set 'verbose' mode.\n")
    elif what == "quiet":
        session.verbose = False
        out.write("Set 'quiet' mode.\n")
    elif what == "format" and len(words) > 2 and words[2] == "json":
        session.format = "json"
        out.write("Set format to 'json' mode.\n")
    elif what == "noformat":
        session.format = ""
        out.write("Disabled format.\n")
    elif what == "system" and len(words) > 2:
        session.system = words[2].strip().strip('"')
        out.write("Set system message.\n")
    elif what == "parameter" and len(words) > 2 and len(words[2].split()) >= 2:
        _set_parameter(words[2], session, out)
    else:
        out.write(SET_HELP + "\n")


def _set_parameter(text: str, session: Session, out: TextIO) -> None:
    """`/set parameter KEY VALUE...`, typed as a Modelfile PARAMETER; a bad value is reported."""
    from appliance.options import format_params

    key, value = text.split(maxsplit=1)
    try:
        session.options.update(format_params([(key, v) for v in value.split()]))
    except Exception as exc:  # noqa: BLE001 - a bad value is reported, the chat goes on
        out.write(f"Couldn't set parameter: {getattr(exc, 'message', exc)}\n")
        return
    out.write(f"Set parameter '{key}' to '{value}'\n")


def _chat_turn(
    line: str, client: Client, session: Session, messages: list[dict[str, str]], out: TextIO
) -> None:
    """Send `line` with the history and stream the answer; the history keeps both, or neither
    when the answer is cut short."""
    messages.append({"role": "user", "content": line})
    body = session.base()
    sent = list(messages)
    if session.system:
        sent.insert(0, {"role": "system", "content": session.system})
    body["messages"] = sent
    try:
        answer = _emit(client, "/api/chat", body, session)
    except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat (closing the stream
        messages.pop()  # cancels the request on the server)
        out.write("\n\n")
        return
    except CLIError:
        messages.pop()
        raise
    out.write("\n")
    messages.append({"role": "assistant", "content": answer})


# -- registration ---------------------------------------------------------------------------------


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command; any failure is one `Error:` line on stderr and exit code 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CLIError as exc:
            sys.stdout.flush()
            sys.stderr.write(f"Error: {exc}\n")
            return 1
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            return 130

    return run


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the client commands on the `llm-appliance` parser."""
    p = subparsers.add_parser("run", help="run a model")
    p.add_argument("model")
    p.add_argument("prompt", nargs="?", default=None)
    p.add_argument("--format", default="", help='response format (e.g. "json")')
    p.add_argument("--keepalive", default=None, help="how long the model stays loaded (e.g. 5m)")
    p.add_argument("--verbose", action="store_true", help="show timings for the response")
    p.add_argument("--insecure", action="store_true", help="use an insecure registry")
    p.add_argument("--nowordwrap", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_guarded(cmd_run))

    for name, func, text in (
        ("pull", cmd_pull, "pull a model from a registry"),
        ("push", cmd_push, "push a model to a registry"),
    ):
        p = subparsers.add_parser(name, help=text)
        p.add_argument("model")
        p.add_argument("--insecure", action="store_true", help="use an insecure registry")
        p.set_defaults(func=_guarded(func))

    p = subparsers.add_parser("list", aliases=["ls"], help="list models")
    p.set_defaults(func=_guarded(cmd_list))

    p = subparsers.add_parser("ps", help="list running models")
    p.set_defaults(func=_guarded(cmd_ps))

    p = subparsers.add_parser("stop", help="stop a running model")
    p.add_argument("model")
    p.set_defaults(func=_guarded(cmd_stop))

    p = subparsers.add_parser("rm", help="remove models")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.set_defaults(func=_guarded(cmd_rm))

    p = subparsers.add_parser("show", help="show information for a model")
    p.add_argument("model")
    for field in SHOW_FIELDS:
        p.add_argument(f"--{field}", action="store_true", help=f"show the model's {field}")
    p.add_argument("-v", "--verbose", action="store_true", help="show the full model info")
    p.set_defaults(func=_guarded(cmd_show))

    p = subparsers.add_parser("create", help="create a model from a Modelfile")
    p.add_argument("model")
    p.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default ./Modelfile)")
    p.add_argument("-q", "--quantize", default="", help="quantize the model (e.g. q4_K_M)")
    p.set_defaults(func=_guarded(cmd_create))

    p = subparsers.add_parser("cp", help="copy a model")
    p.add_argument("source")
    p.add_argument("destination")
    p.set_defaults(func=_guarded(cmd_cp))

    p = subparsers.add_parser("version", help="show the client and server versions")
    p.set_defaults(func=_guarded(cmd_version))
