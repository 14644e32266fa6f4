"""The engine statistics line (vLLM's LoggingStatLogger), the request log cut to
--max-log-len, and the tokens-per-step histogram."""

from __future__ import annotations

import logging
from dataclasses import replace
from types import SimpleNamespace

import pytest

from llmcore.engine.async_engine import IterationTokens
from llmcore.engine.core import EngineStatistics
from llmcore.openai.request_log import RequestLogger
from llmcore.openai.stats_log import StatsLogger
from llmcore.sampling_params import SamplingParams

IDLE = EngineStatistics(0, 0, 100, 100, 0.0, 0, 0, 0, 0, 0, 0)


def test_busy_engines_log_at_info_and_idle_ones_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = SimpleNamespace(stats=IDLE)
    engine.statistics = lambda: engine.stats
    model = SimpleNamespace(name="m", task="generate", engine=engine)
    logger = StatsLogger([model], now=0.0)  # type: ignore[list-item]
    with caplog.at_level(logging.DEBUG, logger="llmcore.engine"):
        engine.stats = replace(IDLE, num_running=2, kv_cache_usage=0.25,
                               num_prompt_tokens_computed=100, num_generated_tokens=50,
                               prefix_cache_queries=100, prefix_cache_hits=40)  # fmt: skip
        logger.tick(10.0)
        logger.tick(20.0)  # idle now, busy before: still info
        logger.tick(30.0)  # idle twice: debug
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.INFO, logging.INFO, logging.DEBUG]
    first = caplog.records[0].getMessage()
    assert "Avg prompt throughput: 10.0 tokens/s" in first
    assert "Avg generation throughput: 5.0 tokens/s" in first
    assert "Running: 2 reqs" in first and "KV cache usage: 25.0%" in first
    assert "Prefix cache hit rate: 40.0%" in first


def test_request_log_cuts_prompts_and_ids(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="llmcore.requests"):
        RequestLogger(5).log_request("r1", "abcdefghij", list(range(10)), SamplingParams())
    message = caplog.records[0].getMessage()
    assert "Received request r1: prompt: 'abcde'" in message
    assert "prompt_token_ids: [0, 1, 2, 3, 4]" in message


def test_iteration_tokens_histogram() -> None:
    steps = IterationTokens()
    for prompt, generated in ((0, 0), (20, 1), (20, 5), (3000, 6)):
        steps.after_step(replace(IDLE, num_prompt_tokens_computed=prompt,
                                 num_generated_tokens=generated))  # fmt: skip
    assert steps.num_steps == 3 and steps.sum == 3006  # 21 + 4 + 2981
    buckets = dict(steps.cumulative())
    assert (buckets["1"], buckets["8"], buckets["32"], buckets["4096"]) == (0, 1, 2, 3)
    assert buckets["+Inf"] == 3
