"""A modelled engine replica for the routing simulation (tests/bench/bench_routing.py).

It owns one replica's requests: the engine's own `KVCacheManager` (prefix caching
on), a scheduler that follows `llmcore.engine.scheduler.Scheduler` (running
requests first, then waiting ones in arrival order with their prefix-cache hits,
a token budget per step, at most `max_num_seqs` running, the latest arrival
preempted and recomputed when the cache cannot grow a request), and a step-time
model in place of the model. No tokens are computed: a request's answer is known
in advance and "sampled" one token a step.

Invariant (the engine's): every running request holds blocks for all its computed
tokens, and `waiting` and `running` stay in arrival order. Prefix-cache hits are
whatever the real manager finds (`get_computed_blocks`); nothing here assumes one.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmcore.engine.block_pool import BlockHash, KVBlock
from llmcore.engine.kv_cache_manager import KVCacheManager


@dataclass(frozen=True, slots=True)
class StepTimeModel:
    """Seconds per engine step: fixed + per batched token + per token of context read."""

    fixed_s: float  # reading the weights once, launches, sampling
    per_token_s: float  # the matmuls' FLOPs for each new token
    per_context_s: float  # reading one token's K and V (every new token reads its context)

    def step_s(self, batched_tokens: int, context_tokens: int) -> float:
        return (
            self.fixed_s + self.per_token_s * batched_tokens + self.per_context_s * context_tokens
        )


@dataclass(frozen=True, slots=True)
class ReplicaProfile:
    name: str
    description: str
    step: StepTimeModel
    num_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int = 16


# Llama-3.1-8B in bf16: 8.03e9 parameters (16.06 GB), 2 x 8.03e9 FLOP per token, K and V
# of 32 layers x 8 heads x 128 x 2 bytes = 131,072 B per token. The constants are a
# roofline at 80% of the memory bandwidth and 60% of the dense bf16 peak, plus 1.5 ms of
# launches and sampling a step: shaped like a measured GPU step, not measured.
PROFILES = {
    "a10": ReplicaProfile(
        name="a10",
        description=(
            "Llama-3.1-8B bf16 on one A10 (24 GB, 600 GB/s, 125 TFLOP/s): "
            "a = 16.06 GB / 480 GB/s + 1.5 ms = 35 ms, b = 16.06 GFLOP / 75 TFLOP/s = "
            "0.214 ms, c = 131 kB / 480 GB/s = 0.273 us; KV cache 0.9 x 24 GB - weights "
            "- 1.5 GB = 4.0 GB = 1,900 blocks of 16"
        ),
        step=StepTimeModel(fixed_s=35e-3, per_token_s=0.214e-3, per_context_s=0.273e-6),
        num_blocks=1900,
        max_num_seqs=64,
        max_num_batched_tokens=2048,
    ),
    "h100": ReplicaProfile(
        name="h100",
        description=(
            "Llama-3.1-8B bf16 on one H100 SXM (80 GB, 3.35 TB/s, 989 TFLOP/s): "
            "a = 16.06 GB / 2.68 TB/s + 1.5 ms = 7.5 ms, b = 16.06 GFLOP / 593 TFLOP/s = "
            "0.027 ms, c = 131 kB / 2.68 TB/s = 0.049 us; KV cache 0.9 x 80 GB - weights "
            "- 4 GB = 52 GB = 24,700 blocks of 16"
        ),
        step=StepTimeModel(fixed_s=7.5e-3, per_token_s=0.027e-3, per_context_s=0.049e-6),
        num_blocks=24700,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
    ),
}


@dataclass(slots=True, eq=False)
class SimRequest:
    """One turn on its way through a replica (a `KVRequest`)."""

    request_id: str
    all_token_ids: list[int]  # the prompt, then the answer as it is "sampled"
    answer: list[int]
    arrival_s: float
    num_prompt_tokens: int = 0
    num_computed_tokens: int = 0
    block_hashes: list[BlockHash] = field(default_factory=list)
    cache_salt: str | None = None
    num_output: int = 0
    num_cached_tokens: int | None = None  # prefix-cache hit when first admitted
    first_token_s: float | None = None

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.all_token_ids)  # grows: the caller's prompt must not
        self.num_prompt_tokens = len(self.all_token_ids)


@dataclass(slots=True)
class StepResult:
    first_tokens: list[SimRequest] = field(default_factory=list)
    finished: list[SimRequest] = field(default_factory=list)
    num_sampled: int = 0


class Replica:
    def __init__(self, profile: ReplicaProfile) -> None:
        self.profile = profile
        self.kv = KVCacheManager(profile.num_blocks, profile.block_size)
        self.waiting: list[SimRequest] = []
        self.running: list[SimRequest] = []
        self.stepping = False
        self.num_preemptions = 0
        self._scheduled: list[tuple[SimRequest, int]] = []

    @property
    def load(self) -> int:
        """Running plus waiting requests: what a replica pushes to the router."""
        return len(self.running) + len(self.waiting)

    def add(self, request: SimRequest) -> None:
        bisect.insort(self.waiting, request, key=_arrival)

    def start_step(self) -> float:
        """Schedule the next step; its duration in seconds (0.0: nothing to do)."""
        scheduled = self._scheduled = []
        budget = self._schedule_running(self.profile.max_num_batched_tokens)
        if budget is not None:
            self._schedule_waiting(budget)
        batched = context = 0
        for request, num_new in scheduled:
            batched += num_new
            context += request.num_computed_tokens + num_new
        self.stepping = bool(scheduled)
        return self.profile.step.step_s(batched, context) if scheduled else 0.0

    def end_step(self, now: float) -> StepResult:
        """The step's tokens are computed: sample, finish, free."""
        result = StepResult()
        for request, num_new in self._scheduled:
            request.num_computed_tokens += num_new
            if request.num_computed_tokens < len(request.all_token_ids):
                continue  # a chunk of a prefill
            request.all_token_ids.append(request.answer[request.num_output])
            request.num_output += 1
            result.num_sampled += 1
            if request.first_token_s is None:
                request.first_token_s = now
                result.first_tokens.append(request)
            if request.num_output == len(request.answer):
                self.running.remove(request)
                self.kv.free(request)
                result.finished.append(request)
        self._scheduled = []
        self.stepping = False
        return result

    # ---- the scheduler, as llmcore.engine.scheduler.Scheduler does it ------------------

    def _schedule_running(self, budget: int) -> int | None:
        """Serve running requests in order; None when one was preempted (the engine
        then admits nothing this step)."""
        bs = self.profile.block_size
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            computed = request.num_computed_tokens
            num_new = min(len(request.all_token_ids) - computed, budget)
            # A decode step only allocates a block or registers a full one when the
            # new token starts or ends a block; elsewhere the call changes nothing,
            # so it is skipped (the manager's state is the same).
            if num_new > 1 or computed % bs == 0 or (computed + 1) % bs == 0:
                while self.kv.allocate_slots(request, num_new) is None:
                    victim = self.running[-1]  # the latest arrival
                    self._preempt(victim)
                    preempted = True
                    if victim is request:
                        return None
            self._scheduled.append((request, num_new))
            budget -= num_new
            i += 1
        return None if preempted else budget

    def _preempt(self, request: SimRequest) -> None:
        self.running.remove(request)
        self.kv.free(request)
        request.num_computed_tokens = 0
        self.num_preemptions += 1
        bisect.insort(self.waiting, request, key=_arrival)

    def _schedule_waiting(self, budget: int) -> None:
        admitted: list[SimRequest] = []
        for request in self.waiting:
            if budget <= 0 or len(self.running) + len(admitted) >= self.profile.max_num_seqs:
                break
            blocks: Sequence[KVBlock | None]
            blocks, num_cached = self.kv.get_computed_blocks(request)
            num_new = min(len(request.all_token_ids) - num_cached, budget)
            if self.kv.allocate_slots(request, num_new, blocks) is None:
                break  # first come, first served: nothing jumps the head of the line
            request.num_computed_tokens = num_cached
            if request.num_cached_tokens is None:
                request.num_cached_tokens = num_cached
            admitted.append(request)
            self._scheduled.append((request, num_new))
            budget -= num_new
        for request in admitted:
            self.waiting.remove(request)
            bisect.insort(self.running, request, key=_arrival)


def _arrival(request: SimRequest) -> float:
    return request.arrival_s
