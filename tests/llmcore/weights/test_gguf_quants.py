"""Our torch dequantization must match gguf-py's reference bit for bit."""

from __future__ import annotations

import warnings
from pathlib import Path

import gguf
import gguf.quants
import numpy as np
import pytest
import torch

from llmcore.weights import gguf_quants
from llmcore.weights.gguf_quants import SUPPORTED_TYPES, dequantize

T = gguf.GGMLQuantizationType

# Byte offsets of each block type's float16 fields (scales and mins).
F16_FIELDS: dict[T, tuple[int, ...]] = {
    T.Q8_0: (0,),
    T.Q4_0: (0,),
    T.Q4_1: (0, 2),
    T.Q5_0: (0,),
    T.Q5_1: (0, 2),
    T.Q2_K: (80, 82),
    T.Q3_K: (108,),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
}
QUANTIZED = sorted(F16_FIELDS, key=lambda t: t.value)
FLOATS = (T.F32, T.F16, T.BF16)
# Worst case is about one quantization step: max|x| / 8 for Q4_0, / 16 for Q5_0.
ROUND_TRIP_TOLERANCE: dict[T, float] = {
    T.Q8_0: 0.01,
    T.Q4_0: 0.15,
    T.Q4_1: 0.1,
    T.Q5_0: 0.075,
    T.Q5_1: 0.05,
}
ROUND_TRIPS = sorted(ROUND_TRIP_TOLERANCE, key=lambda t: t.value)


def random_blocks(qtype: T, rows: int, blocks_per_row: int, seed: int = 0) -> np.ndarray:
    """Random raw bytes of (rows, blocks_per_row) blocks with small finite f16 fields."""
    rng = np.random.default_rng(seed)
    type_size = gguf.GGML_QUANT_SIZES[qtype][1]
    n = rows * blocks_per_row
    raw = rng.integers(0, 256, size=(n, type_size), dtype=np.uint8)
    for offset in F16_FIELDS[qtype]:
        scale = rng.uniform(-1, 1, size=(n, 1)).astype(np.float16)
        raw[:, offset : offset + 2] = scale.view(np.uint8)
    return raw.reshape(rows, blocks_per_row * type_size)


