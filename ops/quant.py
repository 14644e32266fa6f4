"""Quantized weights kept as stored and multiplied from their blocks: `QuantWeight`,
`QuantLinear`, `quant_embedding`, `quantize_int8_rows`, and their dispatch.

A `QuantWeight` is a `rows x cols` matrix as its type stores it (GGUF's blocks, or
our I8_ROW: int8 values then a float32 scale per row), one row of bytes per output
row. Its `dequantize` (ops.quant_blocks) is the torch reference, bit-identical to
ggml's. The matmul's reference is dequantize-then-`F.linear`; on float32 CPU
activations the C kernel (ops.cpu.quant) runs instead, for the types the library has:
it quantizes the activations per block to int8 (ggml's Q8_0 / Q8_1 / Q8_K numerics,
or one scale per token for I8_ROW) and sums integer products, so it agrees with the
reference to the activations' int8 rounding, not bit for bit (docs/ops.md).

Dispatch: one `Op` per weight type (`quant_linear_q4_0`, ..., `quant_embedding_q8_0`,
...), since the type, not the tensors' placement, decides whether a kernel exists;
`quant_linear` and `quant_embedding` pick the type's op and nothing else.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ops import cpu
from ops.cpu import quant as cpu_quant
from ops.dispatch import Backend, Impl, Op, Place
from ops.linear import Linear
from ops.quant_blocks import (
    BLOCK_SIZES,
    GGML_TYPES,
    QuantType,
    as_bytes,
    dequantize_i8_rows,
    i8_row_bytes,
    type_name,
)
from ops.quant_blocks import dequantize as dequantize_blocks

__all__ = [
    "QuantLinear",
    "QuantType",
    "QuantWeight",
    "bf16_rows",
    "float32_rows",
    "kernels_support",
    "quant_embedding",
    "quant_linear",
    "quantize_int8_rows",
    "row_bytes",
]


def row_bytes(qtype: QuantType | int, cols: int) -> int:
    """The bytes of one row of `cols` values of `qtype`; ValueError where `cols` is not
    a whole number of the type's blocks."""
    if qtype == QuantType.I8_ROW:
        return i8_row_bytes(cols)
    if qtype not in GGML_TYPES:
        raise ValueError(f"unsupported quantized weight type {type_name(qtype)}")
    block, block_bytes = BLOCK_SIZES[qtype]
    if cols <= 0 or cols % block:
        raise ValueError(
            f"{type_name(qtype)} rows must be a multiple of {block} values, not {cols}"
        )
    return cols // block * block_bytes


