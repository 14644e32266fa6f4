"""`AsyncEngine`: the asyncio front of the local engine (llmcore's `Engine`).

One step-loop task per engine runs `EngineCore.step` in a single worker thread,
so the event loop stays free while the model computes; each request has its own
queue of outputs (`OutputQueues`; `encode` waits for the one output of an encode
request). If the step loop dies, every waiting request gets an
`EngineDeadError`, new ones are refused, and `check_health()` raises.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from llmcore.engine.config import EngineConfig
from llmcore.engine.core import EngineCore, EngineStatistics
from llmcore.engine.output_queues import OutputQueues
from llmcore.engine.protocol import EngineInfo
from llmcore.errors import EngineDeadError
from llmcore.outputs import RequestOutput
from llmcore.pooling import PoolingOutput, PoolingParams
from llmcore.sampling_params import SamplingParams
from llmcore.tokenization.tokenizer import Tokenizer

log = logging.getLogger("llmcore.engine")


class AsyncEngine:
    def __init__(
        self, core: EngineCore, executor: concurrent.futures.ThreadPoolExecutor | None = None
    ) -> None:
        """Wrap a built core. `executor` (one thread) runs its steps; by default the
        process's shared step thread, on which `AsyncEngine.load` also loads models,
        so that all torch work of all engines stays on one thread."""
        self.core = core
        self._shared_thread = executor is None
        self._executor = _STEP_THREAD.acquire() if executor is None else executor
        self._outputs = OutputQueues(self._abort, core.config.stream_interval)
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._dead: EngineDeadError | None = None
        self._closed = False
        self.iteration_tokens = IterationTokens()  # tokens per step, for /metrics
        self._tokenizer_path: str | None = None  # `load`'s tokenizer, if not the model's

    @classmethod
    async def from_pretrained(
        cls, model: str | os.PathLike[str] | None = None, **options: Any
    ) -> AsyncEngine:
        """Load a model (None: the embedded default) on the step thread and wrap it;
        `options` are those of `load`."""
        return await asyncio.to_thread(functools.partial(cls.load, model, **options))

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        tokenizer: str | os.PathLike[str] | None = None,
        dtype: str = "auto",
        device: str = "cpu",
        quantization: str | None = None,
        **engine_options: Any,
    ) -> AsyncEngine:
        """Blocking `from_pretrained`. The model is loaded on the thread that will run
        its steps: torch work split between two threads (load on one, steps on
        another) ran the serving benchmark on ~1.5 of 2 cores instead of 2, and two
        engines stepping on two threads (chat beside embeddings) cost the same."""
        executor = _STEP_THREAD.acquire()
        try:
            core = executor.submit(
                build_core, model, tokenizer=tokenizer, dtype=dtype, device=device,
                quantization=quantization, **engine_options,
            ).result()  # fmt: skip
            engine = cls(core)  # steps on the same shared thread
            engine._tokenizer_path = None if tokenizer is None else str(tokenizer)
            return engine
        finally:
            _STEP_THREAD.release()  # cls() took its own reference

    @property
    def info(self) -> EngineInfo:
        """The served model's path, tokenizer path, task and context, as a
        `ProcessEngine` reports them."""
        core = self.core
        return EngineInfo(
            model_path=str(core.loaded.path),
            tokenizer_path=self._tokenizer_path or str(core.loaded.path),
            task=core.task.value,
            max_model_len=core.max_model_len,
            pid=os.getpid(),
        )

    @property
    def tokenizer(self) -> Tokenizer:
        return self.core.tokenizer

    # ---- the Engine protocol -------------------------------------------------------------

    async def generate(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        request_id: str,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream output deltas of one request; cancelling the iteration aborts it."""
        self._check_alive()
        engine_id = self._outputs.open(request_id)
        make = functools.partial(
            self.core.make_requests,
            prompt_token_ids,
            params,
            engine_id,
            priority=priority,
            cache_salt=cache_salt,
        )
        try:
            # A grammar may take a while to compile (the backend releases the GIL meanwhile).
            requests = await asyncio.to_thread(make) if params.structured_outputs else make()
        except BaseException:
            self._outputs.discard(request_id)
            raise
        self.core.add(requests)
        self._kick()
        async with contextlib.aclosing(self._outputs.stream(request_id)) as outputs:
            async for output in outputs:
                yield output

    async def encode(
        self,
        prompt_token_ids: Sequence[int],
        params: PoolingParams,
        request_id: str,
        *,
        priority: int = 0,
    ) -> PoolingOutput:
        """Pool one input (embed-task models); raises InvalidRequestError (bad
        parameters, too long) at once. Cancelling the call aborts the request."""
        self._check_alive()
        engine_id = self._outputs.open(request_id)
        try:
            request = self.core.make_encode_request(
                prompt_token_ids, params, engine_id, priority=priority
            )
        except BaseException:
            self._outputs.discard(request_id)
            raise
        self.core.add_encode(request)
        self._kick()
        return await self._outputs.result(request_id)

    def abort(self, request_id: str) -> None:
        """Abort a request: its blocks are freed at the next step. Unknown ids are ignored."""
        engine_id = self._outputs.engine_id(request_id)
        if engine_id is not None:
            self._abort(engine_id)

    def _abort(self, engine_id: str) -> None:
        if self._dead is None and not self._closed:
            self.core.abort(engine_id)
            self._kick()

    async def check_health(self) -> None:
        self._check_alive()

    def statistics(self) -> EngineStatistics:
        return self.core.statistics()

    async def reset_prefix_cache(self) -> bool:
        """Forget the prefix cache; False while requests hold KV blocks. It runs on
        the step thread between two steps, like every other change to the core."""
        self._check_alive()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.core.reset_prefix_cache)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except (asyncio.CancelledError, Exception):
                pass
        if self._shared_thread:
            # A step in flight finishes before this returns: the thread runs in order.
            await asyncio.get_running_loop().run_in_executor(self._executor, _nothing)
            _STEP_THREAD.release()
        else:
            self._executor.shutdown(wait=True)
        self.core.structured.close()

    # ---- the step loop -------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise self._dead
        if self._closed:
            raise EngineDeadError("the engine is closed")

    def _kick(self) -> None:
        if self._loop_task is None:
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(
                self._step_loop(), name="llmcore-step-loop"
            )
        assert self._wakeup is not None
        self._wakeup.set()

    async def _step_loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self.core.has_work():
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                outputs = await loop.run_in_executor(self._executor, self.core.step)
                self.iteration_tokens.after_step(self.core.statistics())
                for output in outputs:
                    self._outputs.put(output.request_id, output)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the step loop died: fail everyone, loudly
            self._dead = EngineDeadError(f"the engine's step loop died: {exc!r}")
            self._dead.__cause__ = exc
            self._outputs.fail_all(self._dead)
            log.error("engine step loop died", exc_info=exc)


