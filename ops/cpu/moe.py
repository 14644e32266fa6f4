"""C kernel of `fused_moe` (kernels/moe.c): float32 activations and float32 or
bfloat16 expert weights on the CPU. The (token, slot) pairs are grouped by expert
with a counting sort; OpenMP threads take (expert, column block) work items, so
each expert's weights are read once per call for all of its tokens.

`BF16_WEIGHTS` is the backend of the bfloat16-weight kernel (`cpu.BACKEND` takes
only all-float32 calls): float32 `hidden` and `topk_weights`, bfloat16 `w13` and
`w2`, all on the CPU, and the kernels built."""

from __future__ import annotations

import torch
from torch import Tensor

from ops.cpu import _build
from ops.cpu._build import library
from ops.dispatch import Backend, Place

_F32, _BF16 = torch.float32, torch.bfloat16


def _accepts_bf16_weights(places: tuple[Place, ...]) -> bool:
    if any(device.type != "cpu" for device, _ in places):
        return False
    if tuple(dtype for _, dtype in places) != (_F32, _BF16, _BF16, _F32):
        return False
    return _build.library() is not None


BF16_WEIGHTS = Backend("cpu-bf16-weights", _accepts_bf16_weights)


def fused_moe(
    hidden: Tensor, w13: Tensor, w2: Tensor, topk_weights: Tensor, topk_ids: Tensor
) -> Tensor:
    """As `ops.fused_moe` (float32 or bfloat16 weights, float32 otherwise)."""
    lib = library()
    assert lib is not None
    (T, H), (E, two_i, _), k = hidden.shape, w13.shape, topk_ids.shape[1]
    out = torch.empty(T, H, dtype=torch.float32)
    if not T or not k or not two_i:
        return out.zero_()
    x = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    w13, w2 = w13.contiguous(), w2.contiguous()
    weights = topk_weights.contiguous()
    ids = topk_ids.to(torch.int32).contiguous()
    gate_up = torch.empty(T * k, two_i)  # then the activation in its gate half
    y = torch.empty(T * k, H)
    # the expert offsets and the pairs in expert order (int64), then three row
    # pointers per pair (x, gate_up, y: 64-bit)
    scratch = torch.empty(2 * E + 2 + 4 * T * k, dtype=torch.int64)
    status = lib.llmcore_fused_moe(
        x.data_ptr(), x.stride(0), w13.data_ptr(), w2.data_ptr(), int(w13.dtype == _BF16),
        weights.data_ptr(), ids.data_ptr(), out.data_ptr(), T, H, E, two_i // 2, k,
        scratch.data_ptr(), gate_up.data_ptr(), y.data_ptr(),
    )  # fmt: skip
    if status:
        raise ValueError(f"fused_moe: topk_ids hold an expert id outside 0..{E - 1}")
    return out
