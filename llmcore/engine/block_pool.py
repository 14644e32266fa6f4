"""`BlockPool`: owns every KV block, the LRU free list and the prefix-cache map.

Invariants it keeps after every public call:
- a block is in the free queue if and only if its `ref_cnt` is 0, so
  `len(free queue) + #(blocks with ref_cnt > 0) == num_blocks`;
- a block carries a `block_hash` if and only if the map sends that hash to that very
  block (a duplicate block with the same content stays unhashed);
- freed blocks keep their hash (lazy eviction): a hash leaves the map only when its
  block is popped for reuse, least recently freed first.

It does bookkeeping only: the KV tensors live in the model runner, addressed by id.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NewType

from llmcore.errors import LLMCoreError

BlockHash = NewType("BlockHash", bytes)
"""The SHA-256 digest (32 bytes) of a full block, chained through its parent's."""

_HASH_DOMAIN = b"llmcore.kv-block.v1"


# ---- hashing ----------------------------------------------------------------------------


def hash_block(
    parent: BlockHash | None,
    token_ids: Sequence[int],
    extra_keys: tuple[object, ...] | None = None,
) -> BlockHash:
    """The chained hash of one full block: stable across processes and platforms.

    The encoding is unambiguous: a domain tag, a parent flag and digest, the token
    count and the ids as little-endian int64, then the tagged extra keys.
    """
    h = hashlib.sha256(_HASH_DOMAIN)
    if parent is None:
        h.update(b"\x00")
    else:
        h.update(b"\x01")
        h.update(parent)
    h.update(struct.pack("<q", len(token_ids)))
    h.update(_int64_le_bytes(token_ids))
    h.update(_encode_key(tuple(extra_keys or ())))
    return BlockHash(h.digest())


def _int64_le_bytes(token_ids: Sequence[int]) -> bytes:
    ids = array("q", token_ids)
    if sys.byteorder == "big":
        ids.byteswap()
    return ids.tobytes()


def _encode_key(key: object) -> bytes:
    """A tagged, length-prefixed encoding of the extra-key types we support."""
    if key is None:
        return b"N"
    if isinstance(key, bool):  # before int: bool is an int subclass
        return b"T" if key else b"F"
    if isinstance(key, int):
        return b"i" + _length_prefixed(str(key).encode("ascii"))
    if isinstance(key, str):
        return b"s" + _length_prefixed(key.encode("utf-8"))
    if isinstance(key, bytes):
        return b"b" + _length_prefixed(key)
    if isinstance(key, tuple):
        return b"t" + struct.pack("<q", len(key)) + b"".join(_encode_key(k) for k in key)
    raise TypeError(f"unsupported block-hash extra key of type {type(key).__name__}")


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack("<q", len(data)) + data


# ---- blocks and the free queue ----------------------------------------------------------


@dataclass(slots=True, eq=False)
class KVBlock:
    """One block of `block_size` token slots; compared by identity."""

    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None
    prev_free: KVBlock | None = None  # links of the free queue, None outside it
    next_free: KVBlock | None = None

    def __repr__(self) -> str:
        digest = self.block_hash.hex()[:8] if self.block_hash is not None else None
        return f"KVBlock(id={self.block_id}, ref={self.ref_cnt}, hash={digest})"


