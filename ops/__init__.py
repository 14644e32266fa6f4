"""Numeric kernels of llmcore, each op a callable with a stable signature.

This package is a leaf: it imports torch and numpy, never llmcore, transports or
plugins. Each public op is an `ops.dispatch.Op`: one dispatch point that validates
the call once, then runs a CUDA kernel (`ops.cuda`, CUDA tensors with CuPy
installed, which is imported at the first launch), a C kernel (`ops.cpu`, float32
CPU tensors) or the op's torch reference, which runs on any device and defines
the op's semantics (docs/ops.md).
"""

from __future__ import annotations

from ops.activation import gelu_tanh_and_mul as gelu_tanh_and_mul  # C kernel only: not in __all__
from ops.activation import silu_and_mul
from ops.attention import paged_attention_decode, paged_attention_prefill
from ops.kv_cache import reshape_and_cache
from ops.moe import fused_moe as fused_moe  # C kernel only: not in __all__ (below)
from ops.norm import fused_add_rms_norm, rms_norm
from ops.rotary import rotary_embedding
from ops.rotary_cache import rotary_embedding_and_cache

# The ops with a kernel on every backend (CUDA and C), which tests/ops/test_dispatch.py
# and test_cuda_emulated.py walk. `fused_moe` has the C kernel only (elsewhere its
# reference runs); tests/ops/test_moe.py covers it.
__all__ = [
    "fused_add_rms_norm",
    "paged_attention_decode",
    "paged_attention_prefill",
    "reshape_and_cache",
    "rms_norm",
    "rotary_embedding",
    "rotary_embedding_and_cache",
    "silu_and_mul",
]
