"""Gated activations (torch reference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ops import cpu as _cpu
from ops import cuda as _cuda


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU: `x` is `[..., 2 * d]` holding gate then up; returns `silu(gate) * up`."""
    if x.is_cuda and _cuda.available(x):
        return _cuda.silu_and_mul(x)
    if _cpu.available(x) and x.shape[-1] % 2 == 0 and x.numel():
        return _cpu.silu_and_mul(x)
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]
