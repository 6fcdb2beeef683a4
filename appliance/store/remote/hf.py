"""Pull GGUF files straight from a Hugging Face repository: `hf.co/<user>/<repo>[:<quant>]`.

The repository's file list (`GET <endpoint>/api/models/<repo>/revision/main?blobs=true`, the call
huggingface_hub's `model_info(files_metadata=True)` makes) gives each GGUF file's LFS sha256 and
size; the tag picks the file whose name carries that quantization (`:Q8_0` -> `*-Q8_0.gguf`, case
ignored; no tag prefers Q4_K_M). The file then downloads through the same resumable, verified,
proxy-aware path as a registry blob (`<endpoint>/<repo>/resolve/main/<file>`), and a manifest with
a config blob built from the GGUF header is written last. HF_ENDPOINT and HF_TOKEN (or the token
file huggingface_hub writes) are honoured as huggingface_hub does; the token is only sent to the
endpoint's host (httpx drops it on a redirect to the CDN).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import trio

from appliance.net import NetConfig, RedirectGuard, describe_failure, open_client
from appliance.store.manifest import (
    CONFIG_MEDIA_TYPE,
    MEDIA_MODEL,
    Layer,
    Manifest,
    build_config,
    build_manifest,
    config_from_gguf,
)
from appliance.store.names import ModelName
from appliance.store.remote.download import Downloads
from appliance.store.remote.registry import (
    MANIFEST_NOT_FOUND,
    RegistryError,
    failed_url,
    foreign_failure,
)
from appliance.store.remote.steps import (
    Progress,
    fetch_with_progress,
    progress_line,
    write_manifest_and_prune,
)
from appliance.store.store import Store

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
PREFERRED_QUANTS = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q8_0")
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)


def hf_endpoint(environ: Mapping[str, str]) -> str:
    return (environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hf_token(environ: Mapping[str, str]) -> str | None:
    """HF_TOKEN, the legacy HUGGING_FACE_HUB_TOKEN, or the token file (HF_TOKEN_PATH, HF_HOME)."""
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if environ.get(key, "").strip():
            return environ[key].strip()
    if environ.get("HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        return None
    home = environ.get("HF_HOME") or os.path.join(
        environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    path = Path(environ.get("HF_TOKEN_PATH") or os.path.join(home, "token"))
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def choose_file(siblings: list[dict[str, Any]], tag: str, repo: str) -> dict[str, Any]:
    """The GGUF sibling for quantization `tag` (`latest` = the preferred default)."""
    ggufs = [
        s
        for s in siblings
        if isinstance(s.get("rfilename"), str)
        and s["rfilename"].lower().endswith(".gguf")
        and "mmproj" not in s["rfilename"].lower()
    ]
    if not ggufs:
        raise RegistryError(f"pull model manifest: {repo} has no GGUF files")
    if tag.lower() == "latest":
        for quant in PREFERRED_QUANTS:
            found = [s for s in ggufs if _has_quant(s["rfilename"], quant)]
            if found:
                return _single_file(found[0], repo)
        return _single_file(min(ggufs, key=lambda s: s["rfilename"]), repo)
    found = [s for s in ggufs if _has_quant(s["rfilename"], tag)]
    if not found:
        names = ", ".join(sorted(s["rfilename"] for s in ggufs))
        raise RegistryError(
            f"pull model manifest: no GGUF file for quantization {tag} in {repo} (files: {names})"
        )
    return _single_file(found[0], repo)


def _has_quant(filename: str, quant: str) -> bool:
    base = filename.rsplit("/", 1)[-1]
    pattern = rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])"
    return re.search(pattern, base, re.IGNORECASE) is not None


def _single_file(sibling: dict[str, Any], repo: str) -> dict[str, Any]:
    if _SPLIT.search(sibling["rfilename"]):
        raise RegistryError(
            f"pull model manifest: {sibling['rfilename']} in {repo} is split into several files, "
            "which is not supported; merge it with llama-gguf-split and use /api/create"
        )
    return sibling


async def pull_hf(
    store: Store,
    name: ModelName,
    *,
    net: NetConfig,
    settings: Any,
    progress: Progress,
    downloads: Downloads,
    environ: Mapping[str, str] | None = None,
) -> Manifest:
    """Pull one GGUF file from a Hugging Face repository as model `name`."""
    env = os.environ if environ is None else environ
    endpoint = hf_endpoint(env)
    token = hf_token(env)
    repo = f"{name.namespace}/{name.model}"
    await progress(progress_line("pulling manifest"))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    net.check_registry(f"https://{name.host}")  # hf.co is a registry like any other
    net.check_registry(endpoint)
    guard = RedirectGuard(net, endpoint)  # the CDN it redirects files to is checked
    async with open_client(net, headers=headers, guard=guard) as client:
        log.info("pulling %s from %s", repo, endpoint)
        info_url = f"{endpoint}/api/models/{repo}/revision/main"
        siblings = await _repo_files(client, info_url, guard, net)
        file = _gguf_file(choose_file(siblings, name.tag, repo), endpoint, repo)
        log.info("%s -> %s (%s)", name.full(), file.name, file.digest)
        ranges = _FileRanges(client, file, guard, net)
        if await fetch_with_progress(
            store,
            file.digest,
            file.size,
            downloads,
            progress,
            ranges.open_range,
            on_transport_error=ranges.transport_error,
        ):
            await progress(progress_line("verifying sha256 digest"))
            await downloads.commit(store, file.digest)
    config = await trio.to_thread.run_sync(_config_for, store, file.digest)
    config_digest = await trio.to_thread.run_sync(store.write_blob_bytes, config)
    manifest = build_manifest(
        Layer(CONFIG_MEDIA_TYPE, config_digest, len(config)),
        [Layer(MEDIA_MODEL, file.digest, file.size)],
    )
    await write_manifest_and_prune(store, name, manifest.raw, settings=settings, progress=progress)
    return manifest


@dataclass(frozen=True)
class _HfFile:
    """The one GGUF file a pull downloads: its name in the repository, digest, size and URL."""

    name: str
    digest: str
    size: int
    url: str


async def _repo_files(
    client: httpx.AsyncClient, info_url: str, guard: RedirectGuard, net: NetConfig
) -> list[dict[str, Any]]:
    """The repository's files with their LFS metadata (`siblings`), failures in words."""
    try:
        response = await client.get(info_url, params={"blobs": "true"})
    except httpx.HTTPError as exc:
        url = failed_url(exc, info_url)
        if guard.is_foreign(url):
            cause = describe_failure(exc, url, net)
            raise foreign_failure("pull model manifest", url, guard, cause) from exc
        raise RegistryError(f"pull model manifest: {describe_failure(exc, info_url, net)}") from exc
    _check_info_answer(response, guard)
    try:
        return response.json().get("siblings") or []
    except (ValueError, AttributeError):
        raise RegistryError("pull model manifest: the model info is not JSON") from None


