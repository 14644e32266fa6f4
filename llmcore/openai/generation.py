"""One API request's generation on the engine: its prompts (several for a completions
request with a list of prompts), their outputs merged into one stream tagged with
the prompt's index, admission against the queue limit and metrics
(`MeteredAdmission`); and the accumulation of outputs into whole choices.

Invariants: every engine iterator opened here is closed on every path (finished,
failed, cancelled or closed early), so the engine aborts what nobody reads; a
request counts as in flight from admission until its outputs are closed, and as
queued until its first output.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

from llmcore.openai.interface import ServedModel
from llmcore.openai.metrics import LoadTracker, ServiceMetrics
from llmcore.openai.protocol import PromptTokensDetails, UsageInfo
from llmcore.openai.request_log import RequestLogger
from llmcore.openai.vllm_metrics import VLLMMetrics
from llmcore.outputs import CompletionOutput, Logprob, RequestOutput
from llmcore.sampling_params import SamplingParams

IndexedOutput = tuple[int, RequestOutput]  # (prompt index, engine output delta)


class Observer(Protocol):
    """A histogram (prometheus_client's, or a labelled child of one)."""

    def observe(self, amount: float) -> None: ...


@dataclass(slots=True)
class Prompt:
    token_ids: list[int]
    text: str | None = None  # the prompt's text, where the request gave or rendered one


@dataclass(slots=True)
class Generation:
    """Everything one API request asks of the engine."""

    model: ServedModel
    prompts: list[Prompt]
    params: SamplingParams
    request_id: str
    priority: int = 0
    cache_salt: str | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p.token_ids) for p in self.prompts)

    def choice_index(self, prompt_index: int, output_index: int) -> int:
        return prompt_index * self.params.n + output_index


def public_finish_reason(reason: str | None) -> str | None:
    """ "stop" and "length" as they are; an aborted completion has no finish reason."""
    return None if reason == "abort" else reason


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> UsageInfo:
    """Usage; `prompt_tokens_details` only for a prefix-cache hit (as vLLM reports it)."""
    out = UsageInfo(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)
    if cached_tokens:
        out.prompt_tokens_details = PromptTokensDetails(cached_tokens)
    return out


async def _closing(iterator: AsyncIterator[RequestOutput]) -> AsyncGenerator[RequestOutput, None]:
    """`iterator` as an async generator (closable), closing it if it can be closed."""
    try:
        async for item in iterator:
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def _engine_stream(gen: Generation, index: int) -> AsyncGenerator[RequestOutput, None]:
    request_id = gen.request_id if len(gen.prompts) == 1 else f"{gen.request_id}-{index}"
    stream = gen.model.engine.generate(
        gen.prompts[index].token_ids,
        gen.params,
        request_id,
        priority=gen.priority,
        cache_salt=gen.cache_salt,
    )
    return _closing(stream)


async def engine_outputs(gen: Generation) -> AsyncGenerator[IndexedOutput, None]:
    """The outputs of all of `gen`'s prompts, in the order they arrive."""
    if len(gen.prompts) == 1:
        async with aclosing(_engine_stream(gen, 0)) as outputs:
            async for out in outputs:
                yield 0, out
        return
    queue: asyncio.Queue[IndexedOutput | BaseException | None] = asyncio.Queue()

    async def pump(index: int) -> None:
        try:
            async with aclosing(_engine_stream(gen, index)) as outputs:
                async for out in outputs:
                    queue.put_nowait((index, out))
        except Exception as exc:
            queue.put_nowait(exc)
        queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(i)) for i in range(len(gen.prompts))]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def observe_per_token(histogram: Observer, gap: float, new_tokens: int) -> None:
    """An inter-token time per token: a delta of k > 1 tokens (a stream that fell
    behind gets them merged) spreads its gap over them, as k observations (one
    bucket and sum update for all k, on prometheus_client's Histogram)."""
    if new_tokens <= 1:
        histogram.observe(gap)
        return
    value = gap / new_tokens
    if not _observe_times(histogram, value, new_tokens):
        for _ in range(new_tokens):
            histogram.observe(value)


