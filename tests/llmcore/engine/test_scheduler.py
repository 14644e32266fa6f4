"""The scheduler without a model: a real `Scheduler` over a real `KVCacheManager`,
hand-made `Request`s, and a stand-in for the model that computes each scheduled
chunk and samples a fixed token wherever a chunk completes a sequence.

Covered: FCFS admission and head-of-line blocking, priority order and the
preemption victim, chunked prefill on and off, the token budget and the sequence
cap, n>1 siblings waiting for their leader's prompt and then hitting the cache.
"""

from __future__ import annotations

import itertools

from llmcore.engine.kv_cache_manager import KVCacheManager
from llmcore.engine.request import FinishReason, Request, RequestStatus
from llmcore.engine.scheduler import Scheduler, SchedulerOutput
from llmcore.sampling_params import SamplingParams

BS = 4  # block size of every test
SAMPLED = 7  # the token the stand-in model always samples
_fresh_tokens = itertools.count(1000)  # distinct prompts: no accidental prefix hits


def scheduler(
    *,
    num_blocks: int = 64,
    budget: int = 64,
    max_num_seqs: int = 16,
    chunked: bool = True,
    prefix_caching: bool = True,
) -> Scheduler:
    kv = KVCacheManager(num_blocks, BS, enable_prefix_caching=prefix_caching)
    return Scheduler(
        kv, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, enable_chunked_prefill=chunked
    )


def request(
    request_id: str,
    num_prompt: int,
    *,
    arrival: float,
    priority: int = 0,
    prompt: list[int] | None = None,
    group: str | None = None,
    index: int = 0,
) -> Request:
    return Request(
        request_id=request_id,
        group_id=group or request_id,
        index=index,
        prompt_token_ids=prompt or [next(_fresh_tokens) for _ in range(num_prompt)],
        params=SamplingParams(),
        max_tokens=1000,
        arrival_time=arrival,
        priority=priority,
    )


def step(sched: Scheduler) -> SchedulerOutput:
    """Schedule one step and play the model: compute every chunk, sample one token
    for each chunk that reaches the end of its sequence (as `EngineCore._launch` does)."""
    out = sched.schedule()
    for s in out.scheduled:
        completes = s.completes_sequence
        s.request.num_computed_tokens += s.num_new_tokens
        if completes:
            s.request.append_token(SAMPLED)
    return out


def plan(out: SchedulerOutput) -> list[tuple[str, int]]:
    """(request id, new tokens) of each scheduled request, in scheduling order."""
    return [(s.request.request_id, s.num_new_tokens) for s in out.scheduled]


# ---- FCFS --------------------------------------------------------------------------------


def test_waiting_requests_are_admitted_in_arrival_order() -> None:
    sched = scheduler(max_num_seqs=2)
    for rid, arrival in [("c", 3.0), ("a", 1.0), ("d", 4.0), ("b", 2.0)]:
        sched.add(request(rid, 4, arrival=arrival))
    assert plan(step(sched)) == [("a", 4), ("b", 4)]  # the sequence cap leaves c and d waiting
    assert [r.request_id for r in sched.waiting] == ["c", "d"]
    sched.finish(sched.requests["a"], FinishReason.STOP)
    assert plan(step(sched)) == [("b", 1), ("c", 4)]


def test_a_request_that_does_not_fit_blocks_the_ones_behind_it() -> None:
    """Head-of-line FCFS: when the KV cache cannot take the oldest waiting request,
    nothing that arrived after it is admitted, even if it would fit."""
    sched = scheduler(num_blocks=8)
    sched.add(request("running", 20, arrival=0.0))  # 5 of the 8 blocks
    assert plan(step(sched)) == [("running", 20)]
    sched.add(request("big", 12, arrival=1.0))  # needs 3 blocks: 2 are free after the decode
    sched.add(request("small", 2, arrival=2.0))  # needs 1 block: it would fit
    out = step(sched)
    assert plan(out) == [("running", 1)]
    assert [r.request_id for r in sched.waiting] == ["big", "small"]
    assert sched.requests["small"].status is RequestStatus.WAITING
    sched.finish(sched.requests["running"], FinishReason.STOP)
    assert plan(step(sched)) == [("big", 12), ("small", 2)]  # in arrival order once it fits


# ---- priority and preemption -------------------------------------------------------------


def test_lower_priority_value_is_admitted_first_then_arrival() -> None:
    sched = scheduler(max_num_seqs=2)
    sched.add(request("late-urgent", 4, arrival=5.0, priority=-1))
    sched.add(request("early-normal", 4, arrival=1.0, priority=0))
    sched.add(request("earliest-lazy", 4, arrival=0.0, priority=3))
    sched.add(request("late-normal", 4, arrival=2.0, priority=0))
    assert plan(step(sched)) == [("late-urgent", 4), ("early-normal", 4)]
    assert [r.request_id for r in sched.waiting] == ["late-normal", "earliest-lazy"]


