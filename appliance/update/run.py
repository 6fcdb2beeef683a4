"""The three update actions: check, update (download, verify, self-test, swap, restart, gate) and
rollback. Each returns the command's exit status and prints what happened in one or two lines."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import trio
from packaging.version import Version

from appliance.net import NetConfig
from appliance.settings.config import Settings
from appliance.update import install, service
from appliance.update.feed import Feed, FeedClient, Release, UpdateError, running_version
from appliance.update.state import UpdateState

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UPDATE_AVAILABLE = 100  # as `dnf check-update`


@dataclass
class Context:
    settings: Settings
    state_dir: Path
    out: TextIO = sys.stdout

    def feed_client(self) -> FeedClient:
        if not self.settings.update_url:
            raise UpdateError(
                "updates are off: set LLM_APPLIANCE_UPDATE_URL (update_url) to the release feed "
                "and LLM_APPLIANCE_UPDATE_ROOT (update_root) to its trusted root.json"
            )
        if self.settings.update_root is None:
            raise UpdateError(
                "LLM_APPLIANCE_UPDATE_ROOT (update_root) is not set: the box needs the feed's "
                "trusted root.json to verify anything"
            )
        return FeedClient(
            self.settings.update_url,
            self.settings.update_root,
            self.state_dir,
            NetConfig.resolve(self.settings),
        )

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _recorded(ctx: Context, action: Callable[[UpdateState], tuple[int, str]]) -> int:
    """Run `action`, remember its one-line result for `doctor`, print it."""
    state = UpdateState.load(ctx.state_dir)
    try:
        code, result = action(state)
    except UpdateError as exc:
        code, result = EXIT_ERROR, f"error: {exc}"
    state.record(result)
    try:
        state.save(ctx.state_dir)
    except OSError as exc:
        ctx.say(f"warning: cannot save the update state in {ctx.state_dir}: {exc.strerror}")
    ctx.say(result)
    return code


def _read_feed(ctx: Context) -> Feed:
    async def read() -> Feed:
        async with ctx.feed_client() as client:
            return await client.refresh()

    return trio.run(read)


def _candidate(feed: Feed, state: UpdateState, pinned: str | None) -> Release | None:
    if pinned:
        release = feed.find(pinned)
        if release is None:
            raise UpdateError(f"version {pinned} is not in the update feed {feed.url}")
        return release
    return feed.newest(skip=frozenset(state.failed_versions))


def check(ctx: Context) -> int:
    """`update --check`: read-only; 0 up to date, 100 an update is available, 1 an error."""

    def action(state: UpdateState) -> tuple[int, str]:
        feed = _read_feed(ctx)
        current = running_version()
        newest = _candidate(feed, state, None)
        if newest is None or newest.version <= current:
            shown = newest.version if newest is not None else "none"
            return EXIT_OK, f"up to date: running {current}, newest in the feed {shown}"
        return (
            EXIT_UPDATE_AVAILABLE,
            f"update available: running {current}, newest {newest.version}",
        )

    return _recorded(ctx, action)


@dataclass
class UpdateRequest:
    binary: Path
    version: str | None = None
    yes: bool = False
    allow_downgrade: bool = False
    unit: str = service.UNIT
    health_timeout: float = 180.0
    confirm: Callable[[str], bool] | None = None  # asks the operator; None: not interactive


def update(ctx: Context, request: UpdateRequest) -> int:
    """`update`: the newest (or pinned) release, verified, self-tested, swapped in, restarted
    under systemd and gated on health, rolled back by itself if it does not come up."""

    def action(state: UpdateState) -> tuple[int, str]:
        install.refuse_managed(request.binary)
        install.check_writable(request.binary.parent)
        current = running_version()
        fetched = trio.run(_download_release, ctx, request, state, current)
        if isinstance(fetched, tuple):
            return fetched
        staged = _self_tested(request.binary, fetched, state)
        install.activate(request.binary, staged)
        return _restart_gated(ctx, request, state, fetched, current)

    return _recorded(ctx, action)


async def _download_release(
    ctx: Context, request: UpdateRequest, state: UpdateState, current: Version
) -> tuple[int, str] | Release:
    """The release downloaded next to the binary, or the answer without one."""
    async with ctx.feed_client() as client:
        feed = await client.refresh()
        release = _candidate(feed, state, request.version)
        verdict = _verdict(release, current, request)
        if verdict is not None:
            return verdict
        assert release is not None
        if not _confirmed(request, current, release):
            return EXIT_ERROR, "update cancelled"
        staged = install.staging_path(request.binary, str(release.version))
        staged.unlink(missing_ok=True)
        try:
            await client.download(release, staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return release


def _confirmed(request: UpdateRequest, current: Version, release: Release) -> bool:
    """--yes, or the operator's answer; not interactive and no --yes is an error."""
    question = f"update llm-appliance {current} -> {release.version} ({request.binary})?"
    if request.yes:
        return True
    if request.confirm is None:
        raise UpdateError(f"{question} Add --yes to update without asking")
    return request.confirm(question)


