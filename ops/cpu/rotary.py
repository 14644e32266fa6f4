"""C kernels of `rotary_embedding` and `rotary_embedding_and_cache` for float32 CPU
activations (kernels/rotary.c): in place, neox or GPT-J pairs, partial rotary;
bit-identical to the torch reference. The second also writes the rotated keys and
the values to the KV cache (float32, float16 or bfloat16, as `reshape_and_cache`),
token by token in the same pass.

The kernels check every position against the table (and every slot against the
cache) before they touch anything and these wrappers turn a refusal into
`IndexError` (no torch reduction per call).
"""

from __future__ import annotations

import torch

from ops.cpu._build import library
from ops.cpu.kv_cache import KV_DTYPES, SLOT_OUT_OF_RANGE
from ops.layout import copy_back, with_contiguous_heads

POSITION_OUT_OF_RANGE = "a position is outside the rotary cos/sin table"


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> None:
    """As `ops.rotary_embedding`, in place. Heads that are not contiguous within a
    token are rotated in a copy, then copied back."""
    lib = library()
    assert lib is not None
    q, k = with_contiguous_heads(query), with_contiguous_heads(key)
    pos = positions.to(torch.int64).contiguous()
    cos_sin = cos_sin_cache.to(torch.float32).contiguous()
    rc = lib.llmcore_rotary_embedding_f32(
        pos.data_ptr(), q.data_ptr(), q.stride(0), q.stride(1), q.shape[1],
        k.data_ptr(), k.stride(0), k.stride(1), k.shape[1],
        cos_sin.data_ptr(), cos_sin.shape[0], cos_sin.shape[1], q.shape[0], int(is_neox),
    )  # fmt: skip
    if rc != 0:  # checked by the kernel before it rotates anything
        raise IndexError(POSITION_OUT_OF_RANGE)
    copy_back((q, query), (k, key))


def rotary_embedding_and_cache(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    is_neox: bool = True,
) -> None:
    """As `ops.rotary_embedding_and_cache` (float32 activations; caches of a dtype
    in `KV_DTYPES`, contiguous: the op's validation). A negative slot is a padding
    token: rotated, not cached (as `ops.cpu.reshape_and_cache` skips it)."""
    lib = library()
    assert lib is not None and key_cache.is_contiguous() and value_cache.is_contiguous()
    q, k, v = (with_contiguous_heads(x) for x in (query, key, value))
    pos = positions.to(torch.int64).contiguous()
    cos_sin = cos_sin_cache.to(torch.float32).contiguous()
    slots = slot_mapping.to(torch.int64).contiguous()
    rc = lib.llmcore_rotary_embedding_and_cache_f32(
        pos.data_ptr(), q.data_ptr(), q.stride(0), q.shape[1], q.shape[2],
        k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0), k.shape[1], k.shape[2],
        cos_sin.data_ptr(), cos_sin.shape[0], cos_sin.shape[1],
        key_cache.data_ptr(), value_cache.data_ptr(), slots.data_ptr(),
        key_cache.shape[0] * key_cache.shape[1], KV_DTYPES[key_cache.dtype], q.shape[0],
        int(is_neox),
    )  # fmt: skip
    if rc != 0:  # checked by the kernel before it touches anything
        raise IndexError(POSITION_OUT_OF_RANGE if rc == -1 else SLOT_OUT_OF_RANGE)
    copy_back((q, query), (k, key))