def reference(raw: np.ndarray, qtype: T, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(gguf.quants.dequantize(raw, qtype)).reshape(shape)


def logical_shape(qtype: T, rows: int, blocks_per_row: int) -> tuple[int, int]:
    return rows, blocks_per_row * gguf.GGML_QUANT_SIZES[qtype][0]


def test_supported_types() -> None:
    assert set(QUANTIZED) | set(FLOATS) == SUPPORTED_TYPES


@pytest.mark.parametrize("qtype", QUANTIZED, ids=lambda t: t.name)
@pytest.mark.parametrize(("rows", "blocks_per_row"), [(1, 1), (3, 2), (7, 5), (16, 8)])
def test_matches_gguf_bit_exact(qtype: T, rows: int, blocks_per_row: int) -> None:
    raw = random_blocks(qtype, rows, blocks_per_row, seed=rows * 100 + blocks_per_row)
    shape = logical_shape(qtype, rows, blocks_per_row)
    ours = dequantize(raw, qtype, shape)
    assert ours.dtype == torch.float32
    assert ours.shape == shape
    assert torch.equal(ours, reference(raw, qtype, shape))


@pytest.mark.parametrize("qtype", QUANTIZED, ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_chunked_decoding(qtype: T, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny chunk forces many chunks, including a short last one.
    monkeypatch.setattr(gguf_quants, "_CHUNK_VALUES", 3 * 256)
    raw = random_blocks(qtype, 5, 7, seed=1)
    shape = logical_shape(qtype, 5, 7)
    ours = dequantize(raw, qtype, shape, dtype)
    assert ours.dtype == dtype
    assert torch.equal(ours, reference(raw, qtype, shape).to(dtype))


@pytest.mark.parametrize("qtype", QUANTIZED, ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtype_is_cast_last(qtype: T, dtype: torch.dtype) -> None:
    raw = random_blocks(qtype, 4, 3, seed=2)
    shape = logical_shape(qtype, 4, 3)
    ours = dequantize(raw, qtype, shape, dtype)
    assert ours.dtype == dtype
    assert torch.equal(ours, reference(raw, qtype, shape).to(dtype))


def test_accepts_flat_bytes_and_torch_tensors() -> None:
    raw = random_blocks(T.Q4_K, 3, 2)
    shape = logical_shape(T.Q4_K, 3, 2)
    expected = reference(raw, T.Q4_K, shape)
    assert torch.equal(dequantize(raw.reshape(-1), T.Q4_K, shape), expected)
    assert torch.equal(dequantize(torch.from_numpy(raw), T.Q4_K, shape), expected)


@pytest.mark.parametrize("qtype", [T.Q8_0, T.F32])
def test_read_only_memmap(qtype: T, tmp_path: Path) -> None:
    if qtype == T.F32:
        raw = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
        shape: tuple[int, int] = (4, 64)
    else:
        raw = random_blocks(qtype, 4, 2)
        shape = logical_shape(qtype, 4, 2)
    path = tmp_path / "tensor.bin"
    raw.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = dequantize(mapped, qtype, shape)
    assert torch.equal(ours, reference(np.asarray(mapped), qtype, shape))
    # The result owns its memory: writing to it must not touch the read-only map.
    assert not np.shares_memory(ours.numpy(), mapped)
    ours.add_(1.0)


@pytest.mark.parametrize("qtype", FLOATS, ids=lambda t: t.name)
def test_float_passthrough(qtype: T) -> None:
    values = np.random.default_rng(4).standard_normal((6, 10)).astype(np.float32)
    stored: np.ndarray = values
    if qtype == T.F16:
        stored = values.astype(np.float16)
    elif qtype == T.BF16:
        stored = gguf.quants.quantize(values, T.BF16)
    expected = torch.from_numpy(gguf.quants.dequantize(stored, qtype)).reshape(6, 10)
    # Typed arrays as gguf's reader hands them, and their raw bytes.
    for data in (stored, stored.view(np.uint8)):
        ours = dequantize(data, qtype, (6, 10))
        assert ours.dtype == torch.float32
        assert torch.equal(ours, expected)
        for dtype in (torch.bfloat16, torch.float16):
            assert torch.equal(dequantize(data, qtype, (6, 10), dtype), expected.to(dtype))


def test_float_passthrough_never_aliases_input() -> None:
    values = torch.arange(12, dtype=torch.float32)
    ours = dequantize(values, T.F32, (3, 4))
    assert torch.equal(ours.reshape(-1), values)
    assert ours.data_ptr() != values.data_ptr()
    halves = values.to(torch.float16)
    assert dequantize(halves, T.F16, (12,), torch.float16).data_ptr() != halves.data_ptr()


@pytest.mark.parametrize("qtype", ROUND_TRIPS, ids=lambda t: t.name)
def test_round_trip_through_gguf_quantize(qtype: T) -> None:
    original = np.random.default_rng(5).uniform(-1, 1, size=(8, 256)).astype(np.float32)
    raw = gguf.quants.quantize(original, qtype)
    ours = dequantize(raw, qtype, original.shape)
    assert torch.equal(ours, reference(raw, qtype, original.shape))
    torch.testing.assert_close(
        ours, torch.from_numpy(original), rtol=0, atol=ROUND_TRIP_TOLERANCE[qtype]
    )


def test_unsupported_type_is_named() -> None:
    with pytest.raises(ValueError, match="unsupported GGUF quantization type IQ2_XXS"):
        dequantize(np.zeros(66, dtype=np.uint8), T.IQ2_XXS, (256,))
    with pytest.raises(ValueError, match="unsupported GGUF quantization type 999"):
        dequantize(np.zeros(4, dtype=np.uint8), 999, (1,))


def test_shape_must_match_decoded_count() -> None:
    raw = random_blocks(T.Q8_0, 2, 3)  # 2 rows of 96 values
    with pytest.raises(ValueError, match=r"holds 192 values .* needs 256"):
        dequantize(raw, T.Q8_0, (2, 128))
    with pytest.raises(ValueError, match="not a whole number of 34-byte blocks"):
        dequantize(raw.reshape(-1)[:-1], T.Q8_0, (2, 96))
    with pytest.raises(ValueError, match="multiple of 32"):
        dequantize(raw, T.Q8_0, (12, 16))
    with pytest.raises(ValueError, match="needs 13"):
        dequantize(np.zeros(48, dtype=np.uint8), T.F32, (13,))