def _fill_cache_with(sched: Scheduler, *requests: Request) -> None:
    """Admit requests whose prompts exactly fill the cache; each then samples a token
    and needs one more block to continue."""
    for r in requests:
        sched.add(r)
    scheduled = dict(plan(step(sched)))
    assert scheduled == {r.request_id: r.num_prompt_tokens for r in requests}
    assert sched.kv_cache.num_free_blocks == 0


def test_the_latest_arrival_is_preempted_never_the_oldest() -> None:
    sched = scheduler(num_blocks=6)
    a, b, c = (request(rid, 8, arrival=t) for rid, t in [("a", 0.0), ("b", 1.0), ("c", 2.0)])
    _fill_cache_with(sched, a, b, c)
    out = step(sched)  # a needs a block: c (the newest) gives its 2, a and b take one each
    assert out.preempted == [c]
    assert plan(out) == [("a", 1), ("b", 1)]
    assert c.status is RequestStatus.PREEMPTED and c.num_computed_tokens == 0
    assert c in sched.waiting and c not in sched.running
    assert sched.num_preemptions == 1 and c.num_preemptions == 1
    assert a.output_token_ids == [SAMPLED, SAMPLED]  # the oldest kept running


def test_the_lowest_priority_is_preempted_even_if_it_arrived_first() -> None:
    sched = scheduler(num_blocks=6)
    lazy = request("lazy", 8, arrival=0.0, priority=2)
    urgent = request("urgent", 8, arrival=1.0, priority=0)
    normal = request("normal", 8, arrival=2.0, priority=1)
    _fill_cache_with(sched, lazy, urgent, normal)
    assert sched.running == [urgent, normal, lazy]  # served in priority order
    out = step(sched)
    assert out.preempted == [lazy]
    assert plan(out) == [("urgent", 1), ("normal", 1)]


def test_a_preempted_request_is_recomputed_ahead_of_later_arrivals() -> None:
    sched = scheduler(num_blocks=6)
    a, b, c = (request(rid, 8, arrival=t) for rid, t in [("a", 0.0), ("b", 1.0), ("c", 2.0)])
    _fill_cache_with(sched, a, b, c)
    assert step(sched).preempted == [c]
    sched.add(request("d", 4, arrival=3.0))
    sched.finish(a, FinishReason.STOP)  # frees 3 blocks
    out = step(sched)
    assert plan(out) == [("b", 1), ("c", 9)]  # c's prompt and its sampled token again; d waits
    assert [r.request_id for r in sched.waiting] == ["d"]


# ---- chunked prefill ---------------------------------------------------------------------


def test_chunked_prefill_splits_a_long_prompt_across_steps() -> None:
    sched = scheduler(budget=8)
    long = request("long", 20, arrival=0.0)
    sched.add(long)
    assert plan(step(sched)) == [("long", 8)]
    assert long.output_token_ids == []  # nothing sampled before the prompt is done
    assert plan(step(sched)) == [("long", 8)]
    assert plan(step(sched)) == [("long", 4)]
    assert long.output_token_ids == [SAMPLED]
    assert plan(step(sched)) == [("long", 1)]


def test_chunked_prefill_gives_a_prompt_what_decoding_leaves() -> None:
    sched = scheduler(budget=8)
    sched.add(request("first", 4, arrival=0.0))
    sched.add(request("second", 4, arrival=1.0))
    assert plan(step(sched)) == [("first", 4), ("second", 4)]
    sched.add(request("long", 20, arrival=2.0))
    assert plan(step(sched)) == [("first", 1), ("second", 1), ("long", 6)]
    assert plan(step(sched)) == [("first", 1), ("second", 1), ("long", 6)]


def test_without_chunked_prefill_a_prompt_is_never_split() -> None:
    sched = scheduler(budget=10, chunked=False)
    sched.add(request("a", 6, arrival=0.0))
    sched.add(request("b", 6, arrival=1.0))  # 4 tokens of budget left: it waits whole
    assert plan(step(sched)) == [("a", 6)]
    assert plan(step(sched)) == [("a", 1), ("b", 6)]


def test_without_chunked_prefill_no_later_request_jumps_a_prompt_that_does_not_fit() -> None:
    sched = scheduler(budget=10, chunked=False)
    sched.add(request("a", 6, arrival=0.0))
    sched.add(request("b", 6, arrival=1.0))  # does not fit in the 4 left
    sched.add(request("c", 3, arrival=2.0))  # would fit, but arrived after b
    assert plan(step(sched)) == [("a", 6)]
    assert [r.request_id for r in sched.waiting] == ["b", "c"]
    assert plan(step(sched)) == [("a", 1), ("b", 6), ("c", 3)]


