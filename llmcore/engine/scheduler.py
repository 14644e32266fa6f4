"""`Scheduler`: which requests run in the next step, and with how many new tokens.

No separate prefill and decode phases: every request's `num_computed_tokens`
catches up with its `num_tokens`, at most `max_num_batched_tokens` new tokens per
step in all (so a long prompt is prefilled in chunks while others keep decoding)
and at most `max_num_seqs` running requests. Running requests are served first, in
priority order; when the KV cache cannot grow one, the lowest-priority running
request is preempted (its blocks freed, its tokens recomputed later: its output is
unchanged). Waiting requests are admitted in (priority, arrival) order, reusing
prefix-cache hits, until the budget, the sequence cap or the free blocks run out.

Encode requests (pooling) wait in their own queue, in (priority, arrival) order, and
take what the step's token budget leaves after generation: each runs whole in one
pass (no chunking, no KV blocks kept), at least one per step when nothing else runs.

With async scheduling the next step is scheduled while the last one runs: a
running request's tokens sampled there (`Request.num_pending`) count as known, so
it is given its next decode position before its token is (the model runner takes
the token from the previous step's sampled ids on the device). A request whose
pending token is its last (`max_tokens`) is not scheduled again.

Invariant: every running request holds blocks for all its computed tokens, and
`waiting` and `running` stay sorted by `Request.sort_key`.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmcore.engine.block_pool import KVBlock
from llmcore.engine.kv_cache_manager import KVCacheManager
from llmcore.engine.request import EncodeRequest, FinishReason, Request, RequestStatus


@dataclass(slots=True)
class ScheduledRequest:
    request: Request
    num_new_tokens: int

    @property
    def completes_sequence(self) -> bool:
        """Whether this chunk reaches the end of the known tokens (so a token is sampled)."""
        r = self.request
        return r.num_computed_tokens + self.num_new_tokens == r.num_tokens + r.num_pending


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    encode: list[EncodeRequest] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


@dataclass(slots=True, frozen=True)
class SchedulerStatistics:
    num_running: int
    num_waiting: int  # generate requests waiting or preempted, and encode requests
    num_preemptions: int  # since the start


class Scheduler:
    def __init__(
        self,
        kv_cache: KVCacheManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        enable_chunked_prefill: bool = True,
    ) -> None:
        self.kv_cache = kv_cache
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._group_leaders: dict[str, Request] = {}
        self.num_preemptions = 0
        self.encode_waiting: list[EncodeRequest] = []  # sorted by EncodeRequest.sort_key

    # ---- requests in and out -------------------------------------------------------------

    def add(self, request: Request) -> None:
        assert request.request_id not in self.requests, request.request_id
        self.requests[request.request_id] = request
        if request.index == 0:
            self._group_leaders[request.group_id] = request
        request.status = RequestStatus.WAITING
        bisect.insort(self.waiting, request, key=Request.sort_key)

    def finish(self, request: Request, reason: FinishReason) -> None:
        """Finish `request`: free its blocks and drop it from the queues."""
        if request.is_finished:
            return
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        self.kv_cache.free(request)
        del self.requests[request.request_id]
        if self._group_leaders.get(request.group_id) is request:
            del self._group_leaders[request.group_id]

    def has_unfinished(self) -> bool:
        return bool(self.requests) or bool(self.encode_waiting)

    def add_encode(self, request: EncodeRequest) -> None:
        bisect.insort(self.encode_waiting, request, key=EncodeRequest.sort_key)

    def abort_encode(self, request_id: str) -> bool:
        """Drop a waiting encode request; False if it is not waiting."""
        for request in self.encode_waiting:
            if request.request_id == request_id:
                self.encode_waiting.remove(request)
                return True
        return False

    # ---- one step ------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        budget = self._schedule_running(out, budget)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        self._schedule_encode(out, self.max_num_batched_tokens - out.num_batched_tokens)
        return out

    def _schedule_encode(self, out: SchedulerOutput, budget: int) -> None:
        queue = self.encode_waiting
        while queue and len(out.encode) < self.max_num_seqs:
            size = queue[0].num_tokens
            if size > budget and (out.encode or out.scheduled):
                break  # an input longer than the budget runs alone, in a step of its own
            out.encode.append(queue.pop(0))
            budget -= size

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            pending = request.num_pending  # async scheduling: tokens on their way
            if pending and len(request.output_token_ids) + pending >= request.max_tokens:
                i += 1  # its last token is on its way: the request ends with it
                continue
            num_new = min(request.num_tokens + pending - request.num_computed_tokens, budget)
            while self.kv_cache.allocate_slots(request, num_new) is None:
                victim = self.running[-1]  # lowest priority, latest arrival
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is request:
                    return budget
            out.scheduled.append(ScheduledRequest(request, num_new))
            budget -= num_new
            i += 1
        return budget

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.kv_cache.free(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        bisect.insort(self.waiting, request, key=Request.sort_key)

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        admitted: list[Request] = []
        for request in self.waiting:
            if budget <= 0 or len(self.running) + len(admitted) >= self.max_num_seqs:
                break
            if self._waits_for_leader(request):
                continue
            blocks: Sequence[KVBlock | None] = ()
            num_cached = 0
            if request.params.prompt_logprobs is None:  # those need every prompt position
                blocks, num_cached = self.kv_cache.get_computed_blocks(request)
            num_new = request.num_tokens - num_cached
            if num_new > budget and not self.enable_chunked_prefill:
                break
            num_new = min(num_new, budget)
            if self.kv_cache.allocate_slots(request, num_new, blocks) is None:
                break  # FCFS: nothing behind the head of the line jumps it
            request.num_computed_tokens = num_cached
            if request.num_cached_tokens is None:  # first admission (not a preempted one's)
                request.num_cached_tokens = num_cached
            request.status = RequestStatus.RUNNING
            admitted.append(request)
            out.scheduled.append(ScheduledRequest(request, num_new))
            budget -= num_new
        for request in admitted:
            self.waiting.remove(request)
            bisect.insort(self.running, request, key=Request.sort_key)

    def _waits_for_leader(self, request: Request) -> bool:
        """An n>1 sibling waits until the group's first completion has computed the
        prompt, then finds it in the prefix cache instead of computing it again."""
        if request.index == 0 or not self.kv_cache.enable_prefix_caching:
            return False
        leader = self._group_leaders.get(request.group_id)
        return leader is not None and leader.num_computed_tokens < leader.num_prompt_tokens

    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(
            num_running=len(self.running),
            num_waiting=len(self.waiting) + len(self.encode_waiting),
            num_preemptions=self.num_preemptions,
        )
