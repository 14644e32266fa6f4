"""CUDA launches of `rotary_embedding` and `rotary_embedding_and_cache` (see
kernels/rotary.cu), in place."""

from __future__ import annotations

import torch

from ops.cuda._kernels import ROTARY_EMBEDDING, ROTARY_EMBEDDING_AND_CACHE
from ops.cuda._launch import Launch, threads_for
from ops.cuda._module import run
from ops.layout import copy_back, has_contiguous_heads, with_contiguous_heads


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
    copy_back((q, query), (k, key))


def plan_rotary_embedding_and_cache(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    is_neox: bool,
) -> Launch:
    """`query`, `key` and `value` must have contiguous heads
    (`rotary_embedding_and_cache` ensures it), the caches be contiguous (the op's
    validation)."""
    assert all(has_contiguous_heads(x) for x in (query, key, value))
    assert key_cache.is_contiguous() and value_cache.is_contiguous()
    rot_dim = cos_sin_cache.shape[1]
    num_heads, num_kv_heads = query.shape[1], key.shape[1]
    work = max((num_heads + num_kv_heads) * rot_dim // 2, num_kv_heads * key.shape[2])
    return Launch(
        ROTARY_EMBEDDING_AND_CACHE,
        query.dtype,
        grid=(query.shape[0], 1, 1),
        block=(threads_for(work, cap=512), 1, 1),
        values={
            "positions": positions.to(torch.int64).contiguous(),
            "query": query,
            "key": key,
            "value": value,
            "key_cache": key_cache,
            "value_cache": value_cache,
            "slot_mapping": slot_mapping.to(torch.int64).contiguous(),
            "cos_sin_cache": cos_sin_cache.to(torch.float32).contiguous(),
            "rot_dim": rot_dim,
            "query_stride": query.stride(0),
            "key_stride": key.stride(0),
            "value_stride": value.stride(0),
            "num_heads": num_heads,
            "num_kv_heads": num_kv_heads,
            "head_dim": query.shape[2],
            "kv_head_dim": key.shape[2],
            "is_neox": int(is_neox),
        },
    )


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
    """One launch: `rotary_embedding` then `reshape_and_cache` (one dtype throughout:
    the backend's placement)."""
    if not query.shape[0]:
        return
    q, k, v = (with_contiguous_heads(x) for x in (query, key, value))
    run(
        plan_rotary_embedding_and_cache(
            positions, q, k, v, cos_sin_cache, key_cache, value_cache, slot_mapping, is_neox
        )
    )
    copy_back((q, query), (k, key))