class QuantWeight:
    """A `rows x cols` weight matrix as stored: `data` uint8 `[rows, row_bytes]`,
    contiguous, row r's bytes in `data[r]`."""

    __slots__ = ("_descriptor", "cols", "data", "qtype")

    def __init__(self, data: torch.Tensor, qtype: QuantType | int, cols: int) -> None:
        qtype = QuantType(qtype)
        if data.dtype != torch.uint8 or data.dim() != 2:
            raise ValueError(
                "quantized weight data must be uint8 [rows, row_bytes], "
                f"got {data.dtype} {tuple(data.shape)}"
            )
        expected = row_bytes(qtype, cols)
        if data.shape[1] != expected:
            raise ValueError(
                f"{qtype.name} rows of {cols} values are {expected} bytes, not {data.shape[1]}"
            )
        self.data = data.contiguous()
        self.qtype = qtype
        self.cols = cols
        self._descriptor: cpu_quant.QWeight | None = None

    def __repr__(self) -> str:
        return f"QuantWeight({self.qtype.name}, rows={self.rows}, cols={self.cols})"

    @property
    def rows(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    @property
    def nbytes(self) -> int:
        return int(self.data.numel())

    @property
    def descriptor(self) -> cpu_quant.QWeight:
        """The C descriptor (`llmcore_qweight`) of a CPU weight, built once."""
        if self._descriptor is None:
            if self.data.device.type != "cpu":
                raise ValueError("the C kernels take CPU weights only")
            self._descriptor = cpu_quant.descriptor(self.data, self.qtype, self.cols)
        return self._descriptor

    @classmethod
    def from_raw(
        cls, qtype: QuantType | int, raw: torch.Tensor | np.ndarray, shape: tuple[int, int]
    ) -> QuantWeight:
        """The weight whose bytes are `raw` (any shape and dtype: the GGUF tensor's
        bytes; shared, not copied, where they are contiguous), of PyTorch `shape`
        `(rows, cols)`."""
        rows, cols = shape
        width = row_bytes(qtype, cols)
        flat = as_bytes(raw)
        if flat.numel() != rows * width:
            raise ValueError(
                f"{type_name(qtype)} data is {flat.numel()} bytes, but {rows} rows of "
                f"{cols} values need {rows * width}"
            )
        return cls(flat.view(rows, width), qtype, cols)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float matrix `[rows, cols]` (bit-identical to ggml's dequantization,
        computed in float32 and then cast to `dtype`)."""
        if self.qtype == QuantType.I8_ROW:
            return dequantize_i8_rows(self.data, self.cols, dtype)
        return dequantize_blocks(self.data, self.qtype, self.shape, dtype)

    @staticmethod
    def cat(parts: Sequence[QuantWeight]) -> QuantWeight:
        """The rows of `parts` one after another (q, k and v fused): one type and width."""
        first = parts[0]
        if any(p.qtype != first.qtype or p.cols != first.cols for p in parts):
            raise ValueError("QuantWeight.cat takes weights of one type and one width")
        return QuantWeight(torch.cat([p.data for p in parts]), first.qtype, first.cols)

    def index_rows(self, index: torch.Tensor) -> QuantWeight:
        """The rows `index` (a permutation or a selection), in that order."""
        return QuantWeight(
            self.data.index_select(0, index.to(self.data.device)), self.qtype, self.cols
        )


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's roundf: halves away from zero (torch.round takes them to even)."""
    t = torch.trunc(x)
    f = x - t
    return t + (f >= 0.5).to(x.dtype) - (f <= -0.5).to(x.dtype)


def quantize_int8_rows(weight: torch.Tensor) -> QuantWeight:
    """I8_ROW of a float matrix `[rows, cols]`: per row, `scale = amax / 127` (float32)
    and `q = roundf(w * (1 / scale))`, as the kernels quantize activations per token."""
    w = weight.detach().to(torch.float32)
    scale = w.abs().amax(dim=1) / 127.0
    inv = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    q = _round_half_away(w * inv[:, None]).to(torch.int8)
    rows, cols = w.shape
    data = torch.empty(rows, cols + 4, dtype=torch.uint8, device=w.device)
    data[:, :cols] = q.view(torch.uint8)
    data[:, cols:] = scale.contiguous().view(torch.uint8).view(rows, 4)
    return QuantWeight(data, QuantType.I8_ROW, cols)


def bf16_rows(weight: torch.Tensor) -> QuantWeight:
    """BF16 rows of a float matrix `[rows, cols]` (torch's float -> bfloat16 rounding),
    for the BF16 tiles: bfloat16 products summed in float32."""
    w = weight.detach().to(torch.bfloat16).contiguous()
    return QuantWeight(w.view(torch.uint8), QuantType.BF16, w.shape[1])


def float32_rows(weight: torch.Tensor) -> QuantWeight:
    """F32 rows of a float matrix `[rows, cols]` (float32 products, fused sums)."""
    w = weight.detach().to(torch.float32).contiguous()
    return QuantWeight(w.view(torch.uint8), QuantType.F32, w.shape[1])


def kernels_support(qtype: QuantType | int) -> bool:
    """Whether the C library is built and multiplies weights of `qtype`."""
    return cpu_quant.Support.MATMUL in cpu_quant.support(qtype)


# ---- the ops --------------------------------------------------------------------------


def _quant_linear(
    x: torch.Tensor, weight: QuantWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`x @ W.T + bias` for `x` `[..., cols]`: the dequantized weight through `F.linear`."""
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return F.linear(x, weight.dequantize(dtype).to(x.device), bias)


def _quant_embedding(ids: torch.Tensor, weight: QuantWeight) -> torch.Tensor:
    """Rows `ids` of the weight, dequantized to float32: `[*ids.shape, cols]`."""
    return weight.index_rows(ids.reshape(-1)).dequantize().view(*ids.shape, weight.cols)


def _validate_linear(
    x: torch.Tensor, weight: QuantWeight, bias: torch.Tensor | None = None
) -> None:
    if x.shape[-1] != weight.cols:
        raise ValueError(f"x has {x.shape[-1]} features, the weight {weight.cols} columns")
    if bias is not None and tuple(bias.shape) != (weight.rows,):
        raise ValueError(f"bias of shape {tuple(bias.shape)} for {weight.rows} rows")


def _validate_embedding(ids: torch.Tensor, weight: QuantWeight) -> None:
    if ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"ids must be integers, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= weight.rows):
        raise IndexError(f"ids must lie in [0, {weight.rows})")


def _c_linear(
    x: torch.Tensor, weight: QuantWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    return cpu_quant.qmatmul(weight.descriptor, x, bias)


def _c_embedding(ids: torch.Tensor, weight: QuantWeight) -> torch.Tensor:
    return cpu_quant.qget_rows(weight.descriptor, ids)


def _backend(qtype: QuantType, need: cpu_quant.Support) -> Backend:
    """The C library for `qtype`'s calls: activations float32 on the CPU (the weight's
    bytes too) and the library built with `need` for this type."""

    def accepts(places: tuple[Place, ...]) -> bool:
        if need == cpu_quant.Support.MATMUL and not cpu.BACKEND.accepts(places[:1]):
            return False
        if any(device.type != "cpu" for device, _ in places):
            return False
        return need in cpu_quant.support(qtype)

    return Backend(f"cpu-{qtype.name.lower()}", accepts)


def _linear_op(qtype: QuantType) -> Op[..., torch.Tensor]:
    return Op(
        f"quant_linear_{qtype.name.lower()}",
        _quant_linear,
        on=lambda x, weight, bias=None: (x, weight.data),
        validate=_validate_linear,
        kernels=[Impl(_backend(qtype, cpu_quant.Support.MATMUL), _c_linear)],
    )


def _embedding_op(qtype: QuantType) -> Op[..., torch.Tensor]:
    return Op(
        f"quant_embedding_{qtype.name.lower()}",
        _quant_embedding,
        on=lambda ids, weight: (ids, weight.data),
        validate=_validate_embedding,
        kernels=[Impl(_backend(qtype, cpu_quant.Support.GET_ROWS), _c_embedding)],
    )


LINEAR_OPS: dict[QuantType, Op[..., torch.Tensor]] = {t: _linear_op(t) for t in QuantType}
EMBEDDING_OPS: dict[QuantType, Op[..., torch.Tensor]] = {t: _embedding_op(t) for t in QuantType}


def quant_linear(
    x: torch.Tensor, weight: QuantWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`x` `[..., cols]` -> `[..., rows]`: `x @ W.T (+ bias)` (the weight's type's op)."""
    return LINEAR_OPS[weight.qtype](x, weight, bias)


def quant_embedding(ids: torch.Tensor, weight: QuantWeight) -> torch.Tensor:
    """Rows `ids` of `weight` dequantized: `[*ids.shape, cols]` float32."""
    return EMBEDDING_OPS[weight.qtype](ids, weight)


# Float rows (BF16, F32) at this many tokens or more go through oneDNN's GEMM on a
# view of the same bytes: its bfloat16 GEMM (~970 GF/s on the development VM) beats
# the tiles from a few tokens up (serving 32 sequences: 323 tok/s on the tiles for
# every step of fewer than 65 tokens, against 453 with oneDNN); fewer tokens (a
# single stream's decode: 88 tok/s on the tiles against 50) stay on the tiles.
DENSE_MIN_TOKENS = 8


class QuantLinear:
    """Like `ops.linear.Linear`: `x` `[n, cols]` float32 -> `[n, rows]` through a
    quantized `weight` and an optional float32 `bias`.

    Float rows (BF16, F32) with `DENSE_MIN_TOKENS` tokens or more (a prefill) are
    multiplied by oneDNN over a view of the weight's bytes, no copy: F32 as
    `ops.linear.Linear` does, BF16 with the activations rounded to bfloat16 and
    float32 sums, as the tiles compute it, but the output rounded to bfloat16 (torch
    has no float32 output for a bfloat16 GEMM on the CPU)."""

    __slots__ = ("_dense", "_op", "bias", "weight")

    def __init__(self, weight: QuantWeight, bias: torch.Tensor | None = None) -> None:
        self.weight = weight
        self.bias = bias
        self._op = LINEAR_OPS[weight.qtype]
        self._dense: Callable[[torch.Tensor], torch.Tensor] | None = None
        if weight.data.device.type == "cpu" and weight.qtype == QuantType.F32:
            self._dense = Linear(weight.data.view(torch.float32), bias)
        elif weight.data.device.type == "cpu" and weight.qtype == QuantType.BF16:
            self._dense = self._bf16_gemm

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._dense is not None and x.dim() == 2 and x.shape[0] >= DENSE_MIN_TOKENS:
            return self._dense(x)
        return self._op(x, self.weight, self.bias)

    def _bf16_gemm(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.data.view(torch.bfloat16)
        out = F.linear(x.to(torch.bfloat16), w).float()
        return out if self.bias is None else out + self.bias

    @property
    def descriptor(self) -> ctypes.Structure:
        """The C descriptor of the weight (kept alive with its data by the weight)."""
        return self.weight.descriptor
