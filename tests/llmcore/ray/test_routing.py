"""llmcore.ray.routing: chained prefix hashes, affinity, spilling, load, replicas down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmcore.errors import EngineDeadError
from llmcore.ray.routing import (
    ROUTERS,
    Decision,
    LeastLoadRouter,
    PrefixAffinityRouter,
    Reason,
    RoundRobinRouter,
    Router,
    RoutingError,
    make_router,
    prefix_hashes,
)

BS = 4  # block size of every test


def tokens(seed: int, n: int) -> list[int]:
    """`n` token ids of their own for each seed."""
    return [seed * 1000 + i for i in range(n)]


def affinity(num_replicas: int = 4, **options: Any) -> PrefixAffinityRouter:
    return PrefixAffinityRouter(num_replicas, block_size=BS, seed=0, **options)


# ---- chained hashes ---------------------------------------------------------------------


def test_same_prefix_same_leading_hashes() -> None:
    shared = tokens(1, 3 * BS)
    a = prefix_hashes([*shared, *tokens(2, 2 * BS)], BS)
    b = prefix_hashes([*shared, *tokens(3, 2 * BS)], BS)
    assert len(a) == len(b) == 5
    assert a[:3] == b[:3]
    assert a[3] != b[3] and a[4] != b[4]


def test_hashes_are_chained() -> None:
    """A different first block changes every later hash, even of equal blocks."""
    rest = tokens(1, 3 * BS)
    a = prefix_hashes([*tokens(2, BS), *rest], BS)
    b = prefix_hashes([*tokens(3, BS), *rest], BS)
    assert all(x != y for x, y in zip(a, b, strict=True))


def test_cache_salt_changes_every_hash() -> None:
    prompt = tokens(1, 3 * BS)
    plain = prefix_hashes(prompt, BS)
    salted = prefix_hashes(prompt, BS, "tenant-a")
    other = prefix_hashes(prompt, BS, "tenant-b")
    assert salted == prefix_hashes(prompt, BS, "tenant-a")
    for x, y, z in zip(plain, salted, other, strict=True):
        assert len({x, y, z}) == 3


def test_partial_block_ignored() -> None:
    prompt = tokens(1, 2 * BS + BS - 1)
    assert prefix_hashes(prompt, BS) == prefix_hashes(prompt[: 2 * BS], BS)
    assert len(prefix_hashes(prompt, BS)) == 2
    assert prefix_hashes(tokens(1, BS - 1), BS) == []


def test_hashes_agree_across_processes() -> None:
    """Front ends in other processes (another string-hash seed) get the same hashes."""
    prompt = tokens(1, 3 * BS)
    code = (
        "import json, sys; from llmcore.ray.routing import prefix_hashes; "
        f"print(json.dumps([prefix_hashes({prompt}, {BS}), prefix_hashes({prompt}, {BS}, 's')]))"
    )
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == [prefix_hashes(prompt, BS), prefix_hashes(prompt, BS, "s")]


# ---- affinity ---------------------------------------------------------------------------


def test_shared_long_prefix_goes_to_one_replica() -> None:
    router = affinity(8)
    system = tokens(1, 10 * BS)
    first = router.choose([*system, *tokens(2, BS)])
    assert first.reason is Reason.LEAST_LOAD
    for user in range(3, 10):
        decision = router.choose([*system, *tokens(user, BS)])
        assert decision == Decision(first.replica, Reason.AFFINITY, matched_blocks=10)
    stats = router.statistics()
    assert stats.decisions == {"least_load": 1, "affinity": 7}
    assert stats.matched_blocks == 70 and stats.prompt_blocks == 8 * 11


def test_conversation_stays_on_its_replica() -> None:
    router = affinity(8)
    prompt = tokens(1, 6 * BS)
    replica = router.choose(prompt).replica
    router.started(replica)
    for turn in range(2, 6):
        for other in range(3):  # other conversations come and go in between
            r = router.choose(tokens(100 * turn + other, 6 * BS)).replica
            router.started(r)
            router.finished(r)
        prompt = [*prompt, *tokens(turn, 3 * BS)]  # the answer and the next message
        decision = router.choose(prompt)
        assert decision.replica == replica and decision.reason is Reason.AFFINITY
        assert decision.matched_blocks == len(prompt) // BS - 3


def test_a_short_shared_prefix_does_not_pull_traffic() -> None:
    """Prompts that share only their first block (a chat template's header) are
    spread by load, not sent where the last one went."""
    router = affinity(4)
    header = tokens(1, BS)
    for user in range(2, 42):
        decision = router.choose([*header, *tokens(user, 7 * BS)])
        assert decision.reason is Reason.LEAST_LOAD
        router.started(decision.replica)
    loads = router.book.in_flight
    assert max(loads) - min(loads) <= 2, loads


def test_min_match_is_a_fraction_of_the_prompt() -> None:
    router = affinity(4, min_match=0.5)
    shared = tokens(1, 4 * BS)
    owner = router.choose([*shared, *tokens(2, 4 * BS)]).replica
    # 4 of 8 blocks remembered: enough; 4 of 9: not.
    assert router.choose([*shared, *tokens(3, 4 * BS)]) == Decision(owner, Reason.AFFINITY, 4)
    assert router.choose([*shared, *tokens(4, 5 * BS)]).reason is Reason.LEAST_LOAD


def test_the_less_loaded_holder_takes_the_prefix() -> None:
    router = affinity(4, spill_margin=0, spill_ratio=0.0)
    prompt = tokens(1, 4 * BS)
    first = router.choose(prompt).replica
    router.report_load(first, 8)  # mean 2: spill
    spilled = router.choose(prompt)
    assert spilled.reason is Reason.SPILL and spilled.replica != first
    router.spill_margin = 100
    router.report_load(spilled.replica, 3)  # both hold the prefix; the less loaded takes it
    assert router.choose(prompt) == Decision(spilled.replica, Reason.AFFINITY, 4)
    router.report_load(first, 2)
    assert router.choose(prompt) == Decision(first, Reason.AFFINITY, 4)


@pytest.mark.parametrize("max_holders", [2, 3])
def test_holders_are_bounded(max_holders: int) -> None:
    router = affinity(4, spill_margin=0, spill_ratio=0.0, max_holders=max_holders)
    prompt = tokens(1, 4 * BS)
    a = router.choose(prompt).replica
    router.report_load(a, 10)
    b = router.choose(prompt).replica  # spills
    router.report_load(b, 10)
    c = router.choose(prompt).replica  # spills again
    assert len({a, b, c}) == 3
    router.spill_margin = 100
    for replica, load in ((a, 0), (b, 1), (c, 1)):
        router.report_load(replica, load)
    expected = a if max_holders == 3 else b  # with 2, `a` is no longer remembered
    assert router.choose(prompt).replica == expected


# ---- spilling ---------------------------------------------------------------------------


def test_spill_to_least_loaded_which_then_holds_the_prefix() -> None:
    router = affinity(4, spill_margin=2, spill_ratio=0.0)
    prompt = tokens(1, 4 * BS)
    owner = router.choose(prompt).replica
    others = [r for r in range(4) if r != owner]
    for r, load in zip(others, (3, 1, 2), strict=True):
        router.report_load(r, load)
    least = others[1]
    router.report_load(owner, 4)  # mean 10/4 = 2.5; 4 <= 2.5 + 2: stays
    assert router.choose(prompt) == Decision(owner, Reason.AFFINITY, 4)
    router.report_load(owner, 6)  # mean 3; 6 > 3 + 2: spills
    assert router.choose(prompt) == Decision(least, Reason.SPILL)
    router.started(least)  # the new holder is the less loaded one now
    assert router.choose(prompt) == Decision(least, Reason.AFFINITY, 4)
    assert router.statistics().decisions == {"least_load": 1, "affinity": 2, "spill": 1}


def test_spill_threshold_follows_the_mean_not_the_least() -> None:
    """One idle replica among busy ones does not pull a conversation off its cache."""
    router = affinity(8)  # the defaults: 25% of the mean plus 4
    prompt = tokens(1, 4 * BS)
    owner = router.choose(prompt).replica
    others = [r for r in range(8) if r != owner]
    for r in others[1:]:
        router.report_load(r, 8)
    router.report_load(others[0], 0)
    router.report_load(owner, 12)  # mean 60/8 = 7.5: the threshold is 7.5 x 1.25 + 4 = 13.4
    assert router.choose(prompt) == Decision(owner, Reason.AFFINITY, 4)
    router.report_load(owner, 15)
    assert router.choose(prompt) == Decision(others[0], Reason.SPILL)


# ---- load -------------------------------------------------------------------------------


def test_load_is_the_larger_of_reported_and_in_flight() -> None:
    router = LeastLoadRouter(2, block_size=BS)
    for _ in range(3):
        router.started(0)
    assert router.book.load(0) == 3
    router.report_load(0, 1)  # a push from before the burst arrived
    assert router.book.load(0) == 3
    router.report_load(0, 7)
    assert router.book.load(0) == 7
    for _ in range(3):
        router.finished(0)
    assert router.book.load(0) == 7
    router.report_load(0, 0)
    assert router.book.load(0) == 0
    router.finished(1)  # never below zero
    assert router.book.in_flight == [0, 0]


def test_power_of_two_choices_prefers_the_less_loaded() -> None:
    router = LeastLoadRouter(2, block_size=BS, seed=1)
    router.report_load(0, 3)
    router.report_load(1, 1)
    assert {router.choose(tokens(i, BS)).replica for i in range(20)} == {1}
    # With many replicas it never takes a busy one over an idle one it drew.
    router = LeastLoadRouter(8, block_size=BS, seed=2)
    for r in range(1, 8):
        router.report_load(r, 5)
    chosen = [router.choose([]).replica for _ in range(400)]
    assert 0.15 < chosen.count(0) / len(chosen) < 0.35  # drawn 2 of 8 times: 25%


# ---- replicas down ----------------------------------------------------------------------


def test_mark_down_forgets_prefixes_and_is_avoided() -> None:
    router = affinity(2)
    prompt = tokens(1, 4 * BS)
    owner = router.choose(prompt).replica
    router.started(owner)
    router.started(owner)
    assert router.statistics().remembered_prefixes == 4
    router.mark_down(owner)
    assert router.statistics().remembered_prefixes == 0
    for i in range(10):
        decision = router.choose([*prompt, *tokens(i + 2, BS)])
        assert decision.replica != owner
    router.mark_up(owner)
    assert router.book.load(owner) == 0  # its in-flight count restarted


def test_mark_down_keeps_the_other_holders() -> None:
    router = affinity(4, spill_margin=0, spill_ratio=0.0)
    prompt = tokens(1, 4 * BS)
    first = router.choose(prompt).replica
    router.report_load(first, 8)
    second = router.choose(prompt).replica
    router.mark_down(second)
    router.report_load(first, 0)
    assert router.statistics().remembered_prefixes == 4
    assert router.choose(prompt) == Decision(first, Reason.AFFINITY, 4)


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_no_replica_up_is_a_routing_error(name: str) -> None:
    router = make_router(name, 3, block_size=BS)
    for r in range(3):
        router.mark_down(r)
    with pytest.raises(RoutingError) as raised:
        router.choose(tokens(1, 2 * BS))
    assert isinstance(raised.value, EngineDeadError)
    router.mark_up(1)
    assert router.choose(tokens(1, 2 * BS)).replica == 1


def test_round_robin_skips_down_replicas() -> None:
    router = RoundRobinRouter(3, block_size=BS)
    assert [router.choose([]).replica for _ in range(4)] == [0, 1, 2, 0]
    router.mark_down(2)
    assert [router.choose([]).replica for _ in range(4)] == [1, 0, 1, 0]
    assert router.statistics().decisions == {"round_robin": 8}


# ---- bounds and names -------------------------------------------------------------------


def test_remembered_prefixes_are_an_lru_bound() -> None:
    router = affinity(4, max_prefixes=4)
    a, c, d = tokens(1, 3 * BS), tokens(2, BS), tokens(3, BS)
    owner = router.choose(a).replica
    router.choose(c)
    assert router.statistics().remembered_prefixes == 4
    assert router.choose(a) == Decision(owner, Reason.AFFINITY, 3)  # a is the most recent
    router.choose(d)  # one over the bound: the least recently used (c) goes
    assert router.statistics().remembered_prefixes == 4
    assert router.choose(a) == Decision(owner, Reason.AFFINITY, 3)
    assert router.choose(c).reason is Reason.LEAST_LOAD


def test_make_router_by_name() -> None:
    expected: dict[str, type[Router]] = {
        "prefix-affinity": PrefixAffinityRouter,
        "least-load": LeastLoadRouter,
        "round-robin": RoundRobinRouter,
    }
    assert ROUTERS == expected
    for name, cls in expected.items():
        router = make_router(name, 5, block_size=16)
        assert type(router) is cls and router.num_replicas == 5 and router.block_size == 16
    tuned = make_router("prefix-affinity", 2, block_size=16, spill_margin=7, min_match=0.5)
    assert isinstance(tuned, PrefixAffinityRouter)
    assert (tuned.spill_margin, tuned.min_match) == (7, 0.5)
    with pytest.raises(ValueError, match="round-robin"):
        make_router("random", 2, block_size=16)
    with pytest.raises(ValueError):
        make_router("least-load", 0, block_size=16)
