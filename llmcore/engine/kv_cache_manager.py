"""`KVCacheManager`: each request's block tables, over `BlockPool`s, with prefix caching.

A model's layers fall into KV cache groups by their attention window
(`llmcore.model_api.kv_cache_groups`): full-attention layers, and one group per
sliding window (Gemma interleaves both; Mistral v0.1 is all sliding). Each group
has a pool of its own and a block table per request, and block `i` of every
table holds the same tokens (`i * block_size` onward). A sliding group keeps only
the blocks some new token can still see: once a request's next token is at
position `p`, blocks wholly before `p - window + 1` go back to the pool (still
cached under their hash until evicted), and their places in the table are holes
(`None`, block id 0 to the model, which never reads them). A long request thus
holds `ceil((window - 1 + step tokens) / block_size) + 1` blocks at most in a
sliding group, however long it grows.

Invariants it keeps:
- in a full group, a live request's table holds `ceil(tokens allocated /
  block_size)` distinct blocks, and the request holds one reference on each; in
  a sliding group the same, less the holes before its window;
- `allocate_slots` either allocates everything asked for, in every group, or
  changes nothing (None);
- a request's block `i` is cached only under `request.block_hashes[i]`, the chained
  hash of its tokens, and only once those tokens are final;
- a prefix-cache hit of `n` blocks has, in every group, each block the first new
  token can see: all `n` in a full group, the last ones within the window in a
  sliding group.

No tensors: the model runner owns the KV cache and addresses it by block id.
Each table is also kept as block ids in numpy (`BlockRow`), extended as blocks
are added, which the runner reads without a Python list per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from llmcore.engine.block_pool import BlockHash, BlockPool, KVBlock, hash_block

_EMPTY = np.zeros(0, np.int32)
_EMPTY.flags.writeable = False


class KVRequest(Protocol):
    """What the manager reads of a request; plain attributes or properties both fit.

    The manager never assigns these; it only appends to `block_hashes` in place.
    """

    @property
    def request_id(self) -> str: ...
    @property
    def all_token_ids(self) -> list[int]: ...  # prompt + output so far
    @property
    def num_prompt_tokens(self) -> int: ...
    @property
    def num_computed_tokens(self) -> int: ...  # tokens whose KV is already cached
    @property
    def block_hashes(self) -> list[BlockHash]: ...  # of its full blocks; extended here
    @property
    def cache_salt(self) -> str | None: ...


@dataclass(slots=True, frozen=True)
class KVGroupStatistics:
    window: int | None  # the group's sliding window; None: full attention
    num_blocks: int
    num_used_blocks: int


@dataclass(slots=True, frozen=True)
class KVCacheStatistics:
    num_blocks: int
    num_free_blocks: int  # includes free blocks still holding a cached prefix
    num_used_blocks: int
    prefix_cache_queries: int  # tokens looked up
    prefix_cache_hits: int  # tokens found
    groups: tuple[KVGroupStatistics, ...] = ()  # per KV cache group (all of them)

    @property
    def usage(self) -> float:
        """The fraction of blocks in use."""
        return self.num_used_blocks / self.num_blocks

    @property
    def prefix_cache_hit_rate(self) -> float:
        return (
            self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0
        )


class ComputedBlocks(list[KVBlock | None]):
    """`get_computed_blocks`' hit: the first group's blocks (holes as None before a
    sliding window), and every group's in `by_group`; pass it to `allocate_slots`."""

    by_group: list[list[KVBlock | None]]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockRow:
    """One request's table in one group as block ids (holes as 0): a numpy buffer
    that grows by doubling, so a step adds only its new blocks."""

    __slots__ = ("_buffer", "_size")

    def __init__(self) -> None:
        self._buffer = np.zeros(16, np.int32)
        self._size = 0

    def extend(self, block_ids: Sequence[int]) -> None:
        end = self._size + len(block_ids)
        if end > len(self._buffer):
            grown = np.zeros(max(end, 2 * len(self._buffer)), np.int32)
            grown[: self._size] = self._buffer[: self._size]
            self._buffer = grown
        self._buffer[self._size : end] = block_ids
        self._size = end

    def clear_first(self, count: int) -> None:
        """Holes for the first `count` entries (blocks out of a sliding window)."""
        self._buffer[: min(count, self._size)] = 0

    def view(self) -> np.ndarray:
        """The ids (a view: valid until the table next changes)."""
        return self._buffer[: self._size]

    def __len__(self) -> int:
        return self._size


