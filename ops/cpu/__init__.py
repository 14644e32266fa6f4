"""The CPU backend of `ops`: C kernels for float32 CPU tensors, called through ctypes.

`BACKEND` accepts a call when every dispatch tensor is float32 on the CPU and the
kernels are built (`_build.library()`: not turned off by `LLMCORE_CPU_KERNELS=0`, a
C compiler found, the build succeeded). `KV_CACHE_BACKEND`, the same kernels' family
for the ops that write or read the KV cache (`reshape_and_cache`,
`rotary_embedding_and_cache`, paged attention), also accepts caches of float16 or
bfloat16 beside float32 activations: its placements end with the two caches, of one
dtype among `KV_DTYPES`. One module per op family (`norm`, `activation`, `rotary`,
`kv_cache`, `attention`) holds the wrappers, each with the signature of its public
op; the op modules of `ops` register them and are the only place that chooses them.
A wrapper assumes the op's validation has run and is tested against the op's torch
reference.
"""

from __future__ import annotations

import torch

from ops.cpu import _build
from ops.cpu._build import library
from ops.cpu.activation import silu_and_mul
from ops.cpu.attention import (
    attention_supported,
    paged_attention_decode,
    paged_attention_prefill,
)
from ops.cpu.kv_cache import KV_DTYPES, reshape_and_cache
from ops.cpu.norm import fused_add_rms_norm, rms_norm
from ops.cpu.rotary import rotary_embedding, rotary_embedding_and_cache
from ops.dispatch import Backend, Place


def _accepts(places: tuple[Place, ...]) -> bool:
    if any(device.type != "cpu" or dtype != torch.float32 for device, dtype in places):
        return False
    return _build.library() is not None


def _accepts_kv_cache(places: tuple[Place, ...]) -> bool:
    *activations, (_, key_dtype), (_, value_dtype) = places
    if any(device.type != "cpu" for device, _ in places):
        return False
    if any(dtype != torch.float32 for _, dtype in activations):
        return False
    if key_dtype != value_dtype or key_dtype not in KV_DTYPES:
        return False
    return _build.library() is not None


BACKEND = Backend("cpu", _accepts)
KV_CACHE_BACKEND = Backend("cpu", _accepts_kv_cache)

__all__ = [
    "BACKEND",
    "KV_CACHE_BACKEND",
    "KV_DTYPES",
    "attention_supported",
    "fused_add_rms_norm",
    "library",
    "paged_attention_decode",
    "paged_attention_prefill",
    "reshape_and_cache",
    "rms_norm",
    "rotary_embedding",
    "rotary_embedding_and_cache",
    "silu_and_mul",
]
