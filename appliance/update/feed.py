"""The release feed: a TUF repository read with python-tuf, through the pulls' network stack.

TUF (signed, expiring, versioned metadata) is what refuses a tampered file, replayed old metadata,
a frozen feed and a mix of two releases; this module adds only what the appliance needs on top:
which targets are releases, which one is the candidate, and errors a person can act on. The
trusted state (the last verified metadata of every role) lives in `state_dir/metadata`, so a
replay of older metadata is refused across runs, not only within one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio
from packaging.version import InvalidVersion, Version
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from appliance import __version__
from appliance.net import NetConfig, describe_failure, open_client, via

log = logging.getLogger(__name__)

#: What each release is called in the feed: `<version>/llm-appliance-linux-x86_64`.
TARGET_NAME = "llm-appliance-linux-x86_64"
_RELEASE = re.compile(r"^([^/]+)/" + re.escape(TARGET_NAME) + r"$")


class UpdateError(Exception):
    """An update step failed; the message says what and where, for the operator."""


@dataclass(frozen=True)
class Release:
    version: Version
    target: TargetFile

    @property
    def path(self) -> str:
        return self.target.path


def running_version() -> Version:
    return Version(__version__)


class TrioFetcher(FetcherInterface):
    """tuf's fetcher on our httpx client: the updater runs in a worker thread and each network
    step hops back to trio, so proxies, NO_PROXY, CAs and error texts are the pulls' own."""

    def __init__(self, client: httpx.AsyncClient, net: NetConfig) -> None:
        self._client = client
        self._net = net
        self._token = trio.lowlevel.current_trio_token()

    def _fetch(self, url: str) -> Iterator[bytes]:
        response = trio.from_thread.run(self._open, url, trio_token=self._token)
        if response.status_code != 200:
            trio.from_thread.run(response.aclose, trio_token=self._token)
            raise tuf_errors.DownloadHTTPError(
                f"{via(self._net, url)} answered {response.status_code} for {url}",
                response.status_code,
            )
        return self._chunks(response, url)

    async def _open(self, url: str) -> httpx.Response:
        request = self._client.build_request("GET", url)
        try:
            return await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise tuf_errors.DownloadError(describe_failure(exc, url, self._net)) from None

    def _chunks(self, response: httpx.Response, url: str) -> Iterator[bytes]:
        chunks = response.aiter_bytes(1 << 16)
        try:
            while True:
                try:
                    yield trio.from_thread.run(chunks.__anext__, trio_token=self._token)
                except StopAsyncIteration:
                    return
                except httpx.HTTPError as exc:
                    raise tuf_errors.DownloadError(describe_failure(exc, url, self._net)) from None
        finally:
            # tuf may drop the iterator early (a file longer than signed); it is then closed by
            # the garbage collector, possibly after the run: the client's own close frees it.
            try:
                trio.from_thread.run(response.aclose, trio_token=self._token)
            except (RuntimeError, trio.RunFinishedError):
                pass


@dataclass
class Feed:
    """One verified look at the release feed."""

    url: str
    releases: list[Release]

    def newest(self, *, skip: frozenset[str] = frozenset()) -> Release | None:
        candidates = [r for r in self.releases if str(r.version) not in skip]
        return max(candidates, key=lambda r: r.version, default=None)

    def find(self, version: str) -> Release | None:
        try:
            wanted = Version(version)
        except InvalidVersion:
            raise UpdateError(f"{version!r} is not a version (PEP 440)") from None
        return next((r for r in self.releases if r.version == wanted), None)


def _metadata_dir(state_dir: Path) -> Path:
    return state_dir / "metadata"


def _updater(
    url: str, root: bytes, state_dir: Path, fetcher: FetcherInterface, targets_dir: Path
) -> Updater:
    base = url.rstrip("/")
    metadata_dir = _metadata_dir(state_dir)
    metadata_dir.mkdir(parents=True, exist_ok=True)
    return Updater(
        metadata_dir=str(metadata_dir),
        metadata_base_url=f"{base}/metadata/",
        target_dir=str(targets_dir),
        target_base_url=f"{base}/targets/",
        fetcher=fetcher,
        config=UpdaterConfig(app_user_agent="llm-appliance-update"),
        bootstrap=root,
    )


