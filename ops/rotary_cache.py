"""`rotary_embedding_and_cache`: `rotary_embedding` then `reshape_and_cache` in one
op, what every attention layer does after its qkv matmul (one CUDA launch or one C
call per layer instead of two).

The semantics are the two ops' in sequence, exactly: query and key rotated in
place, then the rotated key and the value written to the caches at
`slot_mapping`. Both ops' validations run (`ops.rotary._check`, then
`ops.kv_cache._check`), so a call is refused as either op would refuse it. The
kernels take what both take and both backends agree on: on the CPU float32
activations beside float32, float16 or bfloat16 caches (`KV_CACHE_BACKEND`); on
CUDA one dtype throughout. Any other placement where one of the two ops has a
kernel (on CUDA, float32 activations beside a float16 cache) runs the two ops in
sequence (`SPLIT`), each dispatching as it would alone; elsewhere the reference.
The kernels skip negative slots (padding) as `reshape_and_cache`'s do: such a
token's query and key are rotated, nothing is cached.
"""

from __future__ import annotations

import torch

from ops import cpu, cuda
from ops.cpu import rotary as cpu_rotary
from ops.cuda import rotary as cuda_rotary
from ops.dispatch import TORCH, Backend, Impl, Op, Place
from ops.kv_cache import _check as _check_cache
from ops.kv_cache import _reshape_and_cache, reshape_and_cache
from ops.rotary import _check as _check_rotary
from ops.rotary import _rotary_embedding, rotary_embedding


def _rotary_embedding_and_cache(
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
    """Rotate `query` `[T, Hq, D]` and `key` `[T, Hkv, D]` in place by `positions`
    `[T]` (`rotary_embedding`), then scatter the rotated `key` and `value` into the
    caches at `slot_mapping` (`[T]`, int64; `reshape_and_cache`)."""
    _rotary_embedding(positions, query, key, cos_sin_cache, is_neox)
    _reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)


def _check(
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
    _check_rotary(positions, query, key, cos_sin_cache, is_neox)
    _check_cache(key, value, key_cache, value_cache, slot_mapping)


def _rotary_then_cache(
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
    """The two ops in sequence, each choosing its own implementation."""
    rotary_embedding(positions, query, key, cos_sin_cache, is_neox)
    reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)


def _either_has_a_kernel(places: tuple[Place, ...]) -> bool:
    q, k, v, key_cache, value_cache = places
    return any(
        op.candidates(op_places)[0].backend is not TORCH
        for op, op_places in (
            (rotary_embedding, (q, k)),
            (reshape_and_cache, (k, v, key_cache, value_cache)),
        )
    )


def _dispatch_tensors(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    is_neox: bool = True,
) -> tuple[torch.Tensor, ...]:
    """The activations, then the two caches (`KV_CACHE_BACKEND` reads them last)."""
    return query, key, value, key_cache, value_cache


# The two ops in sequence, for placements the fused kernels do not take but where
# `rotary_embedding` or `reshape_and_cache` has a kernel.
SPLIT = Backend("split", _either_has_a_kernel)

rotary_embedding_and_cache = Op(
    "rotary_embedding_and_cache",
    _rotary_embedding_and_cache,
    on=_dispatch_tensors,
    validate=_check,
    kernels=[
        Impl(cuda.BACKEND, cuda_rotary.rotary_embedding_and_cache),
        Impl(cpu.KV_CACHE_BACKEND, cpu_rotary.rotary_embedding_and_cache),
        Impl(SPLIT, _rotary_then_cache),
    ],
)
