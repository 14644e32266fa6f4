"""C kernels of the quantized matmul and row lookup (kernels/quant.c, quant_tiles.c;
the K-quants from quant_k.c): ctypes wrappers over `llmcore_qmatmul` and
`llmcore_qget_rows`.

A weight reaches C as an `llmcore_qweight` descriptor (`QWeight`: type, rows, cols,
row bytes, data pointer), built once per weight by `ops.quant.QuantWeight` and kept
beside the bytes it points into. Each wrapper takes the library to call (the native
build by default; tests pass the AVX2 and portable builds of `_build.library_for`)
and assumes the op's validation has run.
"""

from __future__ import annotations

import ctypes
import enum

import torch

from ops.cpu._build import library
from ops.layout import rows_of


class Support(enum.IntFlag):
    """What the library does for a type (`llmcore_qtype_support`)."""

    NONE = 0
    MATMUL = 1
    GET_ROWS = 2


class QWeight(ctypes.Structure):
    """`llmcore_qweight` of kernels/quant.h."""

    _fields_ = (
        ("type", ctypes.c_int64),
        ("rows", ctypes.c_int64),
        ("cols", ctypes.c_int64),
        ("row_bytes", ctypes.c_int64),
        ("data", ctypes.c_void_p),
    )


def descriptor(data: torch.Tensor, qtype: int, cols: int) -> QWeight:
    """The descriptor of a contiguous uint8 `[rows, row_bytes]` CPU tensor (which the
    caller keeps alive as long as the descriptor)."""
    assert data.dtype == torch.uint8 and data.dim() == 2 and data.is_contiguous()
    return QWeight(int(qtype), data.shape[0], cols, data.shape[1], data.data_ptr())


def support(qtype: int, lib: ctypes.CDLL | None = None) -> Support:
    lib = lib or library()
    if lib is None:
        return Support.NONE
    return Support(lib.llmcore_qtype_support(int(qtype)))


def qmatmul(
    desc: QWeight,
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    lib: ctypes.CDLL | None = None,
) -> torch.Tensor:
    """`x` `[..., cols]` float32 (rows may be strided) -> `[..., rows]` float32. (The
    decode path: a 2-D `x` with unit column stride goes straight through.)"""
    lib = lib or library()
    assert lib is not None
    flat = x if x.dim() == 2 and x.stride(1) == 1 else rows_of(x)
    n = flat.shape[0]
    out = torch.empty(n, desc.rows, dtype=torch.float32)
    if n:
        if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
            bias = bias.to(torch.float32).contiguous()
        status = lib.llmcore_qmatmul(
            ctypes.byref(desc), flat.data_ptr(), n, flat.stride(0),
            None if bias is None else bias.data_ptr(), out.data_ptr(), desc.rows,
        )  # fmt: skip
        if status:
            raise RuntimeError(f"llmcore_qmatmul failed ({status}) for type {desc.type}")
    return out if flat is x else out.view(*x.shape[:-1], desc.rows)


def qget_rows(desc: QWeight, ids: torch.Tensor, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """Rows `ids` (any shape, each in [0, rows)) dequantized: `[*ids.shape, cols]` float32."""
    lib = lib or library()
    assert lib is not None
    flat = ids.reshape(-1).to(torch.int64).contiguous()
    out = torch.empty(flat.shape[0], desc.cols, dtype=torch.float32)
    if flat.shape[0]:
        status = lib.llmcore_qget_rows(
            ctypes.byref(desc), flat.data_ptr(), flat.shape[0], out.data_ptr(), out.stride(0)
        )
        if status:
            raise RuntimeError(f"llmcore_qget_rows failed ({status}) for type {desc.type}")
    return out.view(*ids.shape, desc.cols)


def quantize_activations(
    kind: int, x: torch.Tensor, lib: ctypes.CDLL | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The C activation quantizer of `kind` (Q8_0, Q4_1 for Q8_1, I8_ROW) on one row
    `x` `[cols]`: `(q int8 [cols], d float32, s float32)` (d and s one per 32 values;
    for I8_ROW d holds the row's scale). For tests."""
    lib = lib or library()
    assert lib is not None
    xc = x.to(torch.float32).contiguous()
    cols = xc.shape[0]
    q = torch.empty(cols, dtype=torch.int8)
    d = torch.zeros(max(1, cols // 32), dtype=torch.float32)
    s = torch.zeros_like(d)
    status = lib.llmcore_qquantize_act(
        int(kind), xc.data_ptr(), cols, q.data_ptr(), d.data_ptr(), s.data_ptr()
    )
    if status:
        raise ValueError(f"no activation quantizer {kind} for {cols} values")
    return q, d, s


def isa(lib: ctypes.CDLL | None = None) -> str:
    """The instruction set the library's tiles were built for."""
    lib = lib or library()
    assert lib is not None
    name: bytes = lib.llmcore_qisa()
    return name.decode()