def test_with_chunked_prefill_the_same_requests_are_split() -> None:
    sched = scheduler(budget=10, chunked=True)
    sched.add(request("a", 6, arrival=0.0))
    sched.add(request("b", 6, arrival=1.0))
    sched.add(request("c", 3, arrival=2.0))
    assert plan(step(sched)) == [("a", 6), ("b", 4)]  # c waits: the budget is spent


# ---- token budget and sequence cap -------------------------------------------------------


def test_the_token_budget_caps_each_step() -> None:
    sched = scheduler(budget=10)
    for i in range(4):
        sched.add(request(f"r{i}", 4, arrival=float(i)))
    out = step(sched)
    assert plan(out) == [("r0", 4), ("r1", 4), ("r2", 2)]
    assert out.num_batched_tokens == 10
    out = step(sched)  # decodes first, then the rest of r2's prompt, then r3 in what is left
    assert plan(out) == [("r0", 1), ("r1", 1), ("r2", 2), ("r3", 4)]
    assert out.num_batched_tokens == 8


def test_the_sequence_cap_counts_running_requests() -> None:
    sched = scheduler(max_num_seqs=3)
    for i in range(2):
        sched.add(request(f"r{i}", 4, arrival=float(i)))
    step(sched)
    for i in range(2, 5):
        sched.add(request(f"r{i}", 4, arrival=float(i)))
    assert plan(step(sched)) == [("r0", 1), ("r1", 1), ("r2", 4)]
    assert len(sched.running) == 3
    assert [r.request_id for r in sched.waiting] == ["r3", "r4"]


# ---- n > 1 -------------------------------------------------------------------------------


def _group(group_id: str, n: int, num_prompt: int, arrival: float) -> list[Request]:
    prompt = [next(_fresh_tokens) for _ in range(num_prompt)]
    return [
        request(f"{group_id}-{i}", num_prompt, arrival=arrival, prompt=prompt, group=group_id,
                index=i)
        for i in range(n)
    ]  # fmt: skip


def test_siblings_wait_for_the_leaders_prompt_then_hit_the_prefix_cache() -> None:
    sched = scheduler(budget=8)
    leader, *siblings = _group("g", 3, 18, arrival=0.0)
    for r in (leader, *siblings):
        sched.add(r)
    sched.add(request("other", 2, arrival=1.0))  # behind the siblings, not blocked by them
    assert plan(step(sched)) == [("g-0", 8)]
    assert plan(step(sched)) == [("g-0", 8)]
    assert all(s.status is RequestStatus.WAITING and s.num_computed_tokens == 0 for s in siblings)
    assert plan(step(sched)) == [("g-0", 2), ("other", 2)]  # the leader's prompt is done
    out = step(sched)  # 16 of 18 prompt tokens are cached (4 full blocks): 2 left each
    assert plan(out) == [("g-0", 1), ("other", 1), ("g-1", 2), ("g-2", 2)]
    assert all(s.num_computed_tokens == 18 for s in siblings)
    assert sched.kv_cache.statistics().prefix_cache_hits == 2 * 16
    shared = sched.kv_cache.block_ids("g-0")[:4]
    assert all(sched.kv_cache.block_ids(s.request_id)[:4] == shared for s in siblings)


def test_a_sibling_is_not_scheduled_beside_its_leaders_prompt() -> None:
    sched = scheduler()
    leader, sibling = _group("g", 2, 9, arrival=0.0)
    sched.add(leader)
    sched.add(sibling)
    assert plan(step(sched)) == [("g-0", 9)]
    assert plan(step(sched)) == [("g-0", 1), ("g-1", 1)]  # 8 of its 9 prompt tokens cached
    assert sibling.output_token_ids == [SAMPLED]


def test_siblings_without_prefix_caching_do_not_wait() -> None:
    sched = scheduler(prefix_caching=False)
    group = _group("g", 3, 6, arrival=0.0)
    for r in group:
        sched.add(r)
    assert plan(step(sched)) == [("g-0", 6), ("g-1", 6), ("g-2", 6)]


# ---- async scheduling --------------------------------------------------------------------


def test_a_pending_token_counts_as_known_and_a_last_one_is_not_scheduled_past() -> None:
    """Scheduled ahead (async scheduling), a request whose token is on its way gets
    its next position (one new token, blocks for it); one whose pending token is its
    last (max_tokens) is left out."""
    sched = scheduler()
    a, b = request("a", 6, arrival=0), request("b", 6, arrival=1)
    b.max_tokens = 2
    for r in (a, b):
        sched.add(r)
    assert plan(step(sched)) == [("a", 6), ("b", 6)]  # b has its first token: 1 of 2
    for r in (a, b):  # the next step samples a token for each, not yet appended
        r.num_computed_tokens += 1
        r.num_pending = 1
    out = sched.schedule()
    assert plan(out) == [("a", 1)]  # b's pending token is its last
    assert out.scheduled[0].completes_sequence
    assert len(sched.kv_cache.block_ids("a")) == 2  # 7 known tokens + the pending one
