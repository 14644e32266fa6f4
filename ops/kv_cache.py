"""Writing a step's new keys and values into the paged KV cache (torch reference).

The cache of one layer is a pair of tensors `[num_blocks, block_size, num_kv_heads,
head_dim]`; token `t` of the step goes to flat slot `slot_mapping[t]`, which is
`block_id * block_size + offset`.
"""

from __future__ import annotations

import torch

from ops import cpu as _cpu
from ops import cuda as _cuda


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Scatter `key`/`value` (`[num_tokens, num_kv_heads, head_dim]`) into the caches
    at `slot_mapping` (`[num_tokens]`, int64), in place."""
    if key.is_cuda and _cuda.available(key, value, key_cache, value_cache):
        return _cuda.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    if (
        _cpu.available(key, value, key_cache, value_cache)
        and key_cache.is_contiguous()
        and value_cache.is_contiguous()
    ):
        return _cpu.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
    key_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key)
    value_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value)
