"""The GGML block formats (as GGUF files store them) and their decoding into torch
tensors: the torch reference of every quantized weight type of `ops.quant`.

This module owns the type ids (`QuantType`: GGML's numbers, plus our `I8_ROW`), the
block geometry of each type and the decoders of the raw blocks. Invariants it keeps:

* results are bit-identical to ggml's reference ``dequantize_row_*`` (and so to
  ``gguf.quants.dequantize``): every value is computed in float32 with the same operations
  in the same order, and only then cast to the requested dtype;
* the input bytes are never written to nor copied as a whole (a read-only memmap is
  fine), and the result never aliases them: it always owns its memory.

Everything is vectorized over blocks; large tensors are decoded a chunk of blocks at a
time so that temporaries stay small and cache-resident. Plain ints and torch only:
`ops` does not import gguf.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch


class QuantType(enum.IntEnum):
    """A weight's storage type: GGML's type ids, and I8_ROW (ours: int8 weights, one
    float32 scale per row, stored after the row's values)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    BF16 = 30
    I8_ROW = 1000


_T = QuantType

# (values per block, bytes per block) of each GGML type (as gguf.GGML_QUANT_SIZES).
BLOCK_SIZES: dict[int, tuple[int, int]] = {
    _T.F32: (1, 4),
    _T.F16: (1, 2),
    _T.BF16: (1, 2),
    _T.Q4_0: (32, 18),
    _T.Q4_1: (32, 20),
    _T.Q5_0: (32, 22),
    _T.Q5_1: (32, 24),
    _T.Q8_0: (32, 34),
    _T.Q2_K: (256, 84),
    _T.Q3_K: (256, 110),
    _T.Q4_K: (256, 144),
    _T.Q5_K: (256, 176),
    _T.Q6_K: (256, 210),
}

# A decoder maps (n_blocks, type_size) uint8 to (n_blocks, block_size) float32.
_Decoder = Callable[[torch.Tensor], torch.Tensor]

# Blocks decoded per step are chosen so a step yields about this many values.
CHUNK_VALUES = 1 << 20


# ---- byte-level helpers ---------------------------------------------------------------


def _split(blocks: torch.Tensor, *sizes: int) -> tuple[torch.Tensor, ...]:
    """Cut each block into consecutive fields of the given byte sizes (views)."""
    assert sum(sizes) == blocks.shape[1], (sizes, blocks.shape)
    return tuple(torch.split(blocks, list(sizes), dim=1))


def _f16(field: torch.Tensor) -> torch.Tensor:
    """A 2-byte little-endian float16 field, as float32 of shape (n, 1)."""
    return field.contiguous().view(torch.float16).to(torch.float32)


def _unpack(x: torch.Tensor, width: int, count: int, dim: int = -2) -> torch.Tensor:
    """Split each byte into `count` fields of `width` bits, lowest first.

    The fields go along a new axis at `dim`: with the default, shape (..., k) becomes
    (..., count, k) and plane i holds bits [i*width, (i+1)*width) of every byte.
    """
    mask = (1 << width) - 1
    # Scalar shifts: much faster than broadcasting against a tensor of shifts.
    return torch.stack([(x >> (i * width)) & mask for i in range(count)], dim=dim)


def _bits_le(x: torch.Tensor) -> torch.Tensor:
    """The bits of (n, k) bytes as (n, 8k) in little-endian order (bit j of byte j // 8)."""
    return _unpack(x, 1, 8, dim=-1).reshape(x.shape[0], -1)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n, 16) packed 4-bit values as (n, 32): the 16 low nibbles, then the 16 high ones."""
    return _unpack(qs, 4, 2).reshape(qs.shape[0], -1)


def _k_scales_mins(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the 12-byte Q4_K/Q5_K field into eight 6-bit scales and eight 6-bit mins."""
    packed = scales.reshape(-1, 3, 4)
    lo_sc, lo_mn, hi = packed[:, 0], packed[:, 1], packed[:, 2]
    sc = torch.cat((lo_sc & 0x3F, (hi & 0x0F) | ((lo_sc >> 2) & 0x30)), dim=1)
    mn = torch.cat((lo_mn & 0x3F, (hi >> 4) | ((lo_mn >> 2) & 0x30)), dim=1)
    return sc, mn


