"""Prometheus metrics: llama.cpp's `llamacpp:*` names plus Ollama-style queue and model gauges.

Dashboards built for llama.cpp's server read `llamacpp:*` unchanged (here with a `model` label, as
one server holds several models); the `ollama_*` gauges follow ollama#16998. Counters are fed by the
runners through the `RunnerObserver` hook; gauges read the scheduler when scraped, so they are
never stale and cost nothing between scrapes. Every label is bounded: local model names, a route
pattern, a method, a status code. The registry belongs to one `Metrics` object (one per server), so
two servers in one process (the tests) never share a series.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from appliance.serving.runner import Runner
    from appliance.serving.scheduler import Scheduler
    from engine.batch import Chunk

CONTENT_TYPE = CONTENT_TYPE_LATEST
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def model_label(runner: Runner) -> str:
    """The model's name as /api/ps shows it (`tiny:latest`), a bounded label."""
    return str(runner.model.name)


class Metrics:
    """The server's metrics registry; also the runners' observer (`appliance.serving.runner`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.prompt_tokens = Counter(
            "llamacpp:prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self.prompt_tokens_cached = Counter(
            "llamacpp:prompt_tokens_cached",
            "Prompt tokens served from the prompt cache (not decoded again).",
            ["model"],
            registry=r,
        )
        self.prompt_tokens_restored = Counter(
            "llamacpp:prompt_tokens_restored",
            "Prompt tokens of those cached that were restored from a state kept in host RAM.",
            ["model"],
            registry=r,
        )
        self.tokens_predicted = Counter(
            "llamacpp:tokens_predicted", "Generated tokens.", ["model"], registry=r
        )
        self.prompt_seconds = Counter(
            "llamacpp:prompt_seconds", "Prompt processing time.", ["model"], registry=r
        )
        self.predicted_seconds = Counter(
            "llamacpp:tokens_predicted_seconds", "Token generation time.", ["model"], registry=r
        )
        self.n_decode = Counter(
            "llamacpp:n_decode", "Batched decode steps (llama_decode calls).", ["model"], registry=r
        )
        self.load_duration = Histogram(
            "ollama_model_load_duration_seconds",
            "Time to load a model into memory.",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            "ollama_http_requests",
            "HTTP requests answered, by route pattern, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.connections_dropped = Counter(
            "llm_appliance_connections_dropped",
            "Client connections the server dropped, by reason (write_timeout: accepted no byte "
            "for the write timeout).",
            ["reason"],
            registry=r,
        )

    def track(self, scheduler: Scheduler) -> None:
        """Serve the scheduler's live state (queue, slots in use, loaded models) as gauges."""
        self.registry.register(_SchedulerCollector(scheduler))

    def render(self) -> bytes:
        """The exposition text of every series, read now."""
        return generate_latest(self.registry)

    # ---- RunnerObserver -------------------------------------------------------------------------

    def model_loaded(self, runner: Runner, seconds: float) -> None:
        self.load_duration.labels(model_label(runner)).observe(seconds)

    def decode_step(self, runner: Runner) -> None:
        self.n_decode.labels(model_label(runner)).inc()

    def sequence_done(self, runner: Runner, chunk: Chunk) -> None:
        model = model_label(runner)
        self.prompt_tokens.labels(model).inc(max(chunk.prompt_eval_count, 0))
        self.prompt_tokens_cached.labels(model).inc(max(chunk.prompt_cached, 0))
        self.prompt_tokens_restored.labels(model).inc(max(chunk.prompt_restored, 0))
        self.tokens_predicted.labels(model).inc(max(chunk.eval_count, 0))
        self.prompt_seconds.labels(model).inc(max(chunk.prompt_eval_ns, 0) / 1e9)
        self.predicted_seconds.labels(model).inc(max(chunk.eval_ns, 0) / 1e9)

    # ---- HTTP -----------------------------------------------------------------------------------

    def http_request(self, route: str, method: str, status: int) -> None:
        method = method if method in HTTP_METHODS else "other"
        self.http_requests.labels(route, method, str(status)).inc()

    def connection_dropped(self, reason: str) -> None:
        self.connections_dropped.labels(reason).inc()


class _SchedulerCollector(Collector):
    """Gauges computed from the scheduler at scrape time (on the trio thread, no locking)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        scheduler = self.scheduler
        runners = scheduler.runners
        queued = scheduler.queued
        processing = sum(r.ref_count for r in runners)
        yield GaugeMetricFamily(
            "llamacpp:requests_processing", "Requests holding a slot now.", value=processing
        )
        yield GaugeMetricFamily(
            "llamacpp:requests_deferred", "Requests waiting for a slot or a load.", value=queued
        )
        yield GaugeMetricFamily(
            "ollama_requests_queued", "Requests waiting in the bounded queue.", value=queued
        )
        yield GaugeMetricFamily(
            "ollama_queue_capacity",
            "Bound of the request queue (OLLAMA_MAX_QUEUE).",
            value=scheduler.limits.max_queue,
        )
        yield GaugeMetricFamily(
            "ollama_models_loaded",
            "Models loaded and ready.",
            value=sum(1 for r in runners if r.state == "ready"),
        )
        slots = GaugeMetricFamily(
            "ollama_model_slots_busy", "Slots in use, by loaded model.", labels=["model"]
        )
        for runner in runners:
            if runner.state == "ready":
                slots.add_metric([model_label(runner)], runner.ref_count)
        yield slots