def _observe_times(histogram: object, value: float, times: int) -> bool:
    """`times` observations of `value` as `Histogram.observe` makes them, at the cost
    of one (its sum, and the first bucket that holds the value: counts are
    cumulated at exposition); False for anything but a labelled child of
    prometheus_client's Histogram as this version lays it out (the caller loops)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        return False
    for i, bound in enumerate(bounds):
        if value <= bound:
            buckets[i].inc(times)
            break
    total.inc(value * times)
    return True


class MeteredAdmission:
    """Admits generations against the queue limit (`LoadTracker.admit`), logs them
    (`request_log`, when requests are logged) and records their metrics (prompt and
    generation tokens, TTFT, inter-token and end-to-end times, llmcore's and vLLM's)
    while their outputs pass through."""

    def __init__(
        self,
        load: LoadTracker,
        metrics: ServiceMetrics,
        vllm: VLLMMetrics | None = None,
        request_log: RequestLogger | None = None,
    ) -> None:
        self.load = load
        self.metrics = metrics
        self.vllm = vllm
        self.request_log = request_log

    async def outputs(self, gen: Generation) -> AsyncGenerator[IndexedOutput, None]:
        """`engine_outputs(gen)`, admitted and measured. Raises OverloadedError (before
        any output) when the queue is full."""
        self.load.admit()
        name = gen.model.name
        if self.request_log is not None:
            for i, prompt in enumerate(gen.prompts):
                rid = gen.request_id if len(gen.prompts) == 1 else f"{gen.request_id}-{i}"
                self.request_log.log_request(rid, prompt.text, prompt.token_ids, gen.params)
        self.metrics.prompt_tokens.labels(name).inc(gen.num_prompt_tokens)
        # The labelled children, looked up once per generation rather than per token.
        itl = self.metrics.itl.labels(name)
        generation_tokens = self.metrics.generation_tokens.labels(name)
        vllm = _VLLMRequest(self.vllm, gen) if self.vllm is not None else None
        start = last = time.monotonic()
        started = False
        try:
            async with aclosing(engine_outputs(gen)) as outputs:
                async for item in outputs:
                    now = time.monotonic()
                    new_tokens = sum(len(c.token_ids) for c in item[1].outputs)
                    if not started:
                        started = True
                        self.load.started()
                        self.metrics.ttft.labels(name).observe(now - start)
                    else:
                        observe_per_token(itl, now - last, new_tokens)
                    generation_tokens.inc(new_tokens)
                    if vllm is not None:
                        vllm.output(item, now - start, now - last, new_tokens)
                    last = now
                    yield item
        finally:
            self.load.finished(started)
            self.metrics.e2e.labels(name).observe(time.monotonic() - start)
            if vllm is not None:
                vllm.close(time.monotonic() - start)


class _VLLMRequest:
    """One generation's `vllm:*` metrics: per prompt, its first output; per
    completion, its tokens and finish reason."""

    __slots__ = ("first", "gen", "m", "tokens")

    def __init__(self, metrics: VLLMMetrics, gen: Generation) -> None:
        self.gen = gen
        self.m = m = metrics.of(gen.model.name)
        self.first: dict[int, float] = {}  # prompt index -> seconds to its first output
        self.tokens: dict[tuple[int, int], int] = {}  # (prompt, completion) -> tokens so far
        m.prompt_tokens.inc(gen.num_prompt_tokens)
        m.params_n.observe(gen.params.n)
        for prompt in gen.prompts:
            room = gen.model.max_model_len - len(prompt.token_ids)
            max_tokens = gen.params.max_tokens
            m.max_generation_tokens.observe(room if max_tokens is None else min(max_tokens, room))
            if max_tokens is not None:
                m.params_max_tokens.observe(max_tokens)

    def output(self, item: IndexedOutput, elapsed: float, gap: float, new_tokens: int) -> None:
        index, out = item
        m = self.m
        m.generation_tokens.inc(new_tokens)
        if index not in self.first:
            self.first[index] = elapsed
            m.ttft.observe(elapsed)
        elif new_tokens:
            observe_per_token(m.itl, gap, new_tokens)
            observe_per_token(m.tpot, gap, new_tokens)
        for c in out.outputs:
            key = (index, c.index)
            self.tokens[key] = self.tokens.get(key, 0) + len(c.token_ids)
            if c.finish_reason is not None:
                self._finished(index, self.tokens.pop(key), c.finish_reason, elapsed)
                self.tokens[key] = -1  # finished: not counted again on close

    def close(self, elapsed: float) -> None:
        """Completions that never finished (the client left, an error) count as aborted."""
        for (index, _), count in self.tokens.items():
            if count >= 0 and index in self.first:
                self._finished(index, count, "abort", elapsed)

    def _finished(self, index: int, tokens: int, reason: str, elapsed: float) -> None:
        self.m.finished(
            reason=reason,
            prompt_tokens=len(self.gen.prompts[index].token_ids),
            generation_tokens=tokens,
            ttft=self.first.get(index),
            e2e=elapsed,
        )


@dataclass(slots=True)
class Choice:
    """One whole completion, accumulated from its deltas."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Logprob | None] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    def add(self, delta: CompletionOutput) -> None:
        self.text += delta.text
        self.token_ids.extend(delta.token_ids)
        if delta.logprobs is not None:
            self.logprobs.extend(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason = public_finish_reason(delta.finish_reason)
            self.stop_reason = delta.stop_reason


@dataclass(slots=True)
class Collected:
    choices: list[Choice]  # by choice index (prompt index * n + output index)
    prompt_logprobs: list[Sequence[Logprob | None] | None]  # by prompt index
    cached_tokens: list[int]  # by prompt index: prompt tokens found in the prefix cache

    @property
    def num_completion_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.choices)


async def collect(gen: Generation, outputs: AsyncGenerator[IndexedOutput, None]) -> Collected:
    """Run `outputs` to the end (closing it on every path) and accumulate the choices."""
    num_prompts = len(gen.prompts)
    choices = [Choice() for _ in range(num_prompts * gen.params.n)]
    result = Collected(choices, [None] * num_prompts, [0] * num_prompts)
    async with aclosing(outputs) as items:
        async for prompt_index, out in items:
            result.cached_tokens[prompt_index] = out.num_cached_tokens
            if out.prompt_logprobs is not None:
                result.prompt_logprobs[prompt_index] = out.prompt_logprobs
            for delta in out.outputs:
                result.choices[gen.choice_index(prompt_index, delta.index)].add(delta)
    return result