# ---- 32-value block formats -----------------------------------------------------------


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d, qs = _split(blocks, 2, 32)
    return qs.view(torch.int8).to(torch.float32).mul_(_f16(d))


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d, qs = _split(blocks, 2, 16)
    return _nibbles(qs).to(torch.float32).sub_(8).mul_(_f16(d))


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m, qs = _split(blocks, 2, 2, 16)
    return _nibbles(qs).to(torch.float32).mul_(_f16(d)).add_(_f16(m))


def _q5(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """The 32 unsigned 5-bit values of a Q5_0/Q5_1 block, as float32."""
    return (_nibbles(qs) | (_bits_le(qh) << 4)).to(torch.float32)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d, qh, qs = _split(blocks, 2, 4, 16)
    return _q5(qh, qs).sub_(16).mul_(_f16(d))


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m, qh, qs = _split(blocks, 2, 2, 4, 16)
    return _q5(qh, qs).mul_(_f16(d)).add_(_f16(m))


# ---- 256-value K-quant super-blocks ---------------------------------------------------


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    scales, qs, d, dmin = _split(blocks, 16, 64, 2, 2)
    dl = (_f16(d) * (scales & 0x0F).to(torch.float32)).unsqueeze(-1)
    ml = (_f16(dmin) * (scales >> 4).to(torch.float32)).unsqueeze(-1)
    q = _unpack(qs.reshape(n, 2, 32), 2, 4).reshape(n, 16, 16).to(torch.float32)
    return q.mul_(dl).sub_(ml).reshape(n, 256)


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    hmask, qs, scales, d = _split(blocks, 32, 64, 12, 2)
    low = _unpack(scales[:, :8], 4, 2).reshape(n, 16)
    high = _unpack(scales[:, 8:], 2, 4).reshape(n, 16)
    sc = ((low | (high << 4)).to(torch.float32) - 32).mul_(_f16(d))
    ql = _unpack(qs.reshape(n, 2, 32), 2, 4).reshape(n, 16, 16).to(torch.int8)
    # A set hmask bit means no offset; a clear one subtracts 4.
    hm = _unpack(hmask, 1, 8).reshape(n, 16, 16).to(torch.int8)
    q = (ql + (hm << 2) - 4).to(torch.float32)
    return q.mul_(sc.unsqueeze(-1)).reshape(n, 256)


def _q4_k_like(
    d: torch.Tensor, dmin: torch.Tensor, scales: torch.Tensor, q: torch.Tensor
) -> torch.Tensor:
    """Shared tail of Q4_K/Q5_K: (d * scale) * q - (dmin * min) per 32-value sub-block."""
    sc, mn = _k_scales_mins(scales)
    dl = (_f16(d) * sc.to(torch.float32)).unsqueeze(-1)
    ml = (_f16(dmin) * mn.to(torch.float32)).unsqueeze(-1)
    return q.to(torch.float32).mul_(dl).sub_(ml).reshape(q.shape[0], 256)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin, scales, qs = _split(blocks, 2, 2, 12, 128)
    q = _unpack(qs.reshape(n, 4, 32), 4, 2).reshape(n, 8, 32)
    return _q4_k_like(d, dmin, scales, q)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin, scales, qh, qs = _split(blocks, 2, 2, 12, 32, 128)
    low = _unpack(qs.reshape(n, 4, 32), 4, 2).reshape(n, 8, 32)
    q = low | (_unpack(qh, 1, 8) << 4)
    return _q4_k_like(d, dmin, scales, q)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    ql, qh, scales, d = _split(blocks, 128, 64, 16, 2)
    low = _unpack(ql.reshape(n, 2, 64), 4, 2).reshape(n, 8, 32)
    high = _unpack(qh.reshape(n, 2, 32), 2, 4).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.float32) - 32).reshape(n, 16, 16)
    dl = _f16(d) * scales.view(torch.int8).to(torch.float32)
    return q.mul_(dl.unsqueeze(-1)).reshape(n, 256)


DECODERS: dict[int, _Decoder] = {
    _T.Q8_0: _q8_0,
    _T.Q4_0: _q4_0,
    _T.Q4_1: _q4_1,
    _T.Q5_0: _q5_0,
    _T.Q5_1: _q5_1,
    _T.Q2_K: _q2_k,
    _T.Q3_K: _q3_k,
    _T.Q4_K: _q4_k,
    _T.Q5_K: _q5_k,
    _T.Q6_K: _q6_k,
}

