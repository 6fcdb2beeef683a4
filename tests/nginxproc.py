"""Helpers for tests that run Debian's nginx in front of something on loopback.

nginx (nginx-light; `make test-peers` installs it when missing) runs in the foreground with
`master_process off`, its prefix, temp paths, pid and logs in the test's directory, with the site
under test included into a minimal http block. Tests skip with `NGINX_MISSING` when it is absent.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
NGINX_MISSING = "nginx is not installed (apt-get install nginx-light; make test does it)"


def write_nginx_conf(tmp: Path, site: str) -> Path:
    """nginx.conf under `tmp` that includes `site` (a conf.d file's text); returns its path."""
    (tmp / "site.conf").write_text(site)
    temp = tmp / "temp"
    temp.mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {tmp}/site.conf;
}}
""")
    return conf


def nginx_check(tmp: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on `conf`."""
    assert NGINX is not None, NGINX_MISSING
    return subprocess.run(
        [NGINX, "-t", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )


@asynccontextmanager
async def running_nginx(tmp: Path, site: str, listen_port: int) -> AsyncIterator[str]:
    """nginx serving `site`, which listens on 127.0.0.1:`listen_port`; yields its base URL."""
    assert NGINX is not None, NGINX_MISSING
    conf = write_nginx_conf(tmp, site)
    check = nginx_check(tmp, conf)
    assert check.returncode == 0, check.stderr
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            partial(
                trio.run_process,
                [NGINX, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
                check=False,
            )
        )
        while True:  # until it listens
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", listen_port)
            except OSError:
                if process.returncode is not None:
                    raise AssertionError((tmp / "error.log").read_text()) from None
                await trio.sleep(0.02)
                continue
            await stream.aclose()
            break
        try:
            yield f"http://127.0.0.1:{listen_port}"
        finally:
            nursery.cancel_scope.cancel()
