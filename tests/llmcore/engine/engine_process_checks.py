"""A check that both `ProcessEngine` test modules run, against the fake core and
against a real one: a core killed mid-stream fails everything at once."""

from __future__ import annotations

import os
import signal
import time

import pytest

from llmcore.engine.core_client import ProcessEngine
from llmcore.errors import EngineDeadError
from llmcore.sampling_params import SamplingParams


async def kill_core_mid_stream(
    engine: ProcessEngine, prompts: list[list[int]], params: SamplingParams, within: float
) -> None:
    """Stream each prompt, SIGKILL the core after every stream's first output: each
    stream raises EngineDeadError naming SIGKILL within `within` seconds, health
    fails, a new request is refused, and `aclose` reaps the core."""
    streams = [engine.generate(p, params, f"s{i}") for i, p in enumerate(prompts)]
    for stream in streams:
        await anext(stream)
    await engine.check_health()
    os.kill(engine.process.pid, signal.SIGKILL)
    start = time.monotonic()
    for stream in streams:
        with pytest.raises(EngineDeadError, match="SIGKILL"):
            async for _ in stream:
                pass
    assert time.monotonic() - start < within
    with pytest.raises(EngineDeadError):
        await engine.check_health()
    with pytest.raises(EngineDeadError):
        async for _ in engine.generate(prompts[0], params, "after"):
            pass
    await engine.aclose()
    assert engine.process.returncode == -signal.SIGKILL
