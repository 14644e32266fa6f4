"""CUDA launch of `silu_and_mul` (see kernels/activation.cu)."""

from __future__ import annotations

import torch

from ops.cuda._kernels import SILU_AND_MUL
from ops.cuda._launch import Launch
from ops.cuda._module import run
from ops.layout import rows_of

_THREADS = 256


def plan_silu_and_mul(x: torch.Tensor) -> tuple[torch.Tensor, Launch]:
    rows, d = rows_of(x), x.shape[-1] // 2
    out = torch.empty((*x.shape[:-1], d), dtype=x.dtype, device=x.device)
    launch = Launch(
        SILU_AND_MUL,
        x.dtype,
        grid=(rows.shape[0], -(-d // _THREADS), 1),
        block=(_THREADS, 1, 1),
        values={"out": out, "x": rows, "d": d, "x_stride": rows.stride(0)},
    )
    return out, launch


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    out, launch = plan_silu_and_mul(x)
    if out.numel():
        run(launch)
    return out
