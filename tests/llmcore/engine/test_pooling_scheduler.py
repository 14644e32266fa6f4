"""Encode (pooling) requests in the scheduler: they take what the step's token budget leaves
after generation, first come first served, at least one per step when nothing
else runs, and never more than `max_num_seqs`."""

from __future__ import annotations

from llmcore.engine.kv_cache_manager import KVCacheManager
from llmcore.engine.request import EncodeRequest
from llmcore.engine.scheduler import Scheduler
from llmcore.pooling import PoolingParams


def _scheduler(budget: int = 100, max_num_seqs: int = 8) -> Scheduler:
    kv = KVCacheManager(64, 16, True)
    return Scheduler(kv, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget)


def _request(i: int, n: int) -> EncodeRequest:
    return EncodeRequest(f"p{i}", [1] * n, PoolingParams(), float(i))


def test_pooling_fills_the_budget_in_arrival_order() -> None:
    sched = _scheduler()
    for i, n in enumerate([40, 40, 30, 10]):
        sched.add_encode(_request(i, n))
    first = sched.schedule()
    assert [r.request_id for r in first.encode] == ["p0", "p1"]  # 80; p2 (30) waits
    assert [r.request_id for r in sched.schedule().encode] == ["p2", "p3"]
    assert not sched.has_unfinished()


def test_an_input_longer_than_the_budget_runs_alone() -> None:
    sched = _scheduler(budget=32)
    sched.add_encode(_request(0, 50))
    sched.add_encode(_request(1, 5))
    assert [r.request_id for r in sched.schedule().encode] == ["p0"]
    assert [r.request_id for r in sched.schedule().encode] == ["p1"]


def test_max_num_seqs_caps_a_step_and_aborts_drop_waiting_requests() -> None:
    sched = _scheduler(max_num_seqs=2)
    for i in range(4):
        sched.add_encode(_request(i, 1))
    assert sched.abort_encode("p1") and not sched.abort_encode("nope")
    assert [r.request_id for r in sched.schedule().encode] == ["p0", "p2"]
    assert sched.statistics().num_waiting == 1
