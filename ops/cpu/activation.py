"""C kernels of the gated activations for float32 CPU tensors (kernels/activation.c):
one pass each, `silu(gate) · up` and `gelu_tanh(gate) · up`, with the vector exp of
vec.h."""

from __future__ import annotations

import torch

from ops.cpu._build import library
from ops.layout import rows_of


def _gated(symbol: str, x: torch.Tensor) -> torch.Tensor:
    """Run the C function `symbol` over `x` `[..., 2 * d]` (gate then up)."""
    lib = library()
    assert lib is not None
    d = x.shape[-1] // 2
    if not x.numel():
        return x.new_empty(*x.shape[:-1], d)
    rows = rows_of(x)
    out = torch.empty(rows.shape[0], d, dtype=x.dtype)
    getattr(lib, symbol)(rows.data_ptr(), rows.stride(0), out.data_ptr(), rows.shape[0], d)
    return out.view(*x.shape[:-1], d)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """As `ops.silu_and_mul` (the last dimension even)."""
    return _gated("llmcore_silu_and_mul_f32", x)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """As `ops.gelu_tanh_and_mul` (the last dimension even)."""
    return _gated("llmcore_gelu_tanh_and_mul_f32", x)