# Plain float formats: the bytes are the values.
FLOATS: dict[int, torch.dtype] = {
    _T.F32: torch.float32,
    _T.F16: torch.float16,
    _T.BF16: torch.bfloat16,
}

# The GGML types `dequantize` decodes (I8_ROW, not a GGML type, has `dequantize_i8_rows`).
GGML_TYPES: frozenset[int] = frozenset(int(t) for t in (*DECODERS, *FLOATS))


# ---- public entry points --------------------------------------------------------------


def type_name(qtype: int) -> str:
    try:
        return _T(qtype).name
    except ValueError:
        return str(qtype)


def as_bytes(data: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A flat uint8 tensor over `data`'s bytes, sharing memory whenever possible."""
    if isinstance(data, torch.Tensor):
        return data.reshape(-1).view(torch.uint8)
    array = np.asarray(data).reshape(-1).view(np.uint8)
    with warnings.catch_warnings():
        # Read-only memmaps are fine: nothing here writes to them, nor returns a view.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _check_count(qtype: int, n_bytes: int, shape: tuple[int, ...]) -> int:
    """The number of blocks in `n_bytes`, after checking they decode to exactly `shape`."""
    block_size, type_size = BLOCK_SIZES[qtype]
    name = type_name(qtype)
    if n_bytes % type_size:
        raise ValueError(
            f"GGUF {name} data is {n_bytes} bytes, not a whole number of {type_size}-byte blocks"
        )
    n_blocks = n_bytes // type_size
    n_values = math.prod(shape)
    if n_blocks * block_size != n_values:
        raise ValueError(
            f"GGUF {name} data holds {n_blocks * block_size} values ({n_bytes} bytes) "
            f"but shape {shape} needs {n_values}"
        )
    if shape and shape[-1] % block_size:
        raise ValueError(
            f"GGUF {name} rows must be a multiple of {block_size} values, got shape {shape}"
        )
    return n_blocks


def _decode_blocks(
    decoder: _Decoder, blocks: torch.Tensor, block_size: int, dtype: torch.dtype, chunk: int
) -> torch.Tensor:
    """Run `decoder` over `blocks` a chunk at a time into a fresh (n, block_size) tensor."""
    n_blocks = blocks.shape[0]
    step = max(1, chunk // block_size)
    if n_blocks <= step:
        return decoder(blocks).to(dtype)
    out = torch.empty((n_blocks, block_size), dtype=dtype, device=blocks.device)
    for start in range(0, n_blocks, step):
        out[start : start + step] = decoder(blocks[start : start + step])
    return out


def dequantize(
    data: np.ndarray | torch.Tensor,
    qtype: int,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    *,
    chunk_values: int = CHUNK_VALUES,
) -> torch.Tensor:
    """Decode a GGML tensor's raw bytes into a tensor of `shape` (PyTorch order) and `dtype`.

    `data` is the tensor's bytes as stored (any dtype/shape; only its bytes matter),
    `qtype` a GGML type id (`QuantType`). Raises ValueError for an unsupported type or
    when the bytes do not decode to exactly `shape`. `chunk_values` bounds the values
    decoded per step (the temporaries' size).
    """
    if qtype not in GGML_TYPES:
        raise ValueError(f"unsupported GGUF quantization type {type_name(qtype)}")
    shape = tuple(shape)
    raw = as_bytes(data)
    n_blocks = _check_count(qtype, raw.numel(), shape)
    if qtype in FLOATS:
        source = FLOATS[qtype]
        if raw.storage_offset() % source.itemsize:
            raw = raw.clone()
        return raw.view(source).to(dtype, copy=True).reshape(shape)
    block_size = BLOCK_SIZES[qtype][0]
    blocks = raw.reshape(n_blocks, -1)
    values = _decode_blocks(DECODERS[qtype], blocks, block_size, dtype, chunk_values)
    return values.reshape(shape)


def i8_row_bytes(cols: int) -> int:
    """The bytes of one I8_ROW row: `cols` int8 values, then the float32 scale."""
    return cols + 4


def dequantize_i8_rows(
    rows: torch.Tensor, cols: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """I8_ROW bytes `[rows, cols + 4]` -> `[rows, cols]`: each value times its row's scale,
    in float32 (one rounding), then cast to `dtype`."""
    values = rows[:, :cols].contiguous().view(torch.int8).to(torch.float32)
    scales = rows[:, cols : cols + 4].contiguous().view(torch.float32)
    return values.mul_(scales).to(dtype)