def _self_tested(binary: Path, release: Release, state: UpdateState) -> Path:
    """The staged binary once it passed its self-test; one that fails is removed and the
    version marked failed, so the next plain `update` skips it."""
    staged = install.staging_path(binary, str(release.version))
    try:
        install.self_test(staged, str(release.version))
    except UpdateError:
        staged.unlink(missing_ok=True)
        state.mark_failed(str(release.version))
        raise
    return staged


def _restart_gated(
    ctx: Context, request: UpdateRequest, state: UpdateState, release: Release, current: Version
) -> tuple[int, str]:
    """The new binary is in place: restart the running service and gate on its health; one that
    does not come up is rolled back and restarted again."""
    binary = request.binary
    if not service.is_active(request.unit):
        return EXIT_OK, (
            f"updated to {release.version} ({binary}; the old one is "
            f"{install.previous_of(binary).name}); restart the service to run it"
        )
    problem = service.restart_and_check(
        request.unit, ctx.settings.client_base_url, request.health_timeout
    )
    if problem is None:
        return EXIT_OK, f"updated to {release.version} and restarted {request.unit}"
    state.mark_failed(str(release.version))
    install.rollback(binary)
    again = service.restart_and_check(
        request.unit, ctx.settings.client_base_url, request.health_timeout
    )
    after = "the previous version runs again" if again is None else f"and then: {again}"
    raise UpdateError(
        f"{release.version} did not come up ({problem}); rolled back to {current}, {after}"
    )


def _verdict(
    release: Release | None, current: Version, request: UpdateRequest
) -> tuple[int, str] | None:
    """An answer without downloading anything, or None to go on."""
    if release is None:
        return EXIT_OK, f"up to date: running {current}"
    if release.version == current:
        return EXIT_OK, f"up to date: running {current}"
    if release.version < current:
        if request.version is None:
            return EXIT_OK, f"up to date: running {current}, newest in the feed {release.version}"
        if not request.allow_downgrade:
            raise UpdateError(
                f"{release.version} is older than the running {current}: refusing a downgrade "
                "(add --allow-downgrade to do it anyway)"
            )
    return None


def rollback(ctx: Context, binary: Path, unit: str, health_timeout: float) -> int:
    """`update --rollback`: put `<binary>.previous` back (and restart under systemd)."""

    def action(state: UpdateState) -> tuple[int, str]:
        install.rollback(binary)
        if not service.is_active(unit):
            return EXIT_OK, f"rolled back {binary}; restart the service to run it"
        problem = service.restart_and_check(unit, ctx.settings.client_base_url, health_timeout)
        if problem is not None:
            raise UpdateError(f"rolled back {binary}, but the restart failed: {problem}")
        return EXIT_OK, f"rolled back {binary} and restarted {unit}"

    return _recorded(ctx, action)
