"""CUDA launches of `rms_norm` and `fused_add_rms_norm` (see kernels/norm.cu)."""

from __future__ import annotations

import torch

from ops.cuda._kernels import FUSED_ADD_RMS_NORM, RMS_NORM
from ops.cuda._launch import Launch, threads_for
from ops.cuda._module import run
from ops.layout import rows_of


def plan_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, Launch]:
    rows, hidden = rows_of(x), x.shape[-1]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    launch = Launch(
        RMS_NORM,
        x.dtype,
        grid=(rows.shape[0], 1, 1),
        block=(threads_for(hidden), 1, 1),
        values={
            "out": out,
            "x": rows,
            "weight": weight.contiguous(),
            "eps": float(eps),
            "hidden_size": hidden,
            "x_stride": rows.stride(0),
        },
    )
    return out, launch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    out, launch = plan_rms_norm(x, weight, eps)
    if out.numel():
        run(launch)
    return out


def plan_fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, Launch]:
    rows, res_rows, hidden = rows_of(x), rows_of(residual), x.shape[-1]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    summed = torch.empty_like(out)
    launch = Launch(
        FUSED_ADD_RMS_NORM,
        x.dtype,
        grid=(rows.shape[0], 1, 1),
        block=(threads_for(hidden), 1, 1),
        values={
            "out": out,
            "residual_out": summed,
            "x": rows,
            "residual": res_rows,
            "weight": weight.contiguous(),
            "eps": float(eps),
            "hidden_size": hidden,
            "x_stride": rows.stride(0),
            "residual_stride": res_rows.stride(0),
        },
    )
    return out, summed, launch


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    out, summed, launch = plan_fused_add_rms_norm(x, residual, weight, eps)
    if out.numel():
        run(launch)
    return out, summed