class IterationTokens:
    """A histogram of the tokens each engine step computed (prompt and generated),
    vLLM's `vllm:iteration_tokens_total`, with vLLM's buckets."""

    BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

    __slots__ = ("_last", "counts", "num_steps", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BUCKETS) + 1)  # per bucket, the last one +Inf
        self.sum = 0
        self.num_steps = 0
        self._last = 0

    def after_step(self, stats: EngineStatistics) -> None:
        total = stats.num_prompt_tokens_computed + stats.num_generated_tokens
        tokens, self._last = total - self._last, total
        if tokens <= 0:
            return
        self.counts[bisect.bisect_left(self.BUCKETS, tokens)] += 1
        self.sum += tokens
        self.num_steps += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound, observations at most that)."""
        out, running = [], 0
        for bound, count in zip([*map(str, self.BUCKETS), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


def _nothing() -> None:
    return None


class _SharedStepThread:
    """One worker thread for the torch work of every engine in the process, made on
    first use and shut down when its last engine closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._users = 0

    def acquire(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self.executor is None:
                self.executor = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="llmcore-step"
                )
            self._users += 1
            return self.executor

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self.executor is not None:
                self.executor.shutdown(wait=False)
                self.executor = None


_STEP_THREAD = _SharedStepThread()


def build_core(
    model: str | os.PathLike[str] | None = None,
    *,
    tokenizer: str | os.PathLike[str] | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    quantization: str | None = None,
    detokenize: bool = True,
    **engine_options: Any,
) -> EngineCore:
    """Load model and tokenizer and build an `EngineCore` (blocking)."""
    from llmcore.model_loader import load_model
    from llmcore.tokenization.tokenizer import load_tokenizer
    from llmcore.weights.gguf_file import shared_parses

    with shared_parses():  # a GGUF is parsed once for both, and its parse let go after
        loaded = load_model(model, dtype=dtype, device=device, quantization=quantization)
        tok = load_tokenizer(tokenizer if tokenizer is not None else loaded.path)
    return EngineCore(loaded, tok, EngineConfig(**engine_options), detokenize=detokenize)
