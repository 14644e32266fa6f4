"""Gated activations (torch reference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU: `x` is `[..., 2 * d]` holding gate then up; returns `silu(gate) * up`."""
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]
