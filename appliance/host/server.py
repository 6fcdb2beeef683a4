"""`llm-appliance serve`: build the services, run hypercorn's trio worker, and shut down cleanly.

One nursery owns everything: the scheduler (and so every loaded model), the HTTP server, the signal
watcher and the systemd watchdog. The first SIGTERM/SIGINT stops accepting connections, lets
in-flight streams run for a grace period, ends the rest with a final `{"error": ...}` line, unloads
every model and returns, so the process exits 0. The signal receiver stays open until then, so a
second signal cannot kill the process half-way (hypercorn installs no handlers of its own).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from appliance import __version__
from appliance.api.app import create_app
from appliance.api.context import Services
from appliance.api.middleware.auth import exposure_warning
from appliance.host import connections, notify
from appliance.serving.catalog import Catalog, SlotPolicy
from appliance.serving.llama_backend import make_loader
from appliance.serving.metrics import Metrics
from appliance.serving.scheduler import Limits, Scheduler
from appliance.settings.config import Settings, load_settings
from appliance.store.layout import sweep_temp_files
from appliance.store.remote.download import Downloads
from appliance.store.store import Store
from engine import cpu_backend

log = logging.getLogger("appliance")

GRACE_SECONDS = 10.0


@dataclass
class Appliance:
    """The running service; `run()` returns once a shutdown completed."""

    settings: Settings
    loader: Any = None  # a backend Loader; the real llama.cpp one unless a test injects a double
    grace: float = GRACE_SECONDS
    http_keep_alive: float = 5.0  # seconds an idle client connection stays open
    temp_sweep_interval: float = 600.0  # seconds between sweeps of temp files no writer owns
    temp_sweeps: int = 0  # sweeps done while serving (tests wait on it)
    _shutdown: trio.Event = field(default_factory=trio.Event)
    services: Services | None = None
    app: Any = None
    downloads: Downloads | None = None  # the pulls' transfers; a test may inject small parts

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            # Signals first: a SIGTERM while the store is prepared must still stop us cleanly.
            nursery.start_soon(self._watch_signals)
            await self._serve(nursery, task_status)
            nursery.cancel_scope.cancel()
        log.info("stopped")

    async def _serve(self, nursery: trio.Nursery, task_status: trio.TaskStatus[list[str]]) -> None:
        settings = self.settings = await resolve_platform(self.settings)
        store = Store(settings.models_dir)
        await trio.to_thread.run_sync(_prepare_store, store, settings)
        limits, policy = resolve_limits(settings)
        catalog = Catalog(policy, store.gguf_infos, store.template_caps)
        metrics = Metrics() if settings.metrics else None
        scheduler = Scheduler(
            limits=limits,
            loader=self.loader
            or make_loader(
                settings.num_threads,
                load_timeout=settings.load_timeout,
                prompt_cache=settings.prompt_cache,
                cache_ram=policy.prompt_states_bytes,  # 0 with the prompt cache off
            ),
            planner=catalog.plan,
            observer=metrics,
        )
        downloads = self.downloads if self.downloads is not None else Downloads()
        extras: dict[str, Any] = {"catalog": catalog, "downloads": downloads}
        if metrics is not None:
            metrics.track(scheduler)
            extras["metrics"] = metrics
        self.services = Services(settings, store, scheduler, extras)
        app = self.app = create_app(self.services)
        config = hypercorn_config(settings, self.grace, self.http_keep_alive)
        config.on_connection_dropped = metrics.connection_dropped if metrics else None
        http_done = trio.Event()
        await nursery.start(scheduler.run)
        nursery.start_soon(notify.serve_watchdog)
        nursery.start_soon(self._sweep_temp_files, store, settings)

        async def run_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await hypercorn_serve(
                    app, config, shutdown_trigger=self._shutdown.wait, task_status=task_status
                )
            finally:
                http_done.set()

        binds = await nursery.start(run_http)
        log.info("llm-appliance %s listening on %s", __version__, ", ".join(binds))
        if exposed := exposure_warning(settings):
            log.warning("%s", exposed)
        notify.ready()
        task_status.started(binds)

        await self._shutdown.wait()
        log.info("shutting down: draining requests for up to %.0fs", self.grace)
        notify.stopping()
        await scheduler.shutdown(self.grace)
        await http_done.wait()

    async def _sweep_temp_files(self, store: Store, settings: Settings) -> None:
        """Remove, every `temp_sweep_interval`, temp files whose writer died while we serve (a
        killed upload of another process sharing the store, a crashed create)."""
        while True:
            await trio.sleep(self.temp_sweep_interval)
            try:
                await trio.to_thread.run_sync(
                    partial(sweep_temp_files, store.root, keep_partials=settings.noprune)
                )
            except OSError as exc:  # a store that went away for a moment must not stop us
                log.warning("temp file sweep failed: %s", exc)
            self.temp_sweeps += 1

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if not self._shutdown.is_set():
                    log.info("received %s", signal.Signals(signum).name)
                    self._shutdown.set()


def _prepare_store(store: Store, settings: Settings) -> None:
    store.startup(noprune=settings.noprune)
    # Temp files of uploads and creates that were killed (any age), stale unowned partials.
    sweep_temp_files(store.root, keep_partials=settings.noprune)
    if settings.import_reference:
        from appliance.store.reference import import_reference_model

        if import_reference_model(store):
            log.info("imported the reference model as gemma3:270m")


async def resolve_platform(settings: Settings) -> Settings:
    """Settings with every automatic value decided from the machine (probing can block)."""
    from appliance.settings.platform import decide_defaults, detect_facts

    facts = await trio.to_thread.run_sync(detect_facts)
    defaults = decide_defaults(facts, context_length=settings.context_length)
    for name, rule in defaults.rules.items():
        log.debug("default %s: %s", name, rule)
    return settings.with_platform_defaults(defaults)


def resolve_limits(settings: Settings) -> tuple[Limits, SlotPolicy]:
    """Scheduler limits and slot policy from settings whose automatic values are decided."""
    limits = Limits(
        max_queue=settings.max_queue,
        max_loaded_models=settings.max_loaded_models,
        memory_budget=settings.memory_budget or 0,
        default_keep_alive=settings.keep_alive,
    )
    policy = SlotPolicy(
        num_parallel=max(settings.num_parallel, 1),
        default_num_ctx=settings.default_num_ctx,
        flash_attention=settings.flash_attention,
        kv_cache_type=settings.kv_cache_type,
        memory_budget=settings.memory_budget or 0,
        prompt_states_bytes=settings.cache_ram * 1024 * 1024 if settings.prompt_cache else 0,
    )
    if policy.kv_type() != (settings.kv_cache_type or "f16"):
        log.warning(
            "OLLAMA_KV_CACHE_TYPE=%s needs flash attention, which OLLAMA_FLASH_ATTENTION turns "
            "off; using f16",
            settings.kv_cache_type,
        )
    return limits, policy


def hypercorn_config(settings: Settings, grace: float, keep_alive: float = 5.0) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [settings.bind]
    config.graceful_timeout = grace + 5
    config.keep_alive_timeout = keep_alive
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    # Read by appliance.host.connections: a client that accepts no byte for this long is dropped.
    config.write_timeout = settings.write_timeout
    connections.install()
    return config


def configure_logging(level: int) -> None:
    logging.basicConfig(
        level=level,
        format="time=%(asctime)s level=%(levelname)s source=%(name)s msg=%(message)s",
        stream=sys.stderr,
    )
    if level > logging.DEBUG:
        logging.getLogger("llama.cpp").setLevel(logging.WARNING)


def _serve_command(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(config_path=args.config)
    except Exception as exc:  # a bad setting is a clear start-up error, not a traceback
        print(f"llm-appliance: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    log.info("server config %s", settings.as_log_map())
    try:  # before any model loads; logs e.g. "cpu variant icelake: avx512 ... run here; ..."
        log.info("cpu variant %s", cpu_backend.load(settings.cpu_variant).describe())
    except cpu_backend.CpuBackendError as exc:
        log.error("%s", exc)
        return 1
    # Ignored outside trio's signal receiver: the receiver restores this when it closes, so a
    # second SIGTERM (systemd signals every process of the unit) cannot kill the process while
    # the interpreter winds down after a clean shutdown.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trio.run(Appliance(settings).run)
    except Exception as exc:
        from appliance.errors import ApplianceError

        if isinstance(exc, ApplianceError):
            log.error("%s", exc.message)
            return 1
        raise
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("serve", help="start the server")
    parser.add_argument("--config", default=None, help="TOML settings file")
    parser.set_defaults(func=_serve_command)
