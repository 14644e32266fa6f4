"""Weight matmuls `x @ weight.T + bias` on the CPU through oneDNN, else MKL prepacked.

float32 on the CPU goes to oneDNN's matmul (`torch.ops.mkldnn._linear_pointwise`
with the plain weight, the op torch's own compiler emits for CPU linears). On the
2-core AMD EPYC (Zen 4) this was measured on, it beat MKL's GEMM behind `F.linear`
at every row count from 8 to 2048 for SmolLM2's shapes: 64 rows through the
lm_head (49152 x 576) 82 -> 154 GF/s, 2048 rows through the MLP 142 -> 189 GF/s.
It keeps no copy of the weight. `LLMCORE_ONEDNN_LINEAR=0` turns it off.

Without oneDNN, MKL: on every call MKL repacks the weight into its GEMM layout; for
the small token counts of a decode step that repacking is a large part of the
matmul (SmolLM2's MLP at 64 tokens: 81 ms over 30 layers plain, 45 ms prepacked).
MKL can keep a packed copy (`torch.ops.mkl._mkl_reorder_linear_weight`), but the
copy serves only the row count it was packed for: any other count falls back to
the plain path. So `Linear` packs for a row count once it has seen it on `STREAK`
calls in a row (a steady decode batch), keeps one packed copy (the weight's memory
again), and uses it whenever the count matches.

Either way results agree with `F.linear` to float32 rounding (the sums are blocked
differently). Packing is off unless the caller enables it (CPU, float32, MKL
present, and memory for a second copy of the weights) and `LLMCORE_MKL_PACKING` is
not "0".
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

STREAK = 4  # calls in a row with one row count before packing for it
MIN_ROWS, MAX_ROWS = 16, 1024  # below, MKL's own small-matrix path is as fast


@functools.cache
def onednn_available() -> bool:
    """oneDNN's linear op is present, works here, and is not turned off."""
    if os.environ.get("LLMCORE_ONEDNN_LINEAR", "1") == "0":
        return False
    if not torch.backends.mkldnn.is_available() or not hasattr(
        torch.ops.mkldnn, "_linear_pointwise"
    ):
        return False
    try:
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        out = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    except (RuntimeError, NotImplementedError):
        return False
    return bool(torch.equal(out, F.linear(x, w)))


@functools.cache
def mkl_packing_available() -> bool:
    if os.environ.get("LLMCORE_MKL_PACKING", "1") == "0":
        return False
    mkl = torch.ops.mkl
    return (
        torch.backends.mkl.is_available()
        and hasattr(mkl, "_mkl_linear")
        and hasattr(mkl, "_mkl_reorder_linear_weight")
    )


class Linear:
    """`x` `[rows, in]` -> `[rows, out]` through `weight` `[out, in]` and `bias`."""

    __slots__ = (
        "_last_rows", "_packed", "_packed_rows", "_streak", "bias", "onednn", "packing", "weight",
    )  # fmt: skip

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight = weight
        self.bias = bias
        self.onednn = (
            weight.device.type == "cpu"
            and weight.dtype == torch.float32
            and weight.dim() == 2
            and (bias is None or bias.dtype == torch.float32)
            and onednn_available()
        )
        self.packing = False  # enabled by the model once it knows memory allows it
        self._packed: torch.Tensor | None = None
        self._packed_rows = 0
        self._last_rows = 0
        self._streak = 0

    def enable_packing(self) -> bool:
        """Pack when it pays, if this weight and machine allow it; returns whether
        (never with oneDNN, which needs no copy)."""
        w = self.weight
        if self.onednn:
            return False
        self.packing = w.device.type == "cpu" and w.dtype == torch.float32
        self.packing = self.packing and w.dim() == 2 and mkl_packing_available()
        return self.packing

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn and x.dim() == 2 and x.dtype == torch.float32 and x.device.type == "cpu":
            out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
                x.contiguous(), self.weight, self.bias, "none", [], ""
            )
            return out
        rows = x.shape[0]
        if self.packing and x.dim() == 2:
            if self._packed is not None and rows == self._packed_rows:
                return self._packed_call(x, rows)
            self._streak = self._streak + 1 if rows == self._last_rows else 1
            self._last_rows = rows
            if self._streak >= STREAK and MIN_ROWS <= rows <= MAX_ROWS:
                self._packed = None  # free the old copy before making the new one
                self._packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight, rows)
                self._packed_rows = rows
                return self._packed_call(x, rows)
        return F.linear(x, self.weight, self.bias)

    def _packed_call(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkl._mkl_linear(
            x.contiguous(), self._packed, self.weight, self.bias, rows
        )
        return out
