"""CUDA launch of `rotary_embedding` (see kernels/rotary.cu), in place."""

from __future__ import annotations

import torch

from ops.cuda._kernels import ROTARY_EMBEDDING
from ops.cuda._launch import Launch, threads_for
from ops.cuda._module import run
from ops.layout import has_contiguous_heads, with_contiguous_heads


def plan_rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> Launch:
    """`query` and `key` must have contiguous heads (`rotary_embedding` ensures it)."""
    assert has_contiguous_heads(query) and has_contiguous_heads(key)
    rot_dim = cos_sin_cache.shape[1]
    num_heads, num_kv_heads = query.shape[1], key.shape[1]
    return Launch(
        ROTARY_EMBEDDING,
        query.dtype,
        grid=(query.shape[0], 1, 1),
        block=(threads_for((num_heads + num_kv_heads) * rot_dim // 2, cap=512), 1, 1),
        values={
            "positions": positions.to(torch.int64).contiguous(),
            "query": query,
            "key": key,
            "cos_sin_cache": cos_sin_cache.to(torch.float32).contiguous(),
            "rot_dim": rot_dim,
            "query_stride": query.stride(0),
            "key_stride": key.stride(0),
            "num_heads": num_heads,
            "num_kv_heads": num_kv_heads,
            "head_dim": query.shape[2],
            "is_neox": int(is_neox),
        },
    )


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> None:
    if not query.shape[0]:
        return
    q, k = with_contiguous_heads(query), with_contiguous_heads(key)
    run(plan_rotary_embedding(positions, q, k, cos_sin_cache, is_neox))
    for rotated, target in ((q, query), (k, key)):
        if rotated is not target:
            target.copy_(rotated)