class FreeBlockQueue:
    """A doubly-linked list of free blocks: O(1) popleft, append and remove.

    The head is the least recently freed block, the next to be reused.
    """

    __slots__ = ("_head", "_len", "_tail")

    def __init__(self, blocks: Iterable[KVBlock] = ()) -> None:
        self._head: KVBlock | None = None
        self._tail: KVBlock | None = None
        self._len = 0
        for block in blocks:
            self.append(block)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[KVBlock]:
        block = self._head
        while block is not None:
            yield block
            block = block.next_free

    def append(self, block: KVBlock) -> None:
        assert block.prev_free is None and block.next_free is None and block is not self._head
        if self._tail is None:
            self._head = block
        else:
            self._tail.next_free = block
            block.prev_free = self._tail
        self._tail = block
        self._len += 1

    def popleft(self) -> KVBlock:
        if self._head is None:
            raise IndexError("pop from an empty FreeBlockQueue")
        block = self._head
        self.remove(block)
        return block

    def remove(self, block: KVBlock) -> None:
        """Unlink `block`, which must be in this queue (anywhere in it)."""
        prev, nxt = block.prev_free, block.next_free
        if prev is None:
            assert self._head is block, f"{block!r} is not in the free queue"
            self._head = nxt
        else:
            prev.next_free = nxt
        if nxt is None:
            self._tail = prev
        else:
            nxt.prev_free = prev
        block.prev_free = block.next_free = None
        self._len -= 1


# ---- the pool ---------------------------------------------------------------------------


class BlockPool:
    """All `num_blocks` blocks (ids 0..num_blocks-1, none reserved) and the cache map."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(block_id=i) for i in range(num_blocks)]
        self._free = FreeBlockQueue(self.blocks)
        self._cached: dict[BlockHash, KVBlock] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks with no owner, including free blocks still holding a cached hash."""
        return len(self._free)

    @property
    def usage(self) -> float:
        """The fraction of blocks in use (0.0 to 1.0)."""
        return 1.0 - len(self._free) / self.num_blocks

    @property
    def cached_blocks(self) -> Mapping[BlockHash, KVBlock]:
        """A read-only view of the prefix-cache map."""
        return MappingProxyType(self._cached)

    @property
    def free_queue(self) -> FreeBlockQueue:
        """The free queue, head first (read it; do not mutate it)."""
        return self._free

    def get_new_blocks(self, n: int) -> list[KVBlock]:
        """Take `n` blocks from the head of the free queue, each with ref_cnt 1.

        A taken block that still holds a hash is evicted from the cache now.
        Callers check `num_free_blocks` first: asking for too many is a bug.
        """
        if n > len(self._free):
            raise LLMCoreError(f"asked for {n} KV blocks with only {len(self._free)} free")
        taken = [self._free.popleft() for _ in range(n)]
        for block in taken:
            assert block.ref_cnt == 0
            self._evict(block)
            block.ref_cnt = 1
        return taken

    def get_cached_block(self, block_hash: BlockHash) -> KVBlock | None:
        """The block caching `block_hash`, in use or free, if any."""
        if not self.enable_caching:
            return None
        return self._cached.get(block_hash)

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Take one more reference on each block; a free block leaves the free queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                self._free.remove(block)
            block.ref_cnt += 1

    def cache_full_block(self, block: KVBlock, block_hash: BlockHash) -> bool:
        """Register a full, owned block under `block_hash`; True if it was registered.

        An existing mapping wins: a block computed twice concurrently stays unhashed.
        """
        assert block.ref_cnt > 0, f"caching unowned {block!r}"
        if not self.enable_caching or block.block_hash is not None:
            return False
        if block_hash in self._cached:
            return False
        self._cached[block_hash] = block
        block.block_hash = block_hash
        return True

    def free_blocks(self, blocks: Iterable[KVBlock]) -> None:
        """Drop one reference on each; blocks reaching 0 join the free queue's tail.

        Pass them in eviction order (a request's blocks in reverse), so that a
        request's tail blocks are reused before its prefix.
        """
        for block in blocks:
            assert block.ref_cnt > 0, f"freeing unowned {block!r}"
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self._free.append(block)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; refused (False) while any block is in use."""
        if len(self._free) != self.num_blocks:
            return False
        for block in self._cached.values():
            block.block_hash = None
        self._cached.clear()
        return True

    def _evict(self, block: KVBlock) -> None:
        if block.block_hash is None:
            return
        removed = self._cached.pop(block.block_hash)
        assert removed is block
        block.block_hash = None
