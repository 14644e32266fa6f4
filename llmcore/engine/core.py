"""`EngineCore`: the synchronous heart of the engine, one `step()` at a time.

A step drains the inbox (requests added or aborted from other threads), asks the
scheduler for the running set, runs one forward pass over it, samples a token for
every request whose known tokens are now all computed, appends it, and finishes
the requests that stop (stop tokens, EOS unless `ignore_eos`, `min_tokens`,
`max_tokens`, the context, and the stop strings the output processor reports),
all in that step; the output processor then builds one `RequestOutput` delta per
request group that progressed. With overlapped steps (on for CUDA) a step's tokens
are taken at the start of the next `step()`, before its inbox and scheduling, and
its deltas built after the next launch, while the GPU runs it. With async
scheduling (on for CUDA) they are taken only after the next launch: that step is
scheduled with their tokens pending (`Request.num_pending`) and reads them on the
device, unless a request needs its last token on the host (`_can_run_ahead`). Encode requests
scheduled in the same step run as one more forward pass of their own
(`PoolingRunner`) and finish in that step.

Around it: the `InputProcessor` validates requests on the caller's thread before
they are queued; the `OutputProcessor` owns everything the caller sees
(detokenizing and stop strings, unless the caller does them: the engine-core
process; logprob shaping, output deltas). Invariant:
everything here runs on one thread (the engine's worker); other threads only
build requests and touch the inbox, whose appends and pops are atomic.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from llmcore.engine.config import EngineConfig
from llmcore.engine.inbox import Abort, AddEncode, AddRequests, Inbox
from llmcore.engine.input_processor import InputProcessor
from llmcore.engine.kv_cache_manager import KVCacheManager, KVGroupStatistics
from llmcore.engine.logits_processors import reads_output
from llmcore.engine.output_processor import OutputProcessor, PromptLogprobsChunk
from llmcore.engine.pooling_runner import PoolingRunner
from llmcore.engine.request import EncodeRequest, FinishReason, Request, RequestStatus
from llmcore.engine.sampler import PendingSample, Sampler, SamplerOutput, SamplingRow
from llmcore.engine.scheduler import ScheduledRequest, Scheduler
from llmcore.engine.sizing import kv_cache_dtype, size_engine, step_token_budget
from llmcore.engine.task import Task, resolve_task
from llmcore.model_loader import LoadedModel
from llmcore.model_runner import ModelRunner, PreviousTokens, SequenceChunk
from llmcore.outputs import RequestOutput
from llmcore.pooling import PoolingOutput, PoolingParams
from llmcore.sampling_params import SamplingParams
from llmcore.tokenization.tokenizer import Tokenizer

log = logging.getLogger("llmcore.engine")


@dataclass(slots=True)
class _InFlight:
    """A launched step whose sampled tokens are not yet appended."""

    group_ids: list[str]  # of every request it ran
    sampling: list[Request]  # those it samples a token for, in row order
    sampled: PendingSample | None  # None: it samples nothing (a prefill chunk)
    prompt_logprobs: list[PromptLogprobsChunk]  # of its chunks that score prompt tokens


@dataclass(slots=True)
class EngineStatistics:
    num_running: int
    num_waiting: int
    num_kv_blocks: int
    num_kv_blocks_free: int
    kv_cache_usage: float
    prefix_cache_queries: int  # prompt tokens looked up
    prefix_cache_hits: int  # prompt tokens found cached
    num_prompt_tokens_computed: int  # tokens run through the model as prefill
    num_generated_tokens: int
    num_preemptions: int
    num_steps: int
    # per KV cache group (sliding-window models have several): window, blocks, used
    kv_groups: tuple[KVGroupStatistics, ...] = ()


class EngineCore:
    def __init__(
        self,
        loaded: LoadedModel,
        tokenizer: Tokenizer,
        config: EngineConfig,
        *,
        detokenize: bool = True,
    ) -> None:
        """`detokenize=False`: outputs carry token ids only, and stop strings are
        left to the caller (see `OutputProcessor`)."""
        self.loaded, self.tokenizer, self.config = loaded, tokenizer, config
        self.task = resolve_task(loaded, config.task)
        sizing = size_engine(loaded, config, self.task)
        if sizing.capped_by_step_budget:
            log.warning(
                "max_model_len capped to %d tokens: without chunked prefill a prompt must "
                "fit one step (max_num_batched_tokens)",
                sizing.max_model_len,
            )
        elif sizing.capped_by_kv_cache:
            capacity = sizing.kv_capacity
            log.warning("max_model_len capped to %d tokens by the KV cache size", capacity)
        self.max_model_len = sizing.max_model_len
        self.pooling_config = sizing.pooling_config
        graphs = (
            loaded.device.type == "cuda" and not config.enforce_eager and self.task is Task.GENERATE
        )
        self.runner = ModelRunner(
            loaded,
            sizing.blocks,
            config.block_size,
            kv_cache_dtype(loaded, config),
            scratch_block=graphs,
        )
        if graphs:
            from llmcore.decode_graphs import cuda_backend

            self.runner.enable_decode_graphs(
                config.max_num_seqs, sizing.max_model_len, cuda_backend()
            )
        self.kv_cache = KVCacheManager(
            sizing.blocks,
            config.block_size,
            config.enable_prefix_caching,
            windows=sizing.group_windows,
        )
        self._grouped = len(sizing.group_windows) > 1
        self.scheduler = Scheduler(
            self.kv_cache,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=step_token_budget(config),
            enable_chunked_prefill=config.enable_chunked_prefill,
        )
        self.sampler = Sampler(loaded.config.vocab_size, seed=config.seed)
        self.pooler = (
            PoolingRunner(loaded, self.runner, self.pooling_config)
            if self.pooling_config is not None
            else None
        )
        self.input_processor = InputProcessor(
            tokenizer,
            loaded.config,
            task=self.task,
            max_model_len=self.max_model_len,
            max_logprobs=config.max_logprobs,
            pooling_config=self.pooling_config,
        )
        self.output_processor = OutputProcessor(tokenizer, detokenize=detokenize)
        self.eos_token_ids = self.input_processor.eos_token_ids
        self.structured = self.input_processor.structured
        self._inbox = Inbox()
        # Overlapped steps: a step's deltas are built after the next step's launch,
        # while the GPU runs it (on the CPU the launch runs the model, so no gain).
        overlap = config.overlap_steps
        self.overlap_steps = loaded.device.type == "cuda" if overlap is None else overlap
        # Async scheduling: the next step is scheduled and launched before the last
        # one's tokens are known (its inputs read from them on the device), so the
        # host's work runs while the GPU does; it implies overlapped steps.
        ahead = config.async_scheduling
        self.async_scheduling = loaded.device.type == "cuda" if ahead is None else ahead
        self.overlap_steps = self.overlap_steps or self.async_scheduling
        self._num_scheduled_ahead = 0
        self._in_flight: _InFlight | None = None
        self._num_prompt_tokens = 0
        self._num_generated = 0
        self._num_steps = 0

    # ---- requests (callable from any thread) ---------------------------------------------

    def make_requests(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        request_id: str,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> list[Request]:
        """Validate and build the engine requests for one caller request (n of them)."""
        return self.input_processor.process(
            prompt_token_ids, params, request_id, priority=priority, cache_salt=cache_salt
        )

    def add(self, requests: list[Request]) -> None:
        """Queue requests (from `make_requests`) for the next step."""
        self._inbox.put(AddRequests(requests))

    def make_encode_request(
        self,
        prompt_token_ids: Sequence[int],
        params: PoolingParams,
        request_id: str,
        *,
        priority: int = 0,
    ) -> EncodeRequest:
        """Validate and build the encode request of one input."""
        return self.input_processor.process_encode(
            prompt_token_ids, params, request_id, priority=priority
        )

    def add_encode(self, request: EncodeRequest) -> None:
        """Queue an encode request (from `make_encode_request`) for the next step."""
        self._inbox.put(AddEncode(request))

    def abort(self, request_id: str, index: int | None = None) -> None:
        """Queue the abort of a caller request (all its completions, or only its
        completion `index`) or encode request."""
        self._inbox.put(Abort(request_id, index))

    # ---- the step (the engine thread only) -----------------------------------------------

    def has_work(self) -> bool:
        return bool(self._inbox) or self.scheduler.has_unfinished() or self._in_flight is not None

    def step(self) -> list[RequestOutput | PoolingOutput]:
        """One step: take the tokens of the step in flight, if any (overlapped steps),
        unless the next is scheduled ahead of them (async scheduling); drain the
        inbox, schedule, launch the model and sampling; take the tokens of the step
        in flight before it, or of this one (neither overlapped nor async), and
        build the output deltas of the step whose tokens were taken."""
        outputs: list[RequestOutput | PoolingOutput] = []
        previous = self._in_flight
        ran: list[str] = []
        if previous is not None and not (self.async_scheduling and _can_run_ahead(previous)):
            ran, previous = self._finish(previous), None
        self._in_flight = None
        outputs.extend(self._drain_inbox())
        plan = self.scheduler.schedule()
        launched: _InFlight | None = None
        if plan.scheduled:
            self._num_steps += 1
            launched = self._launch(plan.scheduled, previous)
        if previous is not None:  # scheduled ahead of: its tokens come now
            self._num_scheduled_ahead += launched is not None
            ran = self._finish(previous)
        if launched is not None and not self.overlap_steps:
            ran = self._finish(launched)
        else:
            self._in_flight = launched
        # Overlapped, these are the previous step's deltas, built while the GPU runs
        # this one (the launch returned without waiting for it).
        outputs.extend(self.output_processor.outputs(ran))
        if plan.encode:
            assert self.pooler is not None
            if not plan.scheduled:
                self._num_steps += 1
            self._num_prompt_tokens += sum(r.num_tokens for r in plan.encode)
            outputs.extend(self.pooler.run(plan.encode))
        return outputs

    def _drain_inbox(self) -> list[RequestOutput]:
        aborted: list[RequestOutput] = []
        for message in self._inbox.drain():
            match message:
                case AddRequests(requests):
                    self.output_processor.add(requests)
                    for request in requests:
                        self.scheduler.add(request)
                case AddEncode(request):
                    self.scheduler.add_encode(request)
                case Abort(request_id, index):
                    if self.scheduler.abort_encode(request_id):
                        continue
                    aborted.extend(self._abort(request_id, index))
        return aborted

    def _abort(self, group_id: str, index: int | None) -> list[RequestOutput]:
        """Finish a group's requests (or its request `index`); the group's output
        (none for an unknown group or completion)."""
        children = [
            child
            for child in self.output_processor.requests_of(group_id)
            if (index is None or child.index == index) and not child.is_finished
        ]
        if not children:
            return []
        for child in children:
            self.scheduler.finish(child, FinishReason.ABORT)
        return self.output_processor.outputs([group_id])

    def _finish(self, in_flight: _InFlight) -> list[str]:
        """Wait for a launched step's tokens and append them (finishing the
        requests that stop); the ids of the groups that step ran."""
        for chunk in in_flight.prompt_logprobs:  # before the deltas that carry them
            self.output_processor.add_prompt_logprobs(chunk)
        if in_flight.sampled is not None:
            self._append_sampled(in_flight.sampling, in_flight.sampled.result())
        return in_flight.group_ids

    def _launch(self, scheduled: list[ScheduledRequest], previous: _InFlight | None) -> _InFlight:
        """Run the model over the scheduled chunks and launch the sampling of the
        requests whose tokens are all computed (on a GPU neither is waited for).
        `previous`: the step in flight, scheduled ahead of; a request with a token
        pending there runs it from its sampled ids on the device."""
        wants_prompt_logprobs = self.output_processor.wants_prompt_logprobs
        block_table = self.kv_cache.block_table
        group_tables = self.kv_cache.group_block_tables if self._grouped else None
        chunks: list[SequenceChunk] = []
        sampling: list[Request] = []
        from_previous: list[int] = []  # chunks whose token is pending in `previous`
        previous_rows: list[int] = []
        for s in scheduled:
            r = s.request
            start = r.num_computed_tokens
            end = start + s.num_new_tokens
            if r.num_pending:  # its one new token is on its way (the placeholder: 0)
                assert previous is not None and s.num_new_tokens == 1, r.request_id
                from_previous.append(len(chunks))
                previous_rows.append(r.pending_row)
                token_ids = [0]
                sample = True
            else:
                token_ids = r.all_token_ids[start:end]
                sample = end == len(r.all_token_ids)  # the chunk completes the sequence
            if sample:
                r.num_pending += 1
                r.pending_row = len(sampling)
                sampling.append(r)
            chunks.append(
                SequenceChunk(
                    token_ids,
                    start,
                    block_table(r.request_id),
                    sample,
                    r.params.prompt_logprobs is not None and wants_prompt_logprobs(r, start),
                    None if group_tables is None else group_tables(r.request_id),
                )
            )
        tokens = None
        if from_previous:
            assert previous is not None and previous.sampled is not None
            tokens = PreviousTokens(previous.sampled.token_ids, from_previous, previous_rows)
        # Grammar masks are computed on a worker while the model runs.
        pending = self.structured.start_masks(
            [r.grammar if r.grammar_after is None else None for r in sampling]
        )
        logits = self.runner.execute_detailed(chunks, tokens)
        prompt_logprobs: list[PromptLogprobsChunk] = []
        for i, s in enumerate(scheduled):
            r = s.request
            if i in logits.all:
                prompt_logprobs.append(
                    self.output_processor.prompt_logprobs_chunk(
                        r, r.num_computed_tokens, s.num_new_tokens, logits.all[i]
                    )
                )
            if r.num_computed_tokens < r.num_prompt_tokens:
                self._num_prompt_tokens += s.num_new_tokens
            r.num_computed_tokens += s.num_new_tokens
        sampled: PendingSample | None = None
        if sampling:
            masks = None if pending is None else pending.wait()
            rows = [r.sampling_row or _sampling_row(r) for r in sampling]
            grammar_rows = pending.rows if pending is not None else []
            sampled = self.sampler.sample(logits.last, rows, masks, grammar_rows)
        group_ids = [s.request.group_id for s in scheduled]
        return _InFlight(group_ids, sampling, sampled, prompt_logprobs)

    def _append_sampled(self, sampling: list[Request], sampled: SamplerOutput) -> None:
        """Append each request's token and finish those that stop: by token here, by
        stop string as the output processor reports it. A request finished since
        the step's launch (aborted, or stopped by the step before: async
        scheduling) drops its token."""
        process_token = self.output_processor.process_token
        max_model_len = self.max_model_len
        finished = RequestStatus.FINISHED
        dropped = 0
        for r, token, lp in zip(sampling, sampled.token_ids, sampled.logprobs, strict=True):
            r.num_pending -= 1
            if r.status is finished:
                dropped += 1
                continue
            r.append_token(token)
            n_out = len(r.output_token_ids)
            reason: FinishReason | None = None
            stop_reason: str | int | None = None
            stop_token = token in r.stop_token_ids and n_out >= r.params.min_tokens
            if stop_token:
                reason = FinishReason.STOP
                stop_reason = token if token in r.params.stop_token_ids else None
            elif r.grammar is not None and r.grammar_after is None and self._grammar_done(r, token):
                reason = FinishReason.STOP  # complete, even if max_tokens is reached too
            elif n_out >= r.max_tokens or r.num_tokens >= max_model_len:
                reason = FinishReason.LENGTH
            if r.grammar_after is not None and _ends_with(r.output_token_ids, r.grammar_after):
                r.grammar_after = None  # the reasoning is over: the grammar applies from here
            stop_string = process_token(r, token, lp, reason, stop_token=stop_token)
            if stop_string is not None:
                reason, stop_reason = FinishReason.STOP, stop_string
            if reason is not None:
                r.stop_reason = stop_reason
                self.scheduler.finish(r, reason)
        self._num_generated += len(sampling) - dropped

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix (the engine thread only); False, and nothing
        forgotten, while a request holds KV blocks (as vLLM's reset answers)."""
        return self.kv_cache.reset_prefix_cache()

    @staticmethod
    def _grammar_done(r: Request, token: int) -> bool:
        """Advance the request's grammar; True when it is complete (nothing more may
        follow) or refused the token (a row whose other filters left no allowed
        token; it ends rather than generate what the grammar forbids)."""
        assert r.grammar is not None
        if not r.grammar.accept_token(token):
            log.warning("request %s: the grammar refused token %d; finishing", r.request_id, token)
            return True
        return r.grammar.is_terminated()

    def statistics(self) -> EngineStatistics:
        kv = self.kv_cache.statistics()
        sched = self.scheduler.statistics()
        return EngineStatistics(
            num_running=sched.num_running,
            num_waiting=sched.num_waiting,
            num_kv_blocks=kv.num_blocks,
            num_kv_blocks_free=kv.num_free_blocks,
            kv_cache_usage=kv.usage,
            prefix_cache_queries=kv.prefix_cache_queries,
            prefix_cache_hits=kv.prefix_cache_hits,
            num_prompt_tokens_computed=self._num_prompt_tokens,
            num_generated_tokens=self._num_generated,
            num_preemptions=sched.num_preemptions,
            num_steps=self._num_steps,
            kv_groups=kv.groups,
        )


def _sampling_row(r: Request) -> SamplingRow:
    """What the sampler reads of `r`, built once (its fields are `r`'s own, the
    output ids a live reference)."""
    r.sampling_row = SamplingRow(
        params=r.params,
        prompt_token_ids=r.prompt_token_ids,
        output_token_ids=r.output_token_ids,
        generator=r.generator,
        stop_token_ids=r.stop_token_ids,
        bad_words_token_ids=r.bad_words_token_ids,
    )
    return r.sampling_row


def _can_run_ahead(in_flight: _InFlight) -> bool:
    """Whether the next step may be scheduled before `in_flight`'s tokens are known:
    no live request it samples for needs its own last token on the host to sample
    the next (a logits processor that reads the output, a grammar)."""
    for r in in_flight.sampling:
        if r.is_finished:
            continue
        if r.grammar is not None or (r.sampling_row is not None and reads_output(r.sampling_row)):
            return False
    return True


def _ends_with(ids: list[int], tail: tuple[int, ...]) -> bool:
    return len(ids) >= len(tail) and tuple(ids[-len(tail) :]) == tail


__all__ = ["EngineCore", "EngineStatistics", "RequestStatus"]
