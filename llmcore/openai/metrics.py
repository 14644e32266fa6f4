"""What the service measures: its load (in-flight and queued generation requests,
with the optional queue limit) and its Prometheus metrics.

Invariants: each service has its own `CollectorRegistry` (never the global one), so
two services in a process never mix their numbers; engine gauges (running/waiting
requests, KV-cache usage, prefix-cache hit rate) are read from
`engine.statistics()` at scrape time, never cached. `prometheus_client` is imported
when a service is built, not when llmcore is imported.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from llmcore.errors import OverloadedError
from llmcore.openai.interface import ServedModel

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_E2E_BUCKETS = (
    0.1,
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
)


class LoadTracker:
    """Generation requests in flight (from admission until their last output or
    their close) and queued (admitted, no output yet). `admit` refuses a request
    with OverloadedError when `max_queued` requests are already queued."""

    __slots__ = ("in_flight", "max_queued", "queued", "retry_after")

    def __init__(self, max_queued: int | None = None, retry_after: int = 1) -> None:
        self.max_queued = max_queued
        self.retry_after = retry_after
        self.in_flight = 0
        self.queued = 0

    def admit(self) -> None:
        if self.max_queued is not None and self.queued >= self.max_queued:
            raise OverloadedError(
                f"the server is overloaded: {self.queued} requests are already queued; "
                f"retry after {self.retry_after} s",
                retry_after=self.retry_after,
            )
        self.in_flight += 1
        self.queued += 1

    def started(self) -> None:
        """The request produced its first output: it no longer counts as queued."""
        self.queued -= 1

    def finished(self, started: bool) -> None:
        self.in_flight -= 1
        if not started:
            self.queued -= 1


class ServiceMetrics:
    def __init__(
        self,
        models: Sequence[ServedModel],
        load: LoadTracker,
        registry: CollectorRegistry | None = None,
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llmcore_requests",
            "Requests handled, by route and status",
            ["route", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "llmcore_time_to_first_token_seconds",
            "Time to first output",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "llmcore_inter_token_latency_seconds",
            "Time between outputs",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "llmcore_e2e_request_latency_seconds",
            "Time from admission to the last output",
            ["model"],
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "llmcore_prompt_tokens", "Prompt tokens of admitted requests", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "llmcore_generation_tokens", "Generated tokens", ["model"], registry=r
        )
        r.register(_EngineCollector(list(models), load))

    def count_request(self, route: str, status: int) -> None:
        self.requests.labels(route, str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _EngineCollector:
    """Gauges read from each engine's `statistics()` at scrape time."""

    def __init__(self, models: list[ServedModel], load: LoadTracker) -> None:
        self._models = models
        self._load = load

    def describe(self) -> list[Any]:
        return []  # not known before a scrape; keeps registration from collecting

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        families = {
            "running": GaugeMetricFamily(
                "llmcore_num_requests_running",
                "Requests in the engine's running set",
                labels=["model"],
            ),
            "waiting": GaugeMetricFamily(
                "llmcore_num_requests_waiting", "Requests waiting for the engine", labels=["model"]
            ),
            "kv": GaugeMetricFamily(
                "llmcore_kv_cache_usage_perc",
                "Fraction of KV-cache blocks in use (0-1)",
                labels=["model"],
            ),
            "hits": GaugeMetricFamily(
                "llmcore_prefix_cache_hit_rate",
                "Prompt tokens found in the prefix cache / looked up",
                labels=["model"],
            ),
        }
        for model in self._models:
            try:
                stats = model.engine.statistics()
            except Exception:  # a racing or dead engine: skip its gauges this scrape
                continue
            hit_rate = stats.prefix_cache_hits / max(stats.prefix_cache_queries, 1)
            families["running"].add_metric([model.name], stats.num_running)
            families["waiting"].add_metric([model.name], stats.num_waiting)
            families["kv"].add_metric([model.name], stats.kv_cache_usage)
            families["hits"].add_metric([model.name], hit_rate)
        yield from families.values()
        yield GaugeMetricFamily(
            "llmcore_server_load", "Generation requests in flight", value=self._load.in_flight
        )
