"""The CUDA implementations of `ops`, as CuPy RawKernels over torch tensors.

`available(*tensors)` says whether a call on these tensors should take the CUDA
path: the first is on a CUDA device, CuPy is installed, and every tensor has the
same storage dtype among float32/float16/bfloat16 (and, for attention, the head
size is one the kernels are instantiated for). It never imports CuPy: that
happens at the first launch, so CPU-only machines never load it.
"""

from __future__ import annotations

import torch

from ops.cuda._kernels import HEAD_SIZES
from ops.cuda._launch import SCALAR_TYPES
from ops.cuda._module import cupy_importable
from ops.cuda.activation import silu_and_mul
from ops.cuda.attention import paged_attention_decode, paged_attention_prefill
from ops.cuda.kv_cache import reshape_and_cache
from ops.cuda.norm import fused_add_rms_norm, rms_norm
from ops.cuda.rotary import rotary_embedding


def available(*tensors: torch.Tensor, head_size: int | None = None) -> bool:
    first = tensors[0]
    if not first.is_cuda or first.dtype not in SCALAR_TYPES:
        return False
    if any(t.dtype != first.dtype for t in tensors):
        return False
    if head_size is not None and head_size not in HEAD_SIZES:
        return False
    return cupy_importable()


__all__ = [
    "HEAD_SIZES",
    "available",
    "fused_add_rms_norm",
    "paged_attention_decode",
    "paged_attention_prefill",
    "reshape_and_cache",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
]
