"""Tensor layouts the kernels read, shared by the CPU and CUDA wrappers.

A kernel takes rows with unit stride along the last dimension and a row stride of
its own, so strided rows (q, k and v are column slices of the fused qkv
projection) reach it as views. These helpers return a view when the layout is
already right and a contiguous copy only when it is not; what they return always
has the layout their name says.
"""

from __future__ import annotations

import torch


def rows_of(x: torch.Tensor) -> torch.Tensor:
    """`x` as `[rows, last]` with unit stride along the last dimension (a view when
    possible, so strided rows such as slices of a fused projection are not copied)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x.reshape(-1, x.shape[-1])


def has_contiguous_heads(x: torch.Tensor) -> bool:
    """`[T, H, D]` whose heads are contiguous within a token (rows may be strided)."""
    return x.stride(-1) == 1 and x.stride(-2) == x.shape[-1]


def with_contiguous_heads(x: torch.Tensor) -> torch.Tensor:
    """`x` itself when `has_contiguous_heads(x)`, else a contiguous copy."""
    return x if has_contiguous_heads(x) else x.contiguous()


def copy_back(*pairs: tuple[torch.Tensor, torch.Tensor]) -> None:
    """For each `(worked_on, target)`: a kernel worked in place on `worked_on`, which
    is `target` itself or its `with_contiguous_heads` copy; a copy goes back."""
    for worked_on, target in pairs:
        if worked_on is not target:
            target.copy_(worked_on)
