"""CUDA launch of `reshape_and_cache` (see kernels/kv_cache.cu)."""

from __future__ import annotations

import torch

from ops.cuda._kernels import RESHAPE_AND_CACHE
from ops.cuda._launch import Launch, threads_for
from ops.cuda._module import run
from ops.layout import with_contiguous_heads


def plan_reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> Launch:
    assert key_cache.is_contiguous() and value_cache.is_contiguous()  # the op's validation
    key, value = with_contiguous_heads(key), with_contiguous_heads(value)
    row_size = key_cache.shape[2] * key_cache.shape[3]
    return Launch(
        RESHAPE_AND_CACHE,
        key.dtype,
        grid=(key.shape[0], 1, 1),
        block=(threads_for(row_size, cap=512), 1, 1),
        values={
            "key": key,
            "value": value,
            "key_cache": key_cache,
            "value_cache": value_cache,
            "slot_mapping": slot_mapping.to(torch.int64).contiguous(),
            "row_size": row_size,
            "key_stride": key.stride(0),
            "value_stride": value.stride(0),
        },
    )


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    if key.shape[0]:
        run(plan_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping))
