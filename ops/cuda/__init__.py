"""The CUDA backend of `ops`: CuPy RawKernels launched on torch tensors.

`BACKEND` accepts a call when every dispatch tensor is on one CUDA device with
one storage dtype among float32/float16/bfloat16, and CuPy is installed. It never
imports CuPy (`find_spec` only): that happens at the first launch
(`_module.run`), so machines without CUDA never load it. One module per op
family holds the wrappers, each with the signature of its public op; the op
modules of `ops` register them and are the only place that chooses them.
"""

from __future__ import annotations

from ops.cuda import _module
from ops.cuda._kernels import HEAD_SIZES
from ops.cuda._launch import SCALAR_TYPES
from ops.cuda.activation import silu_and_mul
from ops.cuda.attention import paged_attention_decode, paged_attention_prefill
from ops.cuda.kv_cache import reshape_and_cache
from ops.cuda.norm import fused_add_rms_norm, rms_norm
from ops.cuda.rotary import rotary_embedding, rotary_embedding_and_cache
from ops.dispatch import Backend, Place


def _accepts(places: tuple[Place, ...]) -> bool:
    first = places[0]
    device, dtype = first
    if device.type != "cuda" or dtype not in SCALAR_TYPES:
        return False
    if any(place != first for place in places):  # one device, one dtype
        return False
    return _module.cupy_importable()


BACKEND = Backend("cuda", _accepts)

__all__ = [
    "BACKEND",
    "HEAD_SIZES",
    "fused_add_rms_norm",
    "paged_attention_decode",
    "paged_attention_prefill",
    "reshape_and_cache",
    "rms_norm",
    "rotary_embedding",
    "rotary_embedding_and_cache",
    "silu_and_mul",
]
