"""The engines' statistics in the log, as vLLM's LoggingStatLogger writes them: every
`interval` seconds, per served model, the prompt and generation throughput since the
last line, the running and waiting requests, the KV-cache usage and the prefix-cache
hit rate. `llmcore serve` runs it unless `--disable-log-stats`.

Invariant: an idle engine (no tokens in this interval nor the one before) logs at
DEBUG, so an idle server's log stays quiet; a busy one logs at INFO.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from llmcore.openai.interface import ServedModel

log = logging.getLogger("llmcore.engine")
INTERVAL = 10.0  # seconds, as vLLM's VLLM_LOG_STATS_INTERVAL


@dataclass(slots=True)
class _Last:
    time: float
    prompt_tokens: int = 0
    generation_tokens: int = 0
    busy: bool = False


class StatsLogger:
    """One log line per engine and `tick()`; the throughputs are over the time since
    the previous tick."""

    def __init__(self, models: Sequence[ServedModel], now: float | None = None) -> None:
        self.models = [m for m in models if m.task == "generate"]
        start = time.monotonic() if now is None else now
        self._last = {m.name: _Last(start) for m in self.models}

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for index, model in enumerate(self.models):
            try:
                stats = model.engine.statistics()
            except Exception:  # a dead engine: /health says so
                continue
            last = self._last[model.name]
            elapsed = max(now - last.time, 1e-9)
            prompt = (stats.num_prompt_tokens_computed - last.prompt_tokens) / elapsed
            generation = (stats.num_generated_tokens - last.generation_tokens) / elapsed
            busy = bool(prompt or generation)
            level = logging.INFO if busy or last.busy else logging.DEBUG
            hit_rate = stats.prefix_cache_hits / max(stats.prefix_cache_queries, 1)
            log.log(
                level,
                "Engine %03d (%s): Avg prompt throughput: %.1f tokens/s, Avg generation "
                "throughput: %.1f tokens/s, Running: %d reqs, Waiting: %d reqs, KV cache "
                "usage: %.1f%%, Prefix cache hit rate: %.1f%%",
                index,
                model.name,
                prompt,
                generation,
                stats.num_running,
                stats.num_waiting,
                stats.kv_cache_usage * 100,
                hit_rate * 100,
            )
            self._last[model.name] = _Last(
                now, stats.num_prompt_tokens_computed, stats.num_generated_tokens, busy
            )


async def log_engine_statistics(models: Sequence[ServedModel], interval: float = INTERVAL) -> None:
    """Log the engines' statistics every `interval` seconds until cancelled."""
    logger = StatsLogger(models)
    while True:
        await asyncio.sleep(interval)
        logger.tick()
