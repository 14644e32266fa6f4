"""`EngineCore`: the synchronous heart of the engine, one `step()` at a time.

A step drains the inbox (requests added or aborted from other threads), asks the
scheduler for the running set, runs one forward pass over it, samples a token for
every request whose known tokens are now all computed, appends it, detokenizes,
applies stop conditions, and returns one `RequestOutput` delta per request group
that progressed. Encode requests (pooling) scheduled in the same step run as one
more forward pass of their own (`PoolingRunner`) and finish in that step.
Everything here runs on one thread (the engine's worker); other
threads only touch the inbox, a deque whose appends and pops are atomic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmcore.engine.config import EngineConfig
from llmcore.engine.inbox import Abort, AddEncode, AddRequests, Inbox
from llmcore.engine.kv_cache_manager import KVCacheManager
from llmcore.engine.logprobs import TokenLogprobs, logprobs_of
from llmcore.engine.pooling_runner import PoolingRunner
from llmcore.engine.request import EncodeRequest, FinishReason, Request, RequestStatus
from llmcore.engine.sampler import Sampler, SamplingRow
from llmcore.engine.scheduler import ScheduledRequest, Scheduler
from llmcore.engine.sizing import size_engine
from llmcore.engine.task import Task, resolve_task
from llmcore.errors import ContextLengthExceededError, InvalidRequestError
from llmcore.model_loader import LoadedModel
from llmcore.model_runner import ModelRunner, SequenceChunk
from llmcore.outputs import CompletionOutput, Logprob, RequestOutput
from llmcore.pooling import PoolingOutput, PoolingParams
from llmcore.sampling_params import SamplingParams
from llmcore.tokenization.detokenizer import IncrementalDetokenizer
from llmcore.tokenization.tokenizer import Tokenizer

log = logging.getLogger("llmcore.engine")


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


class _Group:
    """The n completions of one caller request, and their pending deltas."""

    __slots__ = ("children", "prompt_logprobs", "prompt_token_ids", "request_id")

    def __init__(self, request_id: str, prompt_token_ids: list[int], children: list[Request]):
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.children = children
        self.prompt_logprobs: list[Logprob | None] | None = None


class EngineCore:
    def __init__(self, loaded: LoadedModel, tokenizer: Tokenizer, config: EngineConfig) -> None:
        self.loaded, self.tokenizer, self.config = loaded, tokenizer, config
        self.task = resolve_task(loaded, config.task)
        sizing = size_engine(loaded, config, self.task)
        if sizing.capped_by_kv_cache:
            capacity = sizing.kv_capacity
            log.warning("max_model_len capped to %d tokens by the KV cache size", capacity)
        self.max_model_len = sizing.max_model_len
        self.pooling_config = sizing.pooling_config
        self.runner = ModelRunner(loaded, sizing.num_blocks, config.block_size)
        self.kv_cache = KVCacheManager(
            sizing.num_blocks, config.block_size, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.kv_cache,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=max(config.max_num_batched_tokens, config.block_size),
            enable_chunked_prefill=config.enable_chunked_prefill,
        )
        self.sampler = Sampler(loaded.config.vocab_size, seed=config.seed)
        self.pooler = (
            PoolingRunner(loaded, self.runner, self.pooling_config)
            if self.pooling_config is not None
            else None
        )
        self.vocab_size = loaded.config.vocab_size
        eos = set(loaded.config.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos)
        self._inbox = Inbox()
        self._groups: dict[str, _Group] = {}
        self._pending_logprobs: dict[str, list[Logprob]] = {}
        self._pending_prompt_lp: dict[str, list[Logprob | None]] = {}
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
        if self.task is not Task.GENERATE:
            raise InvalidRequestError(
                "this model is served for embeddings (task embed), not for generation"
            )
        prompt = self._checked_prompt(prompt_token_ids)
        params.validate(self.vocab_size, self.config.max_logprobs)
        max_tokens = self._max_tokens(len(prompt), params)
        bad_words = self._bad_words_ids(params.bad_words or [])
        now = time.monotonic()
        return [
            Request(
                request_id=request_id if params.n == 1 else f"{request_id}-{i}",
                group_id=request_id,
                index=i,
                prompt_token_ids=prompt,
                params=params,
                max_tokens=max_tokens,
                arrival_time=now,
                priority=priority,
                cache_salt=cache_salt,
                stop_token_ids=self._stop_ids(params),
                bad_words_token_ids=bad_words,
                generator=(
                    torch.Generator().manual_seed(params.seed + i)
                    if params.seed is not None
                    else None
                ),
                detokenizer=IncrementalDetokenizer(
                    self.tokenizer,
                    prompt,
                    skip_special_tokens=params.skip_special_tokens,
                    spaces_between_special_tokens=params.spaces_between_special_tokens,
                ),
            )
            for i in range(params.n)
        ]

    def _checked_prompt(self, prompt_token_ids: Sequence[int]) -> list[int]:
        prompt = list(prompt_token_ids)
        if not prompt:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if any(not 0 <= t < self.vocab_size for t in prompt):
            raise InvalidRequestError(
                f"prompt token ids must be in [0, {self.vocab_size})", param="prompt"
            )
        return prompt

    def make_encode_request(
        self, prompt_token_ids: Sequence[int], params: PoolingParams, request_id: str
    ) -> EncodeRequest:
        """Validate and build the encode request of one input."""
        if self.pooling_config is None:
            raise InvalidRequestError(
                "this model is served for generation (task generate), not for embeddings"
            )
        prompt = self._checked_prompt(prompt_token_ids)
        if len(prompt) > self.max_model_len:
            raise ContextLengthExceededError(
                f"this model's maximum input length is {self.max_model_len} tokens; the input "
                f"has {len(prompt)} tokens (set truncate_prompt_tokens to truncate it)",
                param="input",
            )
        params.validate(self.loaded.config.hidden_size, self.pooling_config)
        return EncodeRequest(request_id, prompt, params, time.monotonic())

    def add_encode(self, request: EncodeRequest) -> None:
        """Queue an encode request (from `make_encode_request`) for the next step."""
        self._inbox.put(AddEncode(request))

    def _max_tokens(self, num_prompt: int, params: SamplingParams) -> int:
        room = self.max_model_len - num_prompt
        wanted = params.max_tokens
        if room < 1 or (wanted is not None and wanted > room):
            asked = f" + max_tokens ({wanted})" if wanted is not None else ""
            raise ContextLengthExceededError(
                f"this model's maximum context length is {self.max_model_len} tokens; the "
                f"request has {num_prompt} prompt tokens{asked}",
                param="max_tokens" if room >= 1 else "prompt",
            )
        return room if wanted is None else wanted

    def _stop_ids(self, params: SamplingParams) -> frozenset[int]:
        ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            ids |= self.eos_token_ids
        return frozenset(ids)

    def _bad_words_ids(self, words: list[str]) -> list[list[int]]:
        out: list[list[int]] = []
        for word in words:
            for variant in (word, " " + word.lstrip()):
                ids = self.tokenizer.encode(variant, add_special_tokens=False)
                if ids and ids not in out:
                    out.append(ids)
        return out

    def add(self, requests: list[Request]) -> None:
        """Queue requests (from `make_requests`) for the next step."""
        self._inbox.put(AddRequests(requests))

    def abort(self, request_id: str) -> None:
        """Queue the abort of a caller request (all its completions) or encode request."""
        self._inbox.put(Abort(request_id))

    # ---- the step (the engine thread only) -----------------------------------------------

    def has_work(self) -> bool:
        return bool(self._inbox) or self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput | PoolingOutput]:
        outputs: list[RequestOutput | PoolingOutput] = []
        outputs.extend(self._drain_inbox())
        plan = self.scheduler.schedule()
        if plan.scheduled:
            self._num_steps += 1
            self._run(plan.scheduled)
        outputs.extend(self._collect_outputs([s.request.group_id for s in plan.scheduled]))
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
                    group_id = requests[0].group_id
                    prompt = requests[0].prompt_token_ids
                    self._groups[group_id] = _Group(group_id, prompt, requests)
                    for request in requests:
                        self.scheduler.add(request)
                case AddEncode(request):
                    self.scheduler.add_encode(request)
                case Abort(request_id):
                    if self.scheduler.abort_encode(request_id):
                        continue
                    out = self._abort(request_id)
                    if out is not None:
                        aborted.append(out)
        return aborted

    def _abort(self, group_id: str) -> RequestOutput | None:
        group = self._groups.get(group_id)
        if group is None:
            return None
        for child in group.children:
            self.scheduler.finish(child, FinishReason.ABORT)
        return self._collect_outputs([group_id])[0]

    def _run(self, scheduled: list[ScheduledRequest]) -> None:
        chunks = []
        for s in scheduled:
            r = s.request
            start = r.num_computed_tokens
            chunks.append(
                SequenceChunk(
                    r.all_token_ids[start : start + s.num_new_tokens],
                    start,
                    self.kv_cache.block_ids(r.request_id),
                    sample=s.completes_sequence,
                    all_logits=self._wants_prompt_logprobs(r, start),
                )
            )
        sampling = [s.request for s in scheduled if s.completes_sequence]
        logits = self.runner.execute_detailed(chunks)
        for i, s in enumerate(scheduled):
            if i in logits.all:
                self._add_prompt_logprobs(s, logits.all[i])
            if s.request.num_computed_tokens < s.request.num_prompt_tokens:
                self._num_prompt_tokens += s.num_new_tokens
            s.request.num_computed_tokens += s.num_new_tokens
        if sampling:
            rows = [
                SamplingRow(
                    params=r.params,
                    prompt_token_ids=r.prompt_token_ids,
                    output_token_ids=r.output_token_ids,
                    generator=r.generator,
                    stop_token_ids=r.stop_token_ids,
                    bad_words_token_ids=r.bad_words_token_ids,
                )
                for r in sampling
            ]
            sampled = self.sampler(logits.last, rows)
            for r, token, lp in zip(sampling, sampled.token_ids, sampled.logprobs, strict=True):
                self._append(r, token, lp)

    def _wants_prompt_logprobs(self, r: Request, start: int) -> bool:
        group = self._groups[r.group_id]
        return (
            r.params.prompt_logprobs is not None
            and r.index == 0
            and group.prompt_logprobs is None
            and start < r.num_prompt_tokens
        )

    def _add_prompt_logprobs(self, s: ScheduledRequest, logits: torch.Tensor) -> None:
        """Logits at position p score prompt token p + 1; position 0 has none."""
        r = s.request
        start = r.num_computed_tokens
        end = min(start + s.num_new_tokens, r.num_prompt_tokens - 1)
        partial = self._pending_prompt_lp.setdefault(r.request_id, [None])
        if end > start:
            targets = torch.tensor(r.prompt_token_ids[start + 1 : end + 1])
            k = r.params.prompt_logprobs or 0
            partial.extend(_to_logprob(t) for t in logprobs_of(logits[: end - start], targets, k))
        if start + s.num_new_tokens >= r.num_prompt_tokens:
            self._groups[r.group_id].prompt_logprobs = self._pending_prompt_lp.pop(r.request_id)

    def _append(self, r: Request, token: int, lp: TokenLogprobs | None) -> None:
        r.append_token(token)
        self._num_generated += 1
        if lp is not None:
            self._pending_logprobs.setdefault(r.request_id, []).append(_to_logprob(lp))
        n_out = len(r.output_token_ids)
        reason: FinishReason | None = None
        stop_reason: str | int | None = None
        if token in r.stop_token_ids and n_out >= r.params.min_tokens:
            reason = FinishReason.STOP
            stop_reason = token if token in r.params.stop_token_ids else None
        elif n_out >= r.max_tokens or r.num_tokens >= self.max_model_len:
            reason = FinishReason.LENGTH
        hide_token = reason is FinishReason.STOP and not r.params.include_stop_str_in_output
        assert r.detokenizer is not None
        delta = "" if hide_token else r.detokenizer.step([token])
        if reason is not None:
            delta += r.detokenizer.finish()
        r.text += delta
        stop_hit = self._find_stop_string(r, len(delta))
        if stop_hit is not None:
            reason, stop_reason = FinishReason.STOP, stop_hit
        if reason is not None:
            r.stop_reason = stop_reason
            self.scheduler.finish(r, reason)

    def _find_stop_string(self, r: Request, new_chars: int) -> str | None:
        """Cut `r.text` at the first stop string that the new text completes."""
        stops = r.params.stop
        if not stops or not new_chars:
            return None
        longest = max(len(s) for s in stops)
        search_from = max(0, len(r.text) - new_chars - longest + 1)
        best: tuple[int, str] | None = None
        for stop in stops:
            at = r.text.find(stop, search_from)
            if at != -1 and (best is None or at < best[0]):
                best = (at, stop)
        if best is None:
            return None
        at, stop = best
        r.text = r.text[: at + len(stop)] if r.params.include_stop_str_in_output else r.text[:at]
        return stop

    # ---- outputs -------------------------------------------------------------------------

    def _collect_outputs(self, group_ids: Sequence[str]) -> list[RequestOutput]:
        outputs = []
        for group_id in dict.fromkeys(group_ids):
            group = self._groups.get(group_id)
            if group is None:
                continue
            completions = [c for r in group.children if (c := self._delta(r)) is not None]
            finished = all(r.is_finished for r in group.children)
            if completions or finished:
                outputs.append(
                    RequestOutput(
                        request_id=group_id,
                        prompt_token_ids=group.prompt_token_ids,
                        outputs=completions,
                        finished=finished,
                        prompt_logprobs=group.prompt_logprobs,
                    )
                )
            if finished:
                del self._groups[group_id]
        return outputs

    def _delta(self, r: Request) -> CompletionOutput | None:
        """What `r` produced since its last output (None if nothing)."""
        hold = 0
        if not r.is_finished and r.params.stop:
            hold = max(len(s) for s in r.params.stop) - 1  # might be a stop string's start
        text_end = max(r.emitted_chars, len(r.text) - hold)
        tokens = r.output_token_ids[r.emitted_tokens :]
        text = r.text[r.emitted_chars : text_end]
        logprobs = self._pending_logprobs.pop(r.request_id, None)
        if not tokens and not text and not r.is_finished:
            return None
        if r.is_finished and r.emitted_finish:
            return None
        r.emitted_chars, r.emitted_tokens = text_end, len(r.output_token_ids)
        r.emitted_finish = r.is_finished
        return CompletionOutput(
            index=r.index,
            text=text,
            token_ids=tokens,
            finish_reason=r.finish_reason.value if r.finish_reason else None,
            stop_reason=r.stop_reason,
            logprobs=logprobs,
        )

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
        )


def _to_logprob(lp: TokenLogprobs) -> Logprob:
    return Logprob(lp.token_id, lp.logprob, lp.rank, list(lp.top))


__all__ = ["EngineCore", "EngineStatistics", "RequestStatus"]
