"""Writing a step's new keys and values into the paged KV cache: the op, its torch
reference, its validation and its dispatch.

The cache of one layer is a pair of contiguous tensors `[num_blocks, block_size,
num_kv_heads, head_dim]`; token `t` of the step goes to flat slot
`slot_mapping[t]`, which is `block_id * block_size + offset`. `_check` (shapes,
contiguous caches, one device) runs once per call, before any implementation.
The caches may hold another dtype than the keys (issue 19: float16 or bfloat16
caches beside float32 activations, on the CPU); values are rounded into them.
Slot ranges are checked where it costs nothing: by torch's `index_copy_` in the
reference and by the C kernel (`IndexError` either way), not by a reduction per
layer; the CUDA kernel trusts its slots, and both kernels skip negative ones.
"""

from __future__ import annotations

import torch

from ops import cpu, cuda
from ops.cpu import kv_cache as cpu_kv_cache
from ops.cuda import kv_cache as cuda_kv_cache
from ops.dispatch import Impl, Op


def _reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Scatter `key`/`value` (`[num_tokens, num_kv_heads, head_dim]`) into the caches
    at `slot_mapping` (`[num_tokens]`, int64), in place. Caches of another dtype
    than the keys (a float16 or bfloat16 cache beside float32 activations) get the
    values as `.to(cache dtype)` rounds them."""
    num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
    key, value = key.to(key_cache.dtype), value.to(value_cache.dtype)
    key_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key)
    value_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value)


def _check(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    if (
        key.dim() != 3
        or key_cache.dim() != 4
        or key.shape[1:] != key_cache.shape[2:]
        or value.shape != key.shape
        or value_cache.shape != key_cache.shape
        or slot_mapping.shape != (key.shape[0],)
    ):
        raise ValueError(
            f"reshape_and_cache: key {tuple(key.shape)}, value {tuple(value.shape)} and "
            f"slot_mapping {tuple(slot_mapping.shape)} do not fit caches {tuple(key_cache.shape)}"
        )
    if not (key_cache.is_contiguous() and value_cache.is_contiguous()):
        raise ValueError("reshape_and_cache writes contiguous KV caches only")
    if slot_mapping.device != key.device:
        raise ValueError(
            f"reshape_and_cache: slot_mapping is on {slot_mapping.device}, key on {key.device}"
        )


reshape_and_cache = Op(
    "reshape_and_cache",
    _reshape_and_cache,
    on=lambda key, value, key_cache, value_cache, slot_mapping: (
        key,
        value,
        key_cache,
        value_cache,
    ),
    validate=_check,
    kernels=[
        Impl(cuda.BACKEND, cuda_kv_cache.reshape_and_cache),
        Impl(cpu.KV_CACHE_BACKEND, cpu_kv_cache.reshape_and_cache),
    ],
)