@dataclass(slots=True)
class _Group:
    """One KV cache group: its pool, window and each request's table."""

    window: int | None
    pool: BlockPool
    tables: dict[str, list[KVBlock | None]] = field(default_factory=dict)
    # Each table as block ids (holes as 0), kept in step with it: a step reads every
    # running request's table, and rebuilding them from the blocks cost 0.4 ms a
    # step at 256 sequences of 128 blocks (numpy: the runner concatenates them).
    ids: dict[str, BlockRow] = field(default_factory=dict)
    num_cached: dict[str, int] = field(default_factory=dict)  # leading blocks registered

    def first_visible(self, position: int, block_size: int) -> int:
        """The first block a token at `position` can see."""
        if self.window is None:
            return 0
        return max(0, position - self.window + 1) // block_size


class KVCacheManager:
    def __init__(
        self,
        num_blocks: int | Sequence[int],
        block_size: int,
        enable_prefix_caching: bool = True,
        windows: Sequence[int | None] = (None,),
    ) -> None:
        """`windows`: each group's sliding window (None: full attention), and
        `num_blocks` each group's pool size (one int: the same for all)."""
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        sizes = [num_blocks] * len(windows) if isinstance(num_blocks, int) else list(num_blocks)
        if len(sizes) != len(windows) or not windows:
            raise ValueError(f"{len(sizes)} pool sizes for {len(windows)} KV cache groups")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.groups = [
            _Group(window, BlockPool(n, enable_caching=enable_prefix_caching))
            for window, n in zip(windows, sizes, strict=True)
        ]
        self.pool = self.groups[0].pool
        # One full-attention group: a decode step's `allocate_slots` may take the
        # fast path (the table already covers the token, no block to register).
        self._one_full_group = len(self.groups) == 1 and self.groups[0].window is None
        self._queries = 0
        self._hits = 0

    # ---- reading state ------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return sum(g.pool.num_free_blocks for g in self.groups)

    @property
    def usage(self) -> float:
        return self.statistics().usage

    def block_ids(self, request_id: str) -> list[int]:
        """The request's block table in the first group (empty for an unknown
        request); holes read as block 0."""
        return self.block_table(request_id).tolist()

    def group_block_ids(self, request_id: str) -> list[list[int]]:
        """The request's block table in every group."""
        return [t.tolist() for t in self.group_block_tables(request_id)]

    def block_table(self, request_id: str) -> np.ndarray:
        """`block_ids` as int32 numpy, without a copy: a view, valid until the
        request's table next changes (a step reads it before the next allocation)."""
        return self._table(self.groups[0], request_id)

    def group_block_tables(self, request_id: str) -> list[np.ndarray]:
        """`block_table` of every group."""
        return [self._table(g, request_id) for g in self.groups]

    @staticmethod
    def _table(group: _Group, request_id: str) -> np.ndarray:
        row = group.ids.get(request_id)
        return _EMPTY if row is None else row.view()

    def can_fit(self, num_tokens: int) -> bool:
        """Whether a new request of `num_tokens` tokens fits in the free blocks now
        (computed in one step)."""
        need = _cdiv(num_tokens, self.block_size)
        return all(need <= g.pool.num_free_blocks for g in self.groups)

    def statistics(self) -> KVCacheStatistics:
        groups = tuple(
            KVGroupStatistics(
                g.window, g.pool.num_blocks, g.pool.num_blocks - g.pool.num_free_blocks
            )
            for g in self.groups
        )
        total = sum(g.num_blocks for g in groups)
        used = sum(g.num_used_blocks for g in groups)
        return KVCacheStatistics(
            num_blocks=total,
            num_free_blocks=total - used,
            num_used_blocks=used,
            prefix_cache_queries=self._queries,
            prefix_cache_hits=self._hits,
            groups=groups,
        )

    # ---- the scheduler's calls ----------------------------------------------------------

    def get_computed_blocks(self, request: KVRequest) -> tuple[ComputedBlocks, int]:
        """The longest cached prefix of the request's full blocks, in every group.

        Returns the blocks (not yet touched) and how many tokens they cover. At least
        one token is always left to compute, so the model yields logits for it.
        """
        hits = ComputedBlocks()
        hits.by_group = [[] for _ in self.groups]
        if not self.enable_prefix_caching:
            return hits, 0
        self._extend_block_hashes(request)
        num_tokens = len(request.all_token_ids)
        hashes = request.block_hashes[: (num_tokens - 1) // self.block_size]
        n, previous = len(hashes), -1
        while n != previous:  # a shorter hit may leave another window uncovered
            previous = n
            for group in self.groups:
                n = self._longest_hit(group, hashes, n)
        for group, blocks in zip(self.groups, hits.by_group, strict=True):
            first = group.first_visible(n * self.block_size, self.block_size)
            blocks.extend([None] * first)
            blocks.extend(group.pool.get_cached_block(h) for h in hashes[first:n])
        hits.extend(hits.by_group[0])
        self._queries += num_tokens
        self._hits += n * self.block_size
        return hits, n * self.block_size

    def _longest_hit(self, group: _Group, hashes: list[BlockHash], limit: int) -> int:
        """The most leading blocks (up to `limit`) a hit may cover in `group`: all
        cached in a full group; in a sliding group, those the next token sees."""
        cached = [group.pool.get_cached_block(h) is not None for h in hashes[:limit]]
        if group.window is None:
            return cached.index(False) if False in cached else limit
        run = 0  # cached blocks ending at block i
        best = 0
        for i, hit in enumerate(cached):
            run = run + 1 if hit else 0
            n = i + 1
            if run >= n - group.first_visible(n * self.block_size, self.block_size):
                best = n
        return best

    def allocate_slots(
        self,
        request: KVRequest,
        num_new_tokens: int,
        new_computed_blocks: Sequence[KVBlock | None] = (),
    ) -> list[KVBlock] | None:
        """Make room for `num_new_tokens` more tokens after the computed ones.

        `new_computed_blocks` (from `get_computed_blocks`, for a request without
        blocks yet) are touched and joined to the tables first. Blocks out of a
        sliding group's window for the first new token are released. Returns the
        first group's newly allocated blocks, or None, changing nothing, when the
        free blocks of some group do not suffice.
        """
        assert num_new_tokens >= 0
        rid, bs = request.request_id, self.block_size
        if self._one_full_group and not new_computed_blocks:
            # A running request in the one full-attention group: nothing to release
            # or touch. Most decode steps need no block and fill none; the others
            # take new blocks or register the block just filled.
            group = self.groups[0]
            table = group.tables.get(rid)
            if table is not None:
                num_total = request.num_computed_tokens + num_new_tokens
                missing = _cdiv(num_total, bs) - len(table)
                new_blocks: list[KVBlock] = []
                if missing > 0:
                    if missing > group.pool.num_free_blocks:
                        return None
                    new_blocks = group.pool.get_new_blocks(missing)
                    table.extend(new_blocks)
                    group.ids[rid].extend([b.block_id for b in new_blocks])
                if self.enable_prefix_caching:
                    num_full = min(num_total, len(request.all_token_ids)) // bs
                    if num_full > group.num_cached[rid]:
                        self._cache_full_blocks(request, group, table, num_full)
                return new_blocks
        by_group = getattr(new_computed_blocks, "by_group", None)
        if by_group is None:
            by_group = [list(new_computed_blocks)] + [[] for _ in self.groups[1:]]
        num_hit = len(new_computed_blocks)
        assert not (rid in self.groups[0].tables and num_hit), (
            "computed blocks only for a new request"
        )
        num_computed = request.num_computed_tokens + num_hit * bs
        num_total = num_computed + num_new_tokens
        num_needed = _cdiv(num_total, bs)
        plans = []
        for group, hit in zip(self.groups, by_group, strict=True):
            table = group.tables.get(rid, [])
            first = group.first_visible(num_computed, bs)
            # Blocks the first new token no longer sees go back (after the check).
            released = [b for b in table[:first] if b is not None]
            hit_blocks = [b for b in hit[first:] if b is not None]
            start = max(len(table) + len(hit), first)
            missing = max(0, num_needed - start)
            # Touching a free cached hit takes it out of the free queue as well.
            reclaimed = sum(1 for b in hit_blocks if b.ref_cnt == 0)
            returned = sum(1 for b in released if b.ref_cnt == 1)
            if missing > group.pool.num_free_blocks - reclaimed + returned:
                return None
            plans.append((group, table, first, released, hit, start, missing))

        new_first: list[KVBlock] = []
        for group, table, first, released, hit, start, missing in plans:
            group.pool.free_blocks(reversed(released))
            for i in range(min(first, len(table))):
                table[i] = None
            visible_hit = [None if i < first else b for i, b in enumerate(hit)]
            group.pool.touch(b for b in visible_hit if b is not None)
            new_blocks = group.pool.get_new_blocks(missing)
            if rid not in group.tables:
                group.tables[rid] = table
                group.num_cached[rid] = len(hit)
            table.extend(visible_hit)
            table.extend([None] * (start - len(table)))
            table.extend(new_blocks)
            row = group.ids.get(rid)
            if row is None:
                row = group.ids[rid] = BlockRow()
            row.clear_first(first)
            row.extend([0 if b is None else b.block_id for b in table[len(row) :]])
            if group is self.groups[0]:
                new_first = new_blocks
            if self.enable_prefix_caching:
                num_final = min(num_total, len(request.all_token_ids))
                self._cache_full_blocks(request, group, table, num_final // bs)
        return new_first

    def free(self, request: KVRequest) -> None:
        """Release the request's blocks, tail first, and forget it. Idempotent."""
        for group in self.groups:
            table = group.tables.pop(request.request_id, None)
            group.ids.pop(request.request_id, None)
            group.num_cached.pop(request.request_id, None)
            if table is not None:
                group.pool.free_blocks(b for b in reversed(table) if b is not None)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix; refused (False) while any block is in use."""
        if any(g.pool.num_free_blocks != g.pool.num_blocks for g in self.groups):
            return False
        return all([g.pool.reset_prefix_cache() for g in self.groups])

    # ---- hashing and caching ------------------------------------------------------------

    def _extend_block_hashes(self, request: KVRequest) -> None:
        """Append the hashes of the request's full blocks not yet hashed."""
        hashes, tokens, size = request.block_hashes, request.all_token_ids, self.block_size
        for i in range(len(hashes), len(tokens) // size):
            parent = hashes[i - 1] if i else None
            extra = (request.cache_salt,) if i == 0 and request.cache_salt is not None else None
            hashes.append(hash_block(parent, tokens[i * size : (i + 1) * size], extra))

    def _cache_full_blocks(
        self, request: KVRequest, group: _Group, table: list[KVBlock | None], num_full: int
    ) -> None:
        """Register the table's blocks up to `num_full` (their tokens are final)."""
        start = group.num_cached[request.request_id]
        if num_full <= start:
            return
        self._extend_block_hashes(request)
        for i in range(start, num_full):
            block = table[i]
            if block is not None:
                group.pool.cache_full_block(block, request.block_hashes[i])
        group.num_cached[request.request_id] = num_full
