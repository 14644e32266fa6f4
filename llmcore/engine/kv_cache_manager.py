"""`KVCacheManager`: each request's block table, over a `BlockPool`, with prefix caching.

Invariants it keeps:
- a live request's table holds `ceil(tokens allocated / block_size)` distinct blocks,
  and the request holds exactly one reference on each;
- `allocate_slots` either allocates everything asked for or changes nothing (None);
- a request's block `i` is cached only under `request.block_hashes[i]`, the chained
  hash of its tokens, and only once those tokens are final.

No tensors: the model runner owns the KV cache and addresses it by block id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from llmcore.engine.block_pool import BlockHash, BlockPool, KVBlock, hash_block


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
class KVCacheStatistics:
    num_blocks: int
    num_free_blocks: int  # includes free blocks still holding a cached prefix
    num_used_blocks: int
    prefix_cache_queries: int  # tokens looked up
    prefix_cache_hits: int  # tokens found

    @property
    def usage(self) -> float:
        """The fraction of blocks in use."""
        return self.num_used_blocks / self.num_blocks

    @property
    def prefix_cache_hit_rate(self) -> float:
        return (
            self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0
        )


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True
    ) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_caching=enable_prefix_caching)
        self._tables: dict[str, list[KVBlock]] = {}
        self._num_cached: dict[str, int] = {}  # leading blocks of each table already cached
        self._queries = 0
        self._hits = 0

    # ---- reading state ------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        return self.pool.usage

    def block_ids(self, request_id: str) -> list[int]:
        """The request's block table (empty for an unknown request)."""
        return [block.block_id for block in self._tables.get(request_id, ())]

    def can_fit(self, num_tokens: int) -> bool:
        """Whether a new request of `num_tokens` tokens fits in the free blocks now."""
        return _cdiv(num_tokens, self.block_size) <= self.pool.num_free_blocks

    def statistics(self) -> KVCacheStatistics:
        free = self.pool.num_free_blocks
        return KVCacheStatistics(
            num_blocks=self.pool.num_blocks,
            num_free_blocks=free,
            num_used_blocks=self.pool.num_blocks - free,
            prefix_cache_queries=self._queries,
            prefix_cache_hits=self._hits,
        )

    # ---- the scheduler's calls ----------------------------------------------------------

    def get_computed_blocks(self, request: KVRequest) -> tuple[list[KVBlock], int]:
        """The longest cached run of the request's full blocks from its start.

        Returns the blocks (not yet touched) and how many tokens they cover. At least
        one token is always left to compute, so the model yields logits for it.
        """
        if not self.enable_prefix_caching:
            return [], 0
        self._extend_block_hashes(request)
        num_tokens = len(request.all_token_ids)
        max_blocks = (num_tokens - 1) // self.block_size
        hits: list[KVBlock] = []
        for block_hash in request.block_hashes[:max_blocks]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        num_hit_tokens = len(hits) * self.block_size
        self._queries += num_tokens
        self._hits += num_hit_tokens
        return hits, num_hit_tokens

    def allocate_slots(
        self,
        request: KVRequest,
        num_new_tokens: int,
        new_computed_blocks: Sequence[KVBlock] = (),
    ) -> list[KVBlock] | None:
        """Make room for `num_new_tokens` more tokens after the computed ones.

        `new_computed_blocks` (from `get_computed_blocks`, for a request without
        blocks yet) are touched and joined to the table first. Returns the newly
        allocated blocks, or None, changing nothing, when the free blocks do not
        suffice.
        """
        assert num_new_tokens >= 0
        table = self._tables.get(request.request_id, [])
        assert not (table and new_computed_blocks), "computed blocks only for a new request"
        num_computed = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        num_total = num_computed + num_new_tokens
        num_missing = max(
            0, _cdiv(num_total, self.block_size) - len(table) - len(new_computed_blocks)
        )
        # Touching a free cached hit takes it out of the free queue as well.
        num_reclaimed = sum(1 for block in new_computed_blocks if block.ref_cnt == 0)
        if num_missing > self.pool.num_free_blocks - num_reclaimed:
            return None

        self.pool.touch(new_computed_blocks)
        new_blocks = self.pool.get_new_blocks(num_missing)
        if request.request_id not in self._tables:
            self._tables[request.request_id] = table
            self._num_cached[request.request_id] = len(new_computed_blocks)
        table.extend(new_computed_blocks)
        table.extend(new_blocks)
        if self.enable_prefix_caching:
            num_final = min(num_total, len(request.all_token_ids))
            self._cache_full_blocks(request, table, num_final // self.block_size)
        return new_blocks

    def free(self, request: KVRequest) -> None:
        """Release the request's blocks, tail first, and forget it. Idempotent."""
        table = self._tables.pop(request.request_id, None)
        self._num_cached.pop(request.request_id, None)
        if table is not None:
            self.pool.free_blocks(reversed(table))

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix; refused (False) while any block is in use."""
        return self.pool.reset_prefix_cache()

    # ---- hashing and caching ------------------------------------------------------------

    def _extend_block_hashes(self, request: KVRequest) -> None:
        """Append the hashes of the request's full blocks not yet hashed."""
        hashes, tokens, size = request.block_hashes, request.all_token_ids, self.block_size
        for i in range(len(hashes), len(tokens) // size):
            parent = hashes[i - 1] if i else None
            extra = (request.cache_salt,) if i == 0 and request.cache_salt is not None else None
            hashes.append(hash_block(parent, tokens[i * size : (i + 1) * size], extra))

    def _cache_full_blocks(self, request: KVRequest, table: list[KVBlock], num_full: int) -> None:
        """Register the table's blocks up to `num_full` (their tokens are final)."""
        start = self._num_cached[request.request_id]
        if num_full <= start:
            return
        self._extend_block_hashes(request)
        for i in range(start, num_full):
            self.pool.cache_full_block(table[i], request.block_hashes[i])
        self._num_cached[request.request_id] = num_full