def _check_info_answer(response: httpx.Response, guard: RedirectGuard) -> None:
    """Ollama's "file does not exist" for 404; any other non-200 names who answered what."""
    if response.status_code == 404:
        raise RegistryError(MANIFEST_NOT_FOUND)
    if response.status_code != 200 and guard.is_foreign(response.request.url):
        reason = f"answered {response.status_code} {response.reason_phrase}"
        raise foreign_failure("pull model manifest", response.request.url, guard, reason)
    if response.status_code != 200:
        hint = (
            "; set HF_TOKEN for a gated or private repository"
            if response.status_code in (401, 403)
            else ""
        )
        raise RegistryError(
            f"pull model manifest: {response.request.url.host} answered "
            f"{response.status_code} {response.reason_phrase}{hint}"
        )


def _gguf_file(chosen: dict[str, Any], endpoint: str, repo: str) -> _HfFile:
    """The chosen sibling's digest (its LFS sha256, which must be there), size and URL."""
    lfs = chosen.get("lfs") or {}
    if not lfs.get("sha256"):
        raise RegistryError(f"pull model manifest: {chosen['rfilename']} has no sha256 in {repo}")
    return _HfFile(
        name=chosen["rfilename"],
        digest="sha256:" + lfs["sha256"].lower(),
        size=int(lfs.get("size") or chosen.get("size") or 0),
        url=f"{endpoint}/{repo}/resolve/main/{quote(chosen['rfilename'])}",
    )


class _FileRanges:
    """Byte ranges of one file for `fetch_with_progress`, and its failures in words."""

    def __init__(
        self, client: httpx.AsyncClient, file: _HfFile, guard: RedirectGuard, net: NetConfig
    ) -> None:
        self._client = client
        self._net = net
        self._file = file
        self._guard = guard
        self._context = f"pulling {file.digest[7:19]}"

    @asynccontextmanager
    async def open_range(self, start: int, end: int) -> AsyncIterator[httpx.Response]:
        """The streamed answer for bytes start..end (200 or 206), else a RegistryError."""
        guard = self._guard
        async with AsyncExitStack() as stack:
            try:
                r = await stack.enter_async_context(
                    self._client.stream(
                        "GET", self._file.url, headers={"Range": f"bytes={start}-{end}"}
                    )
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if guard.is_foreign(failed_url(exc, self._file.url)):  # not retried: see Registry
                    raise self.transport_error(exc) from exc
                raise
            if r.status_code not in (200, 206):
                reason = f"answered {r.status_code} {r.reason_phrase}"
                if guard.is_foreign(r.request.url):
                    raise foreign_failure(self._context, r.request.url, guard, reason)
                raise RegistryError(f"{self._context}: {r.request.url.host} {reason}")
            yield r

    def transport_error(self, exc: httpx.HTTPError) -> RegistryError:
        url = failed_url(exc, self._file.url)
        cause = describe_failure(exc, url, self._net)
        if self._guard.is_foreign(url):
            return foreign_failure(self._context, url, self._guard, cause)
        return RegistryError(f"{self._context}: {cause}")


def _config_for(store: Store, digest: str) -> bytes:
    """A config blob from the GGUF header, as `ollama create` would write it."""
    try:
        info = store.gguf_info(store.blob_path(digest))
    except (ValueError, OSError) as exc:
        log.warning("could not read the GGUF header of %s: %s", digest, exc)
        return build_config(model_format="gguf", diff_ids=[digest])
    return config_from_gguf(info, [digest])
