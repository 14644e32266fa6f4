"""BlockPool, FreeBlockQueue and the chained block hash."""

from __future__ import annotations

import hashlib
import struct

import pytest

from llmcore.engine.block_pool import BlockHash, BlockPool, FreeBlockQueue, KVBlock, hash_block
from llmcore.errors import LLMCoreError


def ids(blocks: object) -> list[int]:
    return [b.block_id for b in blocks]  # type: ignore[attr-defined]


def h(n: int) -> BlockHash:
    return hash_block(None, [n])


# ---- hashing ----------------------------------------------------------------------------


def test_hash_is_a_sha256_digest_and_deterministic() -> None:
    a = hash_block(None, [1, 2, 3, 4])
    assert isinstance(a, bytes) and len(a) == 32
    assert hash_block(None, [1, 2, 3, 4]) == a
    assert hash_block(None, (1, 2, 3, 4)) == a  # any sequence type


def test_hash_encoding_is_pinned() -> None:
    """Stable across processes and releases: the canonical encoding, spelled out."""
    expected = hashlib.sha256(
        b"llmcore.kv-block.v1"
        + b"\x00"
        + struct.pack("<q", 3)
        + struct.pack("<3q", 7, -1, 2**40)
        + b"t"
        + struct.pack("<q", 1)
        + b"s"
        + struct.pack("<q", 4)
        + b"salt"
    ).digest()
    assert hash_block(None, [7, -1, 2**40], ("salt",)) == expected


def test_hash_depends_on_parent_tokens_order_and_extra_keys() -> None:
    root = hash_block(None, [1, 2])
    other_root = hash_block(None, [1, 3])
    assert hash_block(root, [5, 6]) != hash_block(other_root, [5, 6])
    assert hash_block(root, [5, 6]) != hash_block(None, [5, 6])
    assert hash_block(None, [2, 1]) != root
    assert hash_block(None, [1, 2], ("a",)) != root
    assert hash_block(None, [1, 2], ("a",)) != hash_block(None, [1, 2], ("b",))
    assert hash_block(None, [1, 2], (1,)) != hash_block(None, [1, 2], ("1",))
    assert hash_block(None, [1, 2], ("ab", "c")) != hash_block(None, [1, 2], ("a", "bc"))
    assert hash_block(None, [1, 2], None) == hash_block(None, [1, 2], ())


def test_hash_rejects_unsupported_extra_keys() -> None:
    with pytest.raises(TypeError):
        hash_block(None, [1], (object(),))


# ---- free queue -------------------------------------------------------------------------


def test_free_queue_popleft_append_remove() -> None:
    blocks = [KVBlock(i) for i in range(5)]
    q = FreeBlockQueue(blocks)
    assert len(q) == 5 and ids(q) == [0, 1, 2, 3, 4]
    q.remove(blocks[2])  # middle
    q.remove(blocks[0])  # head
    q.remove(blocks[4])  # tail
    assert ids(q) == [1, 3] and len(q) == 2
    assert q.popleft() is blocks[1]
    q.append(blocks[4])
    q.append(blocks[0])
    assert ids(q) == [3, 4, 0]
    assert [q.popleft().block_id for _ in range(3)] == [3, 4, 0]
    assert len(q) == 0 and ids(q) == []
    with pytest.raises(IndexError):
        q.popleft()
    q.append(blocks[2])
    assert ids(q) == [2] and blocks[2].prev_free is None and blocks[2].next_free is None


# ---- pool -------------------------------------------------------------------------------


def test_get_new_blocks_and_free() -> None:
    pool = BlockPool(4)
    got = pool.get_new_blocks(3)
    assert ids(got) == [0, 1, 2] and all(b.ref_cnt == 1 for b in got)
    assert pool.num_free_blocks == 1 and pool.usage == pytest.approx(0.75)
    with pytest.raises(LLMCoreError):
        pool.get_new_blocks(2)
    assert pool.num_free_blocks == 1  # nothing taken on failure
    pool.free_blocks(reversed(got))
    assert ids(pool.free_queue) == [3, 2, 1, 0] and pool.usage == 0.0


def test_freed_block_keeps_hash_until_reused() -> None:
    pool = BlockPool(2)
    a, b = pool.get_new_blocks(2)
    assert pool.cache_full_block(a, h(1))
    pool.free_blocks([a])
    assert a.block_hash == h(1) and pool.get_cached_block(h(1)) is a
    assert pool.num_free_blocks == 1  # free-but-cached counts as free
    (again,) = pool.get_new_blocks(1)  # the only free block: evicted now
    assert again is a and a.block_hash is None and pool.get_cached_block(h(1)) is None
    pool.free_blocks([b, a])


def test_eviction_is_least_recently_freed_first() -> None:
    pool = BlockPool(3)
    blocks = pool.get_new_blocks(3)
    for n, block in enumerate(blocks):
        pool.cache_full_block(block, h(n))
    pool.free_blocks([blocks[1], blocks[2], blocks[0]])
    assert pool.get_new_blocks(1) == [blocks[1]]
    assert pool.get_cached_block(h(1)) is None
    assert pool.get_cached_block(h(2)) is blocks[2] and pool.get_cached_block(h(0)) is blocks[0]


def test_touch_free_cached_block_leaves_free_queue() -> None:
    pool = BlockPool(3)
    blocks = pool.get_new_blocks(3)
    pool.cache_full_block(blocks[1], h(1))
    pool.free_blocks(blocks)
    hit = pool.get_cached_block(h(1))
    assert hit is blocks[1]
    pool.touch([hit])
    assert hit.ref_cnt == 1 and ids(pool.free_queue) == [0, 2]
    assert pool.get_new_blocks(2) == [blocks[0], blocks[2]]
    assert hit.block_hash == h(1)  # in use, so never evicted
    pool.touch([hit])  # a second owner
    pool.free_blocks([hit])
    assert hit.ref_cnt == 1 and pool.num_free_blocks == 0


def test_duplicate_hash_keeps_existing_mapping() -> None:
    pool = BlockPool(2)
    first, second = pool.get_new_blocks(2)
    assert pool.cache_full_block(first, h(9))
    assert not pool.cache_full_block(second, h(9))
    assert pool.get_cached_block(h(9)) is first and second.block_hash is None
    assert not pool.cache_full_block(first, h(8))  # a cached block keeps its hash


def test_caching_disabled() -> None:
    pool = BlockPool(2, enable_caching=False)
    (block,) = pool.get_new_blocks(1)
    assert not pool.cache_full_block(block, h(1))
    assert block.block_hash is None and pool.get_cached_block(h(1)) is None


def test_reset_prefix_cache() -> None:
    pool = BlockPool(2)
    a, b = pool.get_new_blocks(2)
    pool.cache_full_block(a, h(1))
    pool.free_blocks([a])
    assert not pool.reset_prefix_cache()  # b is in use
    assert pool.get_cached_block(h(1)) is a
    pool.free_blocks([b])
    assert pool.reset_prefix_cache()
    assert a.block_hash is None and len(pool.cached_blocks) == 0


def test_rejects_empty_pool() -> None:
    with pytest.raises(ValueError):
        BlockPool(0)
