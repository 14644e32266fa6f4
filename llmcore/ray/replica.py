"""`EngineReplica`: one llmcore engine in a Ray worker process, the body of a Ray
actor (`replica_actor_class()` makes it one; `RayEngine` owns the handles).

The replica loads its model in its constructor (an `AsyncEngine` with its own
step thread, on the CPUs or GPUs Ray gave the worker) and serves it through async
methods that trade msgspec msgpack bytes, the engine-core process's wire messages
(llmcore/engine/ipc.py), so nothing of ours is pickled:

- `generate` is a streaming generator: one `WireOutput` per output delta, or one
  `Rejected` (the request's error, before any output). Ray cancelling the
  generator (the caller left) aborts the request through the engine's own stream.
- `watch` pushes the engine's statistics (a change, or every `heartbeat_s`): the
  router's load counts and the statistics `RayEngine` aggregates come from it, so
  routing never asks a replica anything.

Invariants: a request's error crosses as data (its llmcore class rebuilt on the
other side), never as a Ray task failure, so a Ray error on the caller's side
always means the replica (or Ray) is gone; a request's prompt logprobs cross once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import msgspec

from llmcore.engine import ipc
from llmcore.engine.async_engine import AsyncEngine
from llmcore.engine.core import EngineStatistics
from llmcore.engine.protocol import EngineInfo
from llmcore.outputs import RequestOutput
from llmcore.pooling import PoolingParams
from llmcore.sampling_params import SamplingParams

log = logging.getLogger("llmcore.ray")

_ENCODER = msgspec.msgpack.Encoder()
_SAMPLING = msgspec.msgpack.Decoder(SamplingParams)
_POOLING = msgspec.msgpack.Decoder(PoolingParams)


class ReplicaReady(msgspec.Struct, tag=True, array_like=True):
    info: EngineInfo
    statistics: EngineStatistics
    index: int
    node_id: str  # the Ray node the replica runs on
    pid: int


class EngineReplica:
    def __init__(
        self, index: int, model: str | None, load_options: dict[str, Any], log_level: int
    ) -> None:
        """Load the model (`load_options`: `AsyncEngine.load`'s keywords)."""
        logging.getLogger("llmcore").setLevel(log_level)
        threads = load_options.pop("num_threads", None)
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        self.index = index
        self._prompt_logprobs = ipc.PromptLogprobsSent()
        self._failed: ipc.WireError | None = None
        try:
            self.engine = AsyncEngine.load(model, **load_options)
        except Exception as exc:  # answered by `ready` (a restart would fail the same)
            log.error("engine replica %d failed to load its model: %r", index, exc)
            self._failed = ipc.wire_error(exc)

    async def ready(self) -> bytes:
        """What the front end needs of this replica, or `StartFailed` (its load
        error)."""
        import ray

        if self._failed is not None:
            return _ENCODER.encode(ipc.StartFailed(self._failed))
        node_id = ray.get_runtime_context().get_node_id()
        ready = ReplicaReady(
            self.engine.info, self.engine.statistics(), self.index, node_id, os.getpid()
        )
        return _ENCODER.encode(ready)

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: bytes,
        priority: int,
        cache_salt: str | None,
    ) -> AsyncIterator[bytes]:
        """The request's output deltas as `WireOutput` bytes, or one `Rejected`."""
        try:
            sampling = _SAMPLING.decode(params)
            stream = cast(
                AsyncGenerator[RequestOutput, None],
                self.engine.generate(
                    prompt_token_ids, sampling, request_id, priority=priority, cache_salt=cache_salt
                ),
            )
            async with contextlib.aclosing(stream) as outputs:
                async for out in outputs:
                    yield _ENCODER.encode(self._prompt_logprobs.wire_output(out))
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # the request's own error: it crosses as data
            yield _ENCODER.encode(ipc.Rejected(request_id, ipc.wire_error(exc)))
        finally:
            self._prompt_logprobs.forget(request_id)

    async def encode(
        self, request_id: str, prompt_token_ids: list[int], params: bytes, priority: int
    ) -> bytes:
        """The pooled vector as `WirePooling` bytes, or `Rejected`."""
        try:
            pooling = _POOLING.decode(params)
            out = await self.engine.encode(prompt_token_ids, pooling, request_id, priority=priority)
            return _ENCODER.encode(ipc.wire_pooling(out))
        except Exception as exc:
            return _ENCODER.encode(ipc.Rejected(request_id, ipc.wire_error(exc)))

    def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def reset_prefix_cache(self) -> bool:
        return await self.engine.reset_prefix_cache()

    async def watch(self, interval_s: float, heartbeat_s: float) -> AsyncIterator[bytes]:
        """The engine's statistics whenever its load changes (looked at every
        `interval_s`), and at least every `heartbeat_s`."""
        loop = asyncio.get_running_loop()
        last: tuple[int, int, int] | None = None
        sent_at = 0.0
        while True:
            stats = self.engine.statistics()
            key = (stats.num_running, stats.num_waiting, stats.num_steps)
            now = loop.time()
            if key != last or now - sent_at >= heartbeat_s:
                last, sent_at = key, now
                yield _ENCODER.encode(stats)
            await asyncio.sleep(interval_s)

    async def shutdown(self) -> None:
        await self.engine.aclose()


def replica_actor_class(max_restarts: int) -> Any:
    """`EngineReplica` as a Ray actor class: restarted by Ray when its process
    dies (in-flight calls fail, none is retried: a stream cannot resume)."""
    import ray

    return ray.remote(max_restarts=max_restarts, max_task_retries=0)(EngineReplica)
