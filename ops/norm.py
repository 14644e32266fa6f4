"""RMSNorm and fused residual-add + RMSNorm (torch reference).

Statistics are computed in float32 whatever the input dtype, and the weight is
applied after casting back, in the order Hugging Face's LlamaRMSNorm uses, so the
torch path reproduces it bit for bit at float32. On the CPU at float32 the C
kernels of `ops/cpu` take over (one pass; the mean of squares is summed in another
order, so results agree to float32 rounding).
"""

from __future__ import annotations

import torch

from ops import cpu as _cpu
from ops import cuda as _cuda


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Return `weight * x / sqrt(mean(x**2, -1) + eps)` over the last dimension."""
    if x.is_cuda and _cuda.available(x, weight):
        return _cuda.rms_norm(x, weight, eps)
    if _cpu.available(x, weight) and x.shape[-1] == weight.shape[-1] and x.numel():
        return _cpu.rms_norm(x, weight, eps)
    xf = x.to(torch.float32)
    variance = xf.pow(2).mean(-1, keepdim=True)
    normed = (xf * torch.rsqrt(variance + eps)).to(x.dtype)
    return weight * normed


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(rms_norm(x + residual), x + residual)`: the normed input of the
    next sublayer and the new residual stream."""
    if x.is_cuda and _cuda.available(x, residual, weight):
        return _cuda.fused_add_rms_norm(x, residual, weight, eps)
    if (
        _cpu.available(x, residual, weight)
        and x.shape == residual.shape
        and x.shape[-1] == weight.shape[-1]
        and x.numel()
    ):
        return _cpu.fused_add_rms_norm(x, residual, weight, eps)
    summed = x + residual
    return rms_norm(summed, weight, eps), summed
