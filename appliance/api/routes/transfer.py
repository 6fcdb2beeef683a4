"""`POST /api/pull` and `POST /api/push`, streaming progress as NDJSON.

A streamed transfer runs as a task in the app's nursery (quart-trio's `app.nursery`), because the
response body is iterated after the handler returns and a generator must never hold a nursery
across a `yield`. The task lives exactly as long as its client: the body generator relays from a
memory channel, and its `finally` closes the channel and cancels the task's scope synchronously,
so a client that goes away stops its download (the bytes so far stay resumable). Errors end the
stream with `{"error": ...}`. With `stream: false` the handler runs the transfer itself and answers
only the last status, or the error with status 500, as Ollama's `waitForStream` does.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio
from quart import Blueprint, Response, current_app

from appliance.api.bodies.models import PullRequest, PushRequest
from appliance.api.context import services
from appliance.api.requests import read_json_object
from appliance.api.streaming import dumps, ndjson_response
from appliance.errors import ApplianceError
from appliance.store.remote.download import Downloads
from appliance.store.remote.pull import pull_model
from appliance.store.remote.push import push_model
from appliance.store.remote.registry import check_allowed
from appliance.store.remote.steps import Progress

log = logging.getLogger(__name__)

bp = Blueprint("transfer", __name__)

Job = Callable[[Progress], Awaitable[Any]]
CHANNEL_SIZE = 64
RELAY_START_TIMEOUT = 30.0  # seconds for hypercorn to start sending a streamed body


def downloads_of(extras: dict[str, Any]) -> Downloads:
    """The server's shared `Downloads` (`extras["downloads"]`), created on first use."""
    downloads = extras.get("downloads")
    if downloads is None:
        downloads = extras["downloads"] = Downloads()
    return downloads


@bp.post("/api/pull")
async def pull() -> Response:
    req = PullRequest.parse(await read_json_object())
    svc = services()
    check_allowed(req.name, svc.settings, insecure=req.insecure)  # 403 for a registry not allowed
    downloads = downloads_of(svc.extras)

    async def job(progress: Progress) -> Any:
        return await pull_model(
            svc.store,
            req.name,
            insecure=req.insecure,
            settings=svc.settings,
            progress=progress,
            downloads=downloads,
        )

    return await _respond(job, req.stream)


@bp.post("/api/push")
async def push() -> Response:
    req = PushRequest.parse(await read_json_object())
    svc = services()
    check_allowed(req.name, svc.settings, insecure=req.insecure)  # 403 for a registry not allowed

    async def job(progress: Progress) -> Any:
        return await push_model(
            svc.store, req.name, insecure=req.insecure, settings=svc.settings, progress=progress
        )

    return await _respond(job, req.stream)


async def _respond(job: Job, stream: bool) -> Response:
    if not stream:
        return await _wait_for_last(job)
    send, receive = trio.open_memory_channel[Any](CHANNEL_SIZE)
    relaying = trio.Event()
    scope = await current_app.nursery.start(_run_streamed, job, send, relaying)
    return ndjson_response(_relay(receive, scope, relaying))


async def _wait_for_last(job: Job) -> Response:
    last: dict[str, Any] = {}

    async def keep(line: dict[str, Any]) -> None:
        nonlocal last
        last = line

    try:
        await job(keep)
    except ApplianceError as exc:
        return Response(dumps({"error": exc.message}), status=500, content_type="application/json")
    return Response(dumps(last), status=200, content_type="application/json")


async def _run_streamed(
    job: Job,
    send: trio.MemorySendChannel[Any],
    relaying: trio.Event,
    *,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `job` sending its progress to `send`; never lets an error escape into the app nursery.

    If the response body is never iterated (the client left between the handler's return and
    the first byte), nothing would ever cancel the job: a watchdog does, after a while.
    """
    with trio.CancelScope() as scope:
        task_status.started(scope)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_unless_relayed, relaying, scope)
            await _run_job(job, send)
            nursery.cancel_scope.cancel()


async def _cancel_unless_relayed(relaying: trio.Event, scope: trio.CancelScope) -> None:
    with trio.move_on_after(RELAY_START_TIMEOUT):
        await relaying.wait()
        return
    log.info("transfer abandoned: its response was never sent")
    scope.cancel()


async def _run_job(job: Job, send: trio.MemorySendChannel[Any]) -> None:
    """Run the job, sending its error (if any) as the last item; never raises."""
    async with send:
        try:
            await job(send.send)
        except ApplianceError as exc:
            await _send_quietly(send, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("transfer abandoned: the client went away")
        except Exception as exc:
            if _only_broken_channel(exc):
                log.info("transfer abandoned: the client went away")
            else:
                log.exception("transfer failed")
                await _send_quietly(send, exc)


async def _send_quietly(send: trio.MemorySendChannel[Any], exc: BaseException) -> None:
    try:
        await send.send(_leaf(exc))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _only_broken_channel(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_broken_channel(e) for e in exc.exceptions)
    return isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError, trio.Cancelled))


async def _relay(
    receive: trio.MemoryReceiveChannel[Any], scope: trio.CancelScope, relaying: trio.Event
) -> AsyncIterator[dict[str, Any]]:
    """Yield progress lines; re-raise the transfer's error so the stream ends with it."""
    relaying.set()
    try:
        async for item in receive:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        receive.close()
        scope.cancel()
