"""Numeric kernels of llmcore, each a function with a stable signature.

This package is a leaf: it imports torch and numpy, never llmcore, transports or
plugins. Every op is implemented in torch and runs on any device (the CPU path
and the reference for tests); on CUDA tensors with CuPy installed the same call
runs a CUDA kernel from `ops.cuda` instead, with CuPy imported at the first launch
(docs/ops.md).
"""

from __future__ import annotations

from ops.activation import silu_and_mul
from ops.attention import paged_attention_decode, paged_attention_prefill
from ops.kv_cache import reshape_and_cache
from ops.norm import fused_add_rms_norm, rms_norm
from ops.rotary import rotary_embedding

__all__ = [
    "fused_add_rms_norm",
    "paged_attention_decode",
    "paged_attention_prefill",
    "reshape_and_cache",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
]
