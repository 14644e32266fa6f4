"""RMSNorm and fused residual-add + RMSNorm: the ops, their torch references and
their dispatch.

Statistics are computed in float32 whatever the input dtype, and the weight is
applied after casting back, in the order Hugging Face's LlamaRMSNorm uses, so the
torch reference reproduces it bit for bit at float32. The kernels (`ops.cpu.norm`,
one pass whose mean of squares is summed in another order, so results agree to
float32 rounding; `ops.cuda.norm`) take the calls whose weight has one value per
feature and `x` and `residual` one shape; anything else (a broadcast weight) runs
the reference, whose broadcasting rules define it.
"""

from __future__ import annotations

import torch

from ops import cpu, cuda
from ops.cpu import norm as cpu_norm
from ops.cuda import norm as cuda_norm
from ops.dispatch import Impl, Op


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Return `weight * x / sqrt(mean(x**2, -1) + eps)` over the last dimension."""
    xf = x.to(torch.float32)
    variance = xf.pow(2).mean(-1, keepdim=True)
    normed = (xf * torch.rsqrt(variance + eps)).to(x.dtype)
    return weight * normed


def _fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(rms_norm(x + residual), x + residual)`: the normed input of the
    next sublayer and the new residual stream."""
    summed = x + residual
    return _rms_norm(summed, weight, eps), summed


def _weight_per_feature(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return x.shape[-1] == weight.shape[-1]


def _same_shape_weight_per_feature(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor
) -> bool:
    return x.shape == residual.shape and x.shape[-1] == weight.shape[-1]


rms_norm = Op(
    "rms_norm",
    _rms_norm,
    on=lambda x, weight, eps: (x, weight),
    kernels=[
        Impl(cuda.BACKEND, cuda_norm.rms_norm, _weight_per_feature),
        Impl(cpu.BACKEND, cpu_norm.rms_norm, _weight_per_feature),
    ],
)

fused_add_rms_norm = Op(
    "fused_add_rms_norm",
    _fused_add_rms_norm,
    on=lambda x, residual, weight, eps: (x, residual, weight),
    kernels=[
        Impl(cuda.BACKEND, cuda_norm.fused_add_rms_norm, _same_shape_weight_per_feature),
        Impl(cpu.BACKEND, cpu_norm.fused_add_rms_norm, _same_shape_weight_per_feature),
    ],
)
