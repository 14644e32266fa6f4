"""KVCacheManager: block tables, all-or-nothing allocation, prefix caching, no leaks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from llmcore.engine import kv_cache_manager
from llmcore.engine.block_pool import BlockHash, KVBlock, hash_block
from llmcore.engine.kv_cache_manager import KVCacheManager, KVRequest

BS = 4  # block size of every test


@dataclass(slots=True)
class FakeRequest:
    """A test double for the `KVRequest` protocol."""

    request_id: str
    all_token_ids: list[int]
    num_prompt_tokens: int = 0
    num_computed_tokens: int = 0
    block_hashes: list[BlockHash] = field(default_factory=list)
    cache_salt: str | None = None

    def __post_init__(self) -> None:
        self.num_prompt_tokens = self.num_prompt_tokens or len(self.all_token_ids)


def assert_ids_follow_tables(mgr: KVCacheManager) -> None:
    """`block_ids` (kept in step with the tables, not rebuilt) equals each table's
    block ids, holes as 0, in every group."""
    for g, group in enumerate(mgr.groups):
        assert group.ids.keys() == group.tables.keys()
        for rid, table in group.tables.items():
            want = [0 if b is None else b.block_id for b in table]
            assert mgr.group_block_ids(rid)[g] == want


def _as_protocol(request: FakeRequest) -> KVRequest:
    return request  # mypy checks that FakeRequest satisfies the protocol


def expected_hashes(tokens: list[int], salt: str | None = None) -> list[BlockHash]:
    hashes: list[BlockHash] = []
    for i in range(len(tokens) // BS):
        extra = (salt,) if i == 0 and salt is not None else None
        hashes.append(
            hash_block(hashes[-1] if hashes else None, tokens[i * BS : (i + 1) * BS], extra)
        )
    return hashes


def ids(blocks: object) -> list[int]:
    return [b.block_id for b in blocks]  # type: ignore[attr-defined]


def snapshot(mgr: KVCacheManager, *request_ids: str) -> object:
    pool = mgr.pool
    return (
        ids(pool.free_queue),
        [(b.ref_cnt, b.block_hash) for b in pool.blocks],
        {h: b.block_id for h, b in pool.cached_blocks.items()},
        {rid: mgr.block_ids(rid) for rid in request_ids},
    )


def admit(mgr: KVCacheManager, req: FakeRequest, num_new: int | None = None) -> list[KVBlock]:
    """Prefix lookup + allocation + 'run the step' for the whole rest of the prompt."""
    hits, num_hit = mgr.get_computed_blocks(req)
    todo = len(req.all_token_ids) - num_hit if num_new is None else num_new
    got = mgr.allocate_slots(req, todo, hits)
    assert got is not None
    req.num_computed_tokens = num_hit + todo
    return hits


PROMPT = list(range(100, 114))  # 14 tokens: 3 full blocks + 2


# ---- allocation and block tables ---------------------------------------------------------


def test_allocation_and_block_tables() -> None:
    mgr = KVCacheManager(num_blocks=10, block_size=BS)
    a = FakeRequest("a", list(range(10)))
    b = FakeRequest("b", list(range(50, 55)))
    assert mgr.allocate_slots(a, 10) is not None
    assert mgr.allocate_slots(b, 5) is not None
    assert mgr.block_ids("a") == [0, 1, 2] and mgr.block_ids("b") == [3, 4]
    assert mgr.block_ids("unknown") == []
    stats = mgr.statistics()
    assert (stats.num_blocks, stats.num_free_blocks, stats.num_used_blocks) == (10, 5, 5)
    assert mgr.usage == 0.5 and mgr.num_free_blocks == 5
    assert mgr.can_fit(20) and not mgr.can_fit(21)
    mgr.free(a)
    mgr.free(a)  # idempotent
    mgr.free(FakeRequest("never-seen", [1]))
    assert mgr.block_ids("a") == [] and mgr.num_free_blocks == 8


def test_allocate_only_what_is_missing() -> None:
    mgr = KVCacheManager(num_blocks=10, block_size=BS)
    req = FakeRequest("r", list(range(6)))
    assert ids(mgr.allocate_slots(req, 6) or []) == [0, 1]
    req.num_computed_tokens = 6
    req.all_token_ids.append(6)
    assert mgr.allocate_slots(req, 1) == []  # still room in block 1
    assert mgr.block_ids("r") == [0, 1]


def test_out_of_blocks_returns_none_and_changes_nothing() -> None:
    mgr = KVCacheManager(num_blocks=4, block_size=BS)
    a = FakeRequest("a", list(range(12)))
    admit(mgr, a)
    b = FakeRequest("b", list(range(50, 59)))  # needs 3 blocks, 1 free
    before = snapshot(mgr, "a", "b")
    assert mgr.allocate_slots(b, 9) is None
    assert snapshot(mgr, "a", "b") == before
    # A running request growing past the pool also gets None, untouched.
    a.all_token_ids.extend(range(12, 20))
    before = snapshot(mgr, "a")
    assert mgr.allocate_slots(a, 8) is None
    assert snapshot(mgr, "a") == before


# ---- prefix caching ------------------------------------------------------------------------


def test_prefix_hit_for_shared_three_block_prefix() -> None:
    mgr = KVCacheManager(num_blocks=16, block_size=BS)
    a = FakeRequest("a", list(PROMPT))
    assert admit(mgr, a) == []
    b = FakeRequest("b", [*PROMPT[:12], 7, 8, 9])
    hits, num_hit = mgr.get_computed_blocks(b)
    assert num_hit == 3 * BS and ids(hits) == mgr.block_ids("a")[:3]
    stats = mgr.statistics()
    assert stats.prefix_cache_queries == 14 + 15 and stats.prefix_cache_hits == 12
    assert mgr.allocate_slots(b, 3, hits) is not None
    assert mgr.block_ids("b")[:3] == mgr.block_ids("a")[:3]
    assert [blk.ref_cnt for blk in hits] == [2, 2, 2]
    assert b.block_hashes == expected_hashes(b.all_token_ids)


def test_never_a_full_hit() -> None:
    mgr = KVCacheManager(num_blocks=16, block_size=BS)
    admit(mgr, FakeRequest("a", PROMPT[:12]))
    same = FakeRequest("b", PROMPT[:12])  # a multiple of block_size, all cached
    hits, num_hit = mgr.get_computed_blocks(same)
    assert len(hits) == 2 and num_hit == 8
    one_more = FakeRequest("c", PROMPT[:13])
    assert mgr.get_computed_blocks(one_more)[1] == 12


def test_chained_hash_misses_when_an_earlier_block_differs() -> None:
    mgr = KVCacheManager(num_blocks=16, block_size=BS)
    admit(mgr, FakeRequest("a", list(PROMPT)))
    b = FakeRequest("b", [999, *PROMPT[1:]])  # blocks 1 and 2 have the same tokens
    assert mgr.get_computed_blocks(b) == ([], 0)
    assert b.block_hashes[1:] != expected_hashes(PROMPT)[1:]


def test_cache_salt_separates_prefixes() -> None:
    mgr = KVCacheManager(num_blocks=16, block_size=BS)
    admit(mgr, FakeRequest("a", list(PROMPT), cache_salt="tenant-1"))
    assert mgr.get_computed_blocks(FakeRequest("b", list(PROMPT))) == ([], 0)
    assert mgr.get_computed_blocks(FakeRequest("c", list(PROMPT), cache_salt="x"))[1] == 0
    assert mgr.get_computed_blocks(FakeRequest("d", list(PROMPT), cache_salt="tenant-1"))[1] == 12
    salted = FakeRequest("e", list(PROMPT), cache_salt="tenant-1")
    mgr.get_computed_blocks(salted)
    assert all(x != y for x, y in zip(salted.block_hashes, expected_hashes(PROMPT), strict=True))


def test_caching_off_gives_no_hits() -> None:
    mgr = KVCacheManager(num_blocks=16, block_size=BS, enable_prefix_caching=False)
    admit(mgr, FakeRequest("a", list(PROMPT)))
    assert mgr.get_computed_blocks(FakeRequest("b", list(PROMPT))) == ([], 0)
    assert all(b.block_hash is None for b in mgr.pool.blocks)
    assert len(mgr.pool.cached_blocks) == 0
    stats = mgr.statistics()
    assert stats.prefix_cache_queries == 0 and stats.prefix_cache_hits == 0


def test_freed_blocks_stay_cached_and_are_evicted_lru_tail_first() -> None:
    mgr = KVCacheManager(num_blocks=8, block_size=BS)
    a = FakeRequest("a", list(PROMPT))  # blocks 0..3, 0..2 full and cached
    admit(mgr, a)
    mgr.free(a)
    # Never-used blocks first, then a's blocks tail first.
    assert ids(mgr.pool.free_queue) == [4, 5, 6, 7, 3, 2, 1, 0]
    assert mgr.num_free_blocks == 8 and len(mgr.pool.cached_blocks) == 3
    # A stranger takes 6 blocks: the 4 never used, a's partial block 3, a's block 2.
    admit(mgr, FakeRequest("c", list(range(500, 524))))
    assert sorted(mgr.block_ids("c")) == [2, 3, 4, 5, 6, 7]
    # a's first two blocks survived; its third (the tail) was evicted first.
    b = FakeRequest("b", list(PROMPT))
    hits, num_hit = mgr.get_computed_blocks(b)
    assert ids(hits) == [0, 1] and num_hit == 8


def test_hit_on_free_cached_block_takes_it_out_of_the_free_queue() -> None:
    mgr = KVCacheManager(num_blocks=6, block_size=BS)
    a = FakeRequest("a", list(PROMPT))
    admit(mgr, a)
    mgr.free(a)
    b = FakeRequest("b", list(PROMPT))
    hits = admit(mgr, b)
    assert ids(hits) == [0, 1, 2]
    assert all(blk.ref_cnt == 1 for blk in hits)
    assert not set(ids(hits)) & set(ids(mgr.pool.free_queue))
    assert mgr.num_free_blocks == 6 - 4


def test_hits_on_free_blocks_count_against_free_space() -> None:
    mgr = KVCacheManager(num_blocks=4, block_size=BS)
    a = FakeRequest("a", PROMPT[:13])  # 4 blocks, 3 of them cached
    admit(mgr, a)
    mgr.free(a)
    assert mgr.num_free_blocks == 4
    # 17 tokens: 3 hits + 2 new blocks, but only 1 free block is not a hit.
    too_long = FakeRequest("b", [*PROMPT[:12], 1, 2, 3, 4, 5])
    hits, _ = mgr.get_computed_blocks(too_long)
    before = snapshot(mgr, "b")
    assert mgr.allocate_slots(too_long, 5, hits) is None
    assert snapshot(mgr, "b") == before and len(mgr.pool.cached_blocks) == 3
    fits = FakeRequest("c", [*PROMPT[:12], 1, 2, 3, 4])  # 3 hits + 1 new block
    admit(mgr, fits)
    assert mgr.num_free_blocks == 0


def test_shared_blocks_are_ref_counted() -> None:
    mgr = KVCacheManager(num_blocks=16, block_size=BS)
    a = FakeRequest("a", list(PROMPT))
    b = FakeRequest("b", [*PROMPT[:12], 42, 43])
    admit(mgr, a)
    admit(mgr, b)
    shared = [mgr.pool.blocks[i] for i in mgr.block_ids("a")[:3]]
    mgr.free(a)
    assert all(blk.ref_cnt == 1 for blk in shared)
    assert not set(ids(shared)) & set(ids(mgr.pool.free_queue))
    assert mgr.num_free_blocks == 16 - 4
    mgr.free(b)
    assert mgr.num_free_blocks == 16 and all(blk.ref_cnt == 0 for blk in mgr.pool.blocks)


def test_duplicate_blocks_do_not_overwrite_the_cache() -> None:
    mgr = KVCacheManager(num_blocks=16, block_size=BS)
    a = FakeRequest("a", list(PROMPT))
    b = FakeRequest("b", list(PROMPT))
    # Both look up before either allocates (the same step): no hits for either.
    assert mgr.get_computed_blocks(a) == ([], 0)
    assert mgr.get_computed_blocks(b) == ([], 0)
    assert mgr.allocate_slots(a, 14) is not None
    assert mgr.allocate_slots(b, 14) is not None
    a_blocks, b_blocks = mgr.block_ids("a"), mgr.block_ids("b")
    cached = {h: blk.block_id for h, blk in mgr.pool.cached_blocks.items()}
    assert cached == dict(zip(expected_hashes(PROMPT), a_blocks[:3], strict=True))
    assert all(mgr.pool.blocks[i].block_hash is None for i in b_blocks)
    mgr.free(a)
    c = FakeRequest("c", list(PROMPT))
    assert ids(mgr.get_computed_blocks(c)[0]) == a_blocks[:3]


def test_decode_growth_across_block_boundaries() -> None:
    mgr = KVCacheManager(num_blocks=8, block_size=BS)
    req = FakeRequest("r", [1, 2, 3])
    admit(mgr, req)
    assert mgr.block_ids("r") == [0] and req.block_hashes == []
    for token in range(10, 24):
        req.all_token_ids.append(token)  # sampled last step, now to be computed
        got = mgr.allocate_slots(req, 1)
        assert got is not None
        n = len(req.all_token_ids)
        assert len(got) == (1 if n % BS == 1 else 0)
        req.num_computed_tokens = n
        assert len(mgr.block_ids("r")) == -(-n // BS)
        # Every full block is hashed and cached as soon as its last token is known.
        assert req.block_hashes == expected_hashes(req.all_token_ids)
        table = [mgr.pool.blocks[i] for i in mgr.block_ids("r")]
        assert [blk.block_hash for blk in table[: n // BS]] == req.block_hashes
        assert all(blk.block_hash is None for blk in table[n // BS :])


def test_chunked_prefill_caches_only_allocated_full_blocks() -> None:
    mgr = KVCacheManager(num_blocks=8, block_size=BS)
    req = FakeRequest("r", list(PROMPT))
    assert mgr.allocate_slots(req, 6) is not None
    req.num_computed_tokens = 6
    assert len(mgr.pool.cached_blocks) == 1  # block 0 full; block 1 half allocated
    assert mgr.allocate_slots(req, 8) is not None
    req.num_computed_tokens = 14
    assert len(mgr.pool.cached_blocks) == 3 and mgr.block_ids("r") == [0, 1, 2, 3]


def test_preempted_request_reuses_its_hashes_and_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    mgr = KVCacheManager(num_blocks=8, block_size=BS)
    req = FakeRequest("r", list(PROMPT))
    admit(mgr, req)
    req.all_token_ids.extend([1, 2, 3])  # decoded 3 tokens: 17 tokens, 4 full blocks
    assert mgr.allocate_slots(req, 3) is not None
    first_table = mgr.block_ids("r")
    assert req.block_hashes == expected_hashes(req.all_token_ids)
    mgr.free(req)  # preempted
    req.num_computed_tokens = 0
    calls: list[object] = []
    monkeypatch.setattr(kv_cache_manager, "hash_block", lambda *a: calls.append(a))
    hits = admit(mgr, req)
    assert ids(hits) == first_table[:4] and calls == []  # the hashes live on the request


def test_reset_prefix_cache() -> None:
    mgr = KVCacheManager(num_blocks=8, block_size=BS)
    a = FakeRequest("a", list(PROMPT))
    admit(mgr, a)
    assert not mgr.reset_prefix_cache()
    mgr.free(a)
    assert mgr.reset_prefix_cache()
    assert mgr.get_computed_blocks(FakeRequest("b", list(PROMPT))) == ([], 0)


# ---- random interleavings ------------------------------------------------------------------

BASE = list(range(100, 112))
PREFIXES = [[], BASE[:4], BASE[:6], BASE[:8], BASE]
NUM_BLOCKS = 12


class KVCacheMachine(RuleBasedStateMachine):
    """Requests arrive, are admitted (with prefix hits), grow by chunks or decode steps,
    are preempted when blocks run out, resume, and finish, in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.mgr = KVCacheManager(NUM_BLOCKS, BS)
        self.running: dict[str, FakeRequest] = {}
        self.waiting: list[FakeRequest] = []
        self.next_id = 0

    @initialize(caching=st.booleans())
    def configure(self, caching: bool) -> None:
        self.mgr = KVCacheManager(NUM_BLOCKS, BS, enable_prefix_caching=caching)

    # -- rules --

    @rule(
        prefix=st.sampled_from(PREFIXES),
        suffix=st.lists(st.integers(0, 2), max_size=9),
        salt=st.sampled_from([None, None, "s"]),
        chunk=st.integers(1, 16),
    )
    def add(self, prefix: list[int], suffix: list[int], salt: str | None, chunk: int) -> None:
        tokens = [*prefix, *suffix] or [0]
        req = FakeRequest(f"r{self.next_id}", tokens, cache_salt=salt)
        self.next_id += 1
        self._admit(req, chunk)

    @precondition(lambda self: self.waiting)
    @rule(data=st.data(), chunk=st.integers(1, 16))
    def resume(self, data: st.DataObject, chunk: int) -> None:
        req = self.waiting.pop(data.draw(st.integers(0, len(self.waiting) - 1)))
        self._admit(req, chunk)

    @precondition(lambda self: self.running)
    @rule(data=st.data(), chunk=st.integers(1, 16), token=st.integers(0, 2))
    def grow(self, data: st.DataObject, chunk: int, token: int) -> None:
        req = self.running[data.draw(st.sampled_from(sorted(self.running)))]
        num_new = min(chunk, len(req.all_token_ids) - req.num_computed_tokens)
        before = snapshot(self.mgr, *self.running)
        if self.mgr.allocate_slots(req, num_new) is None:
            assert snapshot(self.mgr, *self.running) == before
            self._preempt(req)
            return
        self._ran(req, req.num_computed_tokens + num_new, token)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        req = self.running.pop(data.draw(st.sampled_from(sorted(self.running))))
        self.mgr.free(req)
        before = snapshot(self.mgr, *self.running)
        self.mgr.free(req)  # idempotent
        assert snapshot(self.mgr, *self.running) == before

    # -- helpers --

    def _admit(self, req: FakeRequest, chunk: int) -> None:
        hits, num_hit = self.mgr.get_computed_blocks(_as_protocol(req))
        assert num_hit == len(hits) * BS < len(req.all_token_ids)
        assert [b.block_hash for b in hits] == req.block_hashes[: len(hits)]
        num_new = min(chunk, len(req.all_token_ids) - num_hit)
        before = snapshot(self.mgr, *self.running, req.request_id)
        if self.mgr.allocate_slots(req, num_new, hits) is None:
            assert snapshot(self.mgr, *self.running, req.request_id) == before
            self.waiting.append(req)
            return
        self.running[req.request_id] = req
        self._ran(req, num_hit + num_new, token=1)

    def _ran(self, req: FakeRequest, num_computed: int, token: int) -> None:
        """The step ran: the new tokens are computed; a finished prefill samples one."""
        req.num_computed_tokens = num_computed
        if num_computed == len(req.all_token_ids):
            req.all_token_ids.append(token)

    def _preempt(self, req: FakeRequest) -> None:
        self.mgr.free(req)
        del self.running[req.request_id]
        req.num_computed_tokens = 0
        self.waiting.append(req)

    # -- invariants --

    @invariant()
    def block_ids_follow_the_tables(self) -> None:
        assert_ids_follow_tables(self.mgr)

    @invariant()
    def ref_counts_match_owners(self) -> None:
        owners: Counter[int] = Counter()
        for rid, req in self.running.items():
            table = self.mgr.block_ids(rid)
            assert len(table) == len(set(table)) == -(-req.num_computed_tokens // BS)
            owners.update(table)
        for rid in (r.request_id for r in self.waiting):
            assert self.mgr.block_ids(rid) == []
        for block in self.mgr.pool.blocks:
            assert block.ref_cnt == owners[block.block_id]

    @invariant()
    def free_queue_is_exactly_the_unowned_blocks(self) -> None:
        pool = self.mgr.pool
        free = ids(pool.free_queue)
        assert len(free) == len(pool.free_queue) == self.mgr.num_free_blocks
        assert sorted(free) == [b.block_id for b in pool.blocks if b.ref_cnt == 0]
        assert len(free) + sum(b.ref_cnt > 0 for b in pool.blocks) == NUM_BLOCKS

    @invariant()
    def cache_map_is_consistent(self) -> None:
        pool = self.mgr.pool
        for block_hash, block in pool.cached_blocks.items():
            assert block.block_hash == block_hash
        hashed = [b for b in pool.blocks if b.block_hash is not None]
        assert len(hashed) == len(pool.cached_blocks)
        if not self.mgr.enable_prefix_caching:
            assert not hashed

    @invariant()
    def cached_blocks_hold_their_requests_tokens(self) -> None:
        for rid, req in self.running.items():
            expected = expected_hashes(req.all_token_ids, req.cache_salt)
            assert req.block_hashes == expected[: len(req.block_hashes)]
            for i, block_id in enumerate(self.mgr.block_ids(rid)):
                block = self.mgr.pool.blocks[block_id]
                if block.block_hash is not None:
                    assert i < req.num_computed_tokens // BS
                    assert block.block_hash == expected[i]

    def teardown(self) -> None:
        for req in list(self.running.values()):
            self.mgr.free(req)
        assert self.mgr.num_free_blocks == NUM_BLOCKS
        assert all(b.ref_cnt == 0 for b in self.mgr.pool.blocks)
        assert self.mgr.statistics().num_used_blocks == 0


KVCacheMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestKVCacheMachine = KVCacheMachine.TestCase


# ---- sliding-window groups -----------------------------------------------------------------


def _decode_to(mgr: KVCacheManager, req: FakeRequest, total: int) -> None:
    """Grow `req` one token a step up to `total` tokens, as the scheduler would."""
    while req.num_computed_tokens < total:
        req.all_token_ids.append(len(req.all_token_ids) + 1000)
        assert mgr.allocate_slots(req, 1) is not None
        req.num_computed_tokens += 1


def test_sliding_group_holds_only_the_window() -> None:
    """A full group and a window of 8: after 200 tokens the full table has 50
    blocks and the sliding one at most ceil((8 - 1 + 1) / 4) + 1 live blocks,
    the rest holes (block 0) before the window."""
    mgr = KVCacheManager([60, 10], BS, windows=(None, 8))
    req = FakeRequest("r", list(range(20)))
    admit(mgr, req)
    _decode_to(mgr, req, 200)
    full, sliding = mgr.group_block_ids("r")
    assert len(full) == len(sliding) == 50 and len(set(full)) == 50
    live = [b for b in mgr.groups[1].tables["r"] if b is not None]
    assert len(live) <= 3 and all(b is None for b in mgr.groups[1].tables["r"][:47])
    stats = mgr.statistics()
    assert [(g.window, g.num_blocks, g.num_used_blocks) for g in stats.groups] == [
        (None, 60, 50),
        (8, 10, len(live)),
    ]
    assert stats.num_used_blocks == 50 + len(live) and stats.num_blocks == 70
    assert_ids_follow_tables(mgr)
    mgr.free(req)
    assert mgr.num_free_blocks == 70


def test_sliding_prefix_hit_needs_only_the_window() -> None:
    """A second request over the same 40 tokens hits 9 blocks in both groups; in
    the sliding group only the blocks its first new token sees are taken."""
    mgr = KVCacheManager([20, 20], BS, windows=(None, 6))
    tokens = list(range(500, 541))
    a = FakeRequest("a", list(tokens))
    admit(mgr, a)
    mgr.free(a)
    b = FakeRequest("b", list(tokens))
    hits, num_hit = mgr.get_computed_blocks(b)
    assert num_hit == 40
    full_hit, sliding_hit = hits.by_group
    assert all(block is not None for block in full_hit) and len(full_hit) == 10
    # the first new token (position 40) sees 35..40: blocks 8 and 9
    assert sliding_hit[:8] == [None] * 8 and all(x is not None for x in sliding_hit[8:])
    assert mgr.allocate_slots(b, 1, hits) is not None
    assert mgr.group_block_ids("b")[0][:10] == ids(full_hit)
    assert_ids_follow_tables(mgr)


def test_sliding_hit_shrinks_when_the_window_was_evicted() -> None:
    """The sliding blocks a full-length hit would need were evicted: the hit falls
    back to a length whose window is still cached, and never past it."""
    mgr = KVCacheManager([30, 4], BS, windows=(None, 5))
    a = FakeRequest("a", list(range(700, 733)))  # 33 tokens: 8 full blocks
    admit(mgr, a, 4)
    while a.num_computed_tokens < 33:  # chunks of 4: the window fits the small pool
        todo = min(4, 33 - a.num_computed_tokens)
        assert mgr.allocate_slots(a, todo) is not None
        a.num_computed_tokens += todo
    mgr.free(a)
    # a new request takes the sliding pool's free blocks, evicting a's cached ones
    other = FakeRequest("o", list(range(900, 916)))
    admit(mgr, other)
    mgr.free(other)
    b = FakeRequest("b", list(range(700, 733)))
    hits, num_hit = mgr.get_computed_blocks(b)
    first = mgr.groups[1].first_visible(num_hit, BS)
    assert all(x is not None for x in hits.by_group[1][first : num_hit // BS])
    cached = [mgr.groups[1].pool.get_cached_block(h) is not None for h in b.block_hashes[:8]]
    # 32 tokens need block 7 (the token at 32 sees 28..32); else a shorter hit
    assert (num_hit == 32) == cached[7] and cached[7] != (num_hit < 32)
    assert num_hit < 32, "the test meant block 7 to be evicted"
    assert mgr.allocate_slots(b, 8, hits) is not None  # a chunk the pool holds
    assert_ids_follow_tables(mgr)


def test_all_sliding_model_and_all_or_nothing() -> None:
    """One sliding group (Mistral): a request larger than the pool runs within
    its window; a step that cannot fit changes nothing."""
    mgr = KVCacheManager(4, BS, windows=(8,))
    req = FakeRequest("r", list(range(8)))
    admit(mgr, req)
    _decode_to(mgr, req, 100)
    assert sum(1 for b in mgr.groups[0].tables["r"] if b is not None) <= 3
    assert_ids_follow_tables(mgr)
    before = snapshot(mgr, "r")
    assert mgr.allocate_slots(req, 40) is None  # 40 new tokens need 10 blocks
    assert snapshot(mgr, "r") == before
