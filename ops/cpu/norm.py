"""C kernels of `rms_norm` and `fused_add_rms_norm` for float32 CPU tensors
(kernels/norm.c): one pass per row, `weight · (x · rsqrt(mean(x²) + eps))` in
torch's order. Rows may be strided (only the last dimension must be unit-stride);
the outputs are new contiguous tensors of `x`'s shape."""

from __future__ import annotations

import torch

from ops.cpu._build import library
from ops.layout import rows_of


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As `ops.rms_norm` (the weight one value per feature)."""
    lib = library()
    assert lib is not None
    if not x.numel():
        return torch.empty_like(x)
    rows, w = rows_of(x), weight.contiguous()
    out = torch.empty(rows.shape, dtype=x.dtype)
    lib.llmcore_rms_norm_f32(
        rows.data_ptr(), rows.stride(0), w.data_ptr(), float(eps),
        out.data_ptr(), out.stride(0), rows.shape[0], rows.shape[1],
    )  # fmt: skip
    return out.view(x.shape)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """As `ops.fused_add_rms_norm`: `(rms_norm(x + residual), x + residual)` (`x` and
    `residual` of one shape)."""
    lib = library()
    assert lib is not None
    if not x.numel():
        return torch.empty_like(x), torch.empty_like(x)
    xr, rr, w = rows_of(x), rows_of(residual), weight.contiguous()
    out = torch.empty(xr.shape, dtype=x.dtype)
    summed = torch.empty(xr.shape, dtype=x.dtype)
    lib.llmcore_fused_add_rms_norm_f32(
        xr.data_ptr(), xr.stride(0), rr.data_ptr(), rr.stride(0), w.data_ptr(), float(eps),
        out.data_ptr(), summed.data_ptr(), xr.shape[0], xr.shape[1],
    )  # fmt: skip
    return out.view(x.shape), summed.view(x.shape)