def _releases(state_dir: Path) -> list[Release]:
    """Every `<version>/llm-appliance-linux-x86_64` target of the verified top-level targets
    role (tuf writes `targets.json` only after it verified it)."""
    raw = (_metadata_dir(state_dir) / "targets.json").read_bytes()
    targets: Metadata[Targets] = Metadata.from_bytes(raw)
    out = []
    for path, info in targets.signed.targets.items():
        match = _RELEASE.match(path)
        if not match:
            continue
        try:
            out.append(Release(Version(match.group(1)), info))
        except InvalidVersion:
            log.warning("update feed: ignoring target %s (not a PEP 440 version)", path)
    return out


def explain(exc: BaseException, url: str) -> str:
    """What went wrong with the feed, in words: tuf's own classes say which check failed."""
    if isinstance(exc, tuf_errors.ExpiredMetadataError):
        return f"the update feed {url} is expired ({exc}); it may be frozen or replayed"
    if isinstance(exc, tuf_errors.BadVersionNumberError):
        return f"the update feed {url} offered older metadata than this box trusts ({exc})"
    if isinstance(exc, tuf_errors.LengthOrHashMismatchError):
        return f"a file from {url} does not match its signed length or hash ({exc})"
    if isinstance(exc, tuf_errors.UnsignedMetadataError):
        return f"metadata from {url} is not signed by the trusted keys ({exc})"
    if isinstance(exc, tuf_errors.DownloadLengthMismatchError):
        return f"a file from {url} is larger than its signed length ({exc})"
    if isinstance(exc, tuf_errors.DownloadError):
        cause = exc.__cause__ or exc.__context__
        return f"cannot reach the update feed: {exc}" + (f" ({cause})" if cause else "")
    if isinstance(exc, tuf_errors.RepositoryError):
        return f"the update feed {url} failed verification: {type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


class FeedClient:
    """Reads the feed and downloads verified releases; owns one outbound client for its life.

    Use as `async with FeedClient(...) as feed_client:` inside trio.
    """

    def __init__(self, url: str, root_file: Path, state_dir: Path, net: NetConfig) -> None:
        self.url = url
        self._root_file = root_file
        self._state_dir = state_dir
        self._net = net
        self._client: httpx.AsyncClient | None = None
        self._updater: Updater | None = None

    async def __aenter__(self) -> FeedClient:
        self._client = open_client(self._net)  # net.DEFAULT_TIMEOUT: 30 s, reads 120 s
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def refresh(self) -> Feed:
        """Verify the newest metadata (root -> timestamp -> snapshot -> targets)."""
        assert self._client is not None
        try:
            root = self._root_file.read_bytes()
        except OSError as exc:
            raise UpdateError(f"cannot read the trusted root {self._root_file}: {exc}") from None
        fetcher = TrioFetcher(self._client, self._net)

        def refresh() -> list[Release]:
            try:
                self._updater = _updater(
                    self.url, root, self._state_dir, fetcher, self._state_dir / "downloads"
                )
                self._updater.refresh()
            except (tuf_errors.RepositoryError, tuf_errors.DownloadError, ValueError) as exc:
                raise UpdateError(explain(exc, self.url)) from None
            except OSError as exc:
                raise UpdateError(
                    f"cannot write the update state in {self._state_dir}: {exc}"
                ) from None
            return _releases(self._state_dir)

        releases = await trio.to_thread.run_sync(refresh)
        return Feed(self.url, releases)

    async def download(self, release: Release, destination: Path) -> None:
        """Download `release` to `destination`; tuf checks its signed length and hashes."""
        updater = self._updater
        assert updater is not None, "refresh() first"

        def download() -> None:
            try:
                updater.download_target(release.target, str(destination))
            except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
                raise UpdateError(explain(exc, self.url)) from None

        await trio.to_thread.run_sync(download)
