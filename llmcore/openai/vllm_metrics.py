"""vLLM's Prometheus metrics (`vllm:*`), beside llmcore's own (`llmcore_*`), so that
a vLLM Grafana dashboard works unchanged: the same names, types, labels
(`model_name`, and `engine` where vLLM has it: "0", one engine per model) and buckets
as vLLM's `PrometheusStatLogger` (vllm/v1/metrics/loggers.py).

Per-request numbers (tokens, latencies, finish reasons) are observed where
llmcore's are, in `MeteredAdmission`; engine numbers (running, waiting, KV-cache
usage, prefix-cache queries and hits, preemptions, tokens per step) are read from
each engine at scrape time.

llmcore sees a request's outputs, not the engine's scheduling, so the phases are
measured from outputs: queue time and prefill time are the time to the first output
(queueing and prefill together), decode and inference time the rest of the request.
Invariant: every histogram a request feeds gets one observation per finished
generation (per prompt of the request), in the same call.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llmcore.openai.interface import ServedModel

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

LABELS = ["model_name", "engine"]
ENGINE = "0"  # vLLM's engine index: one engine per served model here
FINISH_REASONS = ("stop", "length", "abort", "error")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                           40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0,
                           7680.0)  # fmt: skip
N_BUCKETS = (1, 2, 5, 10, 20)


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to `max_value` (vLLM's token-count buckets)."""
    buckets: list[int] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_value:
                return buckets
            buckets.append(mantissa * scale)
        scale *= 10


class VLLMRequestMetrics:
    """The per-request `vllm:*` metrics of one served model (its labelled children)."""

    def __init__(self, family: VLLMMetrics, model_name: str) -> None:
        labels = (model_name, ENGINE)
        self.prompt_tokens = family.prompt_tokens.labels(*labels)
        self.generation_tokens = family.generation_tokens.labels(*labels)
        self.ttft = family.ttft.labels(*labels)
        self.itl = family.itl.labels(*labels)
        self.tpot = family.tpot.labels(*labels)
        self.request_tpot = family.request_tpot.labels(*labels)
        self.e2e = family.e2e.labels(*labels)
        self.queue = family.queue.labels(*labels)
        self.inference = family.inference.labels(*labels)
        self.prefill = family.prefill.labels(*labels)
        self.decode = family.decode.labels(*labels)
        self.request_prompt_tokens = family.request_prompt_tokens.labels(*labels)
        self.request_generation_tokens = family.request_generation_tokens.labels(*labels)
        self.max_generation_tokens = family.max_generation_tokens.labels(*labels)
        self.params_n = family.params_n.labels(*labels)
        self.params_max_tokens = family.params_max_tokens.labels(*labels)
        self.success = {
            reason: family.success.labels(model_name, ENGINE, reason) for reason in FINISH_REASONS
        }

    def finished(
        self,
        *,
        reason: str,
        prompt_tokens: int,
        generation_tokens: int,
        ttft: float | None,
        e2e: float,
    ) -> None:
        """One finished generation (one prompt's completions). `ttft` None: no output."""
        self.success[reason if reason in self.success else "error"].inc()
        self.e2e.observe(e2e)
        first = e2e if ttft is None else ttft
        self.queue.observe(first)
        self.prefill.observe(first)
        self.decode.observe(e2e - first)
        self.inference.observe(e2e - first)
        self.request_prompt_tokens.observe(prompt_tokens)
        self.request_generation_tokens.observe(generation_tokens)
        if generation_tokens > 1:
            self.request_tpot.observe((e2e - first) / (generation_tokens - 1))


class VLLMMetrics:
    def __init__(
        self,
        models: Sequence[ServedModel],
        registry: CollectorRegistry,
        engine_info: Mapping[str, str] | None = None,
    ) -> None:
        from prometheus_client import Counter, Histogram

        r = registry
        max_len = max((m.max_model_len for m in models), default=1)
        tokens = build_1_2_5_buckets(max_len)

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=r)

        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", LABELS, registry=r
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", LABELS, registry=r
        )
        self.success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*LABELS, "finished_reason"],
            registry=r,
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        )
        self.tpot = histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds. DEPRECATED: use "
            "vllm:inter_token_latency_seconds instead.",
            ITL_BUCKETS,
        )
        self.request_tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.queue = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request (here: until the first output).",
            REQUEST_LATENCY_BUCKETS,
        )
        self.inference = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request (here: after the first output).",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request (here: until the first output).",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", tokens
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", tokens
        )
        self.max_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            tokens,
        )
        self.params_n = histogram(
            "vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS
        )
        self.params_max_tokens = histogram(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            tokens,
        )
        self._per_model = {m.name: VLLMRequestMetrics(self, m.name) for m in models}
        r.register(_VLLMEngineCollector(list(models), dict(engine_info or {})))

    def of(self, model_name: str) -> VLLMRequestMetrics:
        metrics = self._per_model.get(model_name)
        if metrics is None:
            metrics = self._per_model[model_name] = VLLMRequestMetrics(self, model_name)
        return metrics


class _VLLMEngineCollector:
    """vLLM's engine metrics, read from each engine's `statistics()` at scrape time."""

    def __init__(self, models: list[ServedModel], engine_info: dict[str, str]) -> None:
        self._models = models
        self._info = engine_info

    def describe(self) -> list[Any]:
        return []  # not known before a scrape; keeps registration from collecting

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        # (family, name, help, the EngineStatistics field it shows)
        spec = [
            (gauge, "num_requests_running", "Number of requests in model execution batches.",
             "num_running"),
            (gauge, "num_requests_waiting", "Number of requests waiting to be processed.",
             "num_waiting"),
            (gauge, "kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
             "kv_cache_usage"),
            (counter, "prefix_cache_queries",
             "Prefix cache queries, in terms of number of queried tokens.",
             "prefix_cache_queries"),
            (counter, "prefix_cache_hits", "Prefix cache hits, in terms of number of cached "
             "tokens.", "prefix_cache_hits"),
            (counter, "num_preemptions", "Cumulative number of preemption from the engine.",
             "num_preemptions"),
        ]  # fmt: skip
        families = [
            (cls("vllm:" + name, doc, labels=LABELS), field) for cls, name, doc, field in spec
        ]
        iteration = HistogramMetricFamily(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
            labels=LABELS,
        )  # fmt: skip
        for model in self._models:
            labels = [model.name, ENGINE]
            try:
                stats = model.engine.statistics()
            except Exception:  # a racing or dead engine: skip it this scrape
                continue
            for family, field in families:
                family.add_metric(labels, getattr(stats, field))
            steps = getattr(model.engine, "iteration_tokens", None)
            if steps is not None:
                iteration.add_metric(labels, steps.cumulative(), float(steps.sum))
        yield from (family for family, _ in families)
        yield iteration
        if self._info:
            info = GaugeMetricFamily(
                "vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                labels=[*self._info, "engine"],
            )  # fmt: skip
            info.add_metric([*self._info.values(), ENGINE], 1.0)
            yield info
