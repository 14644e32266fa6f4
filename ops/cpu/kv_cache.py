"""C kernel of `reshape_and_cache` for float32 CPU keys and values (kernels/kv_cache.c):
into float32 caches one `memcpy` per token per cache, into float16 or bfloat16
caches the values rounded to nearest even (F16C / AVX-512 where the build has
them); bit-identical to the torch reference (`.to(dtype)`) either way.

A negative slot is a padding token and is skipped (the torch reference has no
such convention). The kernel checks every slot against the cache before it writes
anything and this wrapper turns its refusal into `IndexError` (no torch reduction
per call).
"""

from __future__ import annotations

import torch

from ops.cpu._build import library
from ops.layout import with_contiguous_heads

SLOT_OUT_OF_RANGE = "slot_mapping points past the end of the KV cache"
# The cache element types the kernels take, by their code in vec.h (KV_F32, ...).
KV_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """As `ops.reshape_and_cache` (shapes checked and caches contiguous: the op's
    validation)."""
    lib = library()
    assert lib is not None and key_cache.is_contiguous() and value_cache.is_contiguous()
    key, value = with_contiguous_heads(key), with_contiguous_heads(value)
    slots = slot_mapping.to(torch.int64).contiguous()
    rc = lib.llmcore_reshape_and_cache_f32(
        key.data_ptr(), key.stride(0), value.data_ptr(), value.stride(0),
        key_cache.data_ptr(), value_cache.data_ptr(), slots.data_ptr(),
        key.shape[0], key_cache.shape[2] * key_cache.shape[3],
        key_cache.shape[0] * key_cache.shape[1], KV_DTYPES[key_cache.dtype],
    )  # fmt: skip
    if rc != 0:  # checked by the kernel before it writes anything
        raise IndexError(SLOT_OUT_OF_RANGE)
