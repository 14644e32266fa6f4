"""Float weight rows through the quantized-matmul framework (kernels/quant_float.c):
BF16 and F32 `QuantWeight`s against float64 references, bit stability of a token
across batches (the decode path), the oneDNN path of a prefill, get_rows, and the
AVX2 / portable builds against the native one."""

from __future__ import annotations

import pytest
import torch

from ops.cpu import _build
from ops.cpu import quant as cpu_quant
from ops.quant import (
    DENSE_MIN_TOKENS,
    QuantLinear,
    QuantType,
    bf16_rows,
    float32_rows,
    kernels_support,
    quant_embedding,
)

pytestmark = pytest.mark.skipif(
    not kernels_support(QuantType.BF16), reason="the CPU kernels are not built here"
)

MAKE = {QuantType.BF16: bf16_rows, QuantType.F32: float32_rows}


def _reference(x: torch.Tensor, w: torch.Tensor, qtype: QuantType) -> torch.Tensor:
    if qtype == QuantType.BF16:  # bfloat16 operands, exact products, float64 sums
        x, w = x.to(torch.bfloat16), w.to(torch.bfloat16)
    return x.double() @ w.double().T


@pytest.mark.parametrize("qtype", [QuantType.BF16, QuantType.F32])
@pytest.mark.parametrize(("rows", "cols"), [(1, 16), (5, 100), (67, 576), (8, 33)])
@pytest.mark.parametrize("n", [1, 3, DENSE_MIN_TOKENS - 1])
def test_tiles_match_a_float64_reference(qtype: QuantType, rows: int, cols: int, n: int) -> None:
    g = torch.Generator().manual_seed(rows * 1000 + cols + n)
    w = torch.randn(rows, cols, generator=g)
    x = torch.randn(n, cols, generator=g)
    bias = torch.randn(rows, generator=g)
    got = QuantLinear(MAKE[qtype](w), bias)(x)
    want = _reference(x, w, qtype) + bias.double()
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-4 * cols**0.5)


@pytest.mark.parametrize("qtype", [QuantType.BF16, QuantType.F32])
def test_a_token_has_the_same_bits_in_any_decode_batch(qtype: QuantType) -> None:
    g = torch.Generator().manual_seed(7)
    mm = QuantLinear(MAKE[qtype](torch.randn(37, 200, generator=g)))
    x = torch.randn(DENSE_MIN_TOKENS - 1, 200, generator=g)
    alone = torch.cat([mm(x[i : i + 1]) for i in range(x.shape[0])])
    assert torch.equal(mm(x), alone)
    assert torch.equal(mm(x[5:13]), alone[5:13])


@pytest.mark.parametrize("qtype", [QuantType.BF16, QuantType.F32])
def test_a_prefill_goes_through_onednn_on_the_same_bytes(qtype: QuantType) -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(48, 128, generator=g)
    x = torch.randn(DENSE_MIN_TOKENS + 10, 128, generator=g)
    weight = MAKE[qtype](w)
    got = QuantLinear(weight)(x)
    # oneDNN's bfloat16 GEMM rounds its output to bfloat16 (8 bits of mantissa)
    rtol, atol = (1e-2, 1e-2) if qtype == QuantType.BF16 else (1e-4, 1e-3)
    assert torch.allclose(got.double(), _reference(x, w, qtype), rtol=rtol, atol=atol)
    tiles = torch.cat([QuantLinear(weight)(x[i : i + 8]) for i in range(0, x.shape[0], 8)])
    assert torch.allclose(got, tiles, rtol=rtol, atol=atol)


@pytest.mark.parametrize("qtype", [QuantType.BF16, QuantType.F32])
def test_get_rows_gives_the_stored_values(qtype: QuantType) -> None:
    w = torch.randn(20, 48)
    weight = MAKE[qtype](w)
    ids = torch.tensor([3, 0, 19, 3])
    stored = w.to(torch.bfloat16).float() if qtype == QuantType.BF16 else w
    assert torch.equal(quant_embedding(ids, weight), stored[ids])


@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64"])
@pytest.mark.parametrize("qtype", [QuantType.BF16, QuantType.F32])
def test_other_instruction_sets_agree(march: str, qtype: QuantType) -> None:
    try:
        lib = _build.library_for(march)
    except RuntimeError as exc:
        pytest.skip(f"no {march} build: {exc}")
    g = torch.Generator().manual_seed(11)
    w, x = torch.randn(9, 70, generator=g), torch.randn(5, 70, generator=g)
    weight = MAKE[qtype](w)
    native = cpu_quant.qmatmul(weight.descriptor, x)
    other = cpu_quant.qmatmul(weight.descriptor, x, lib=lib)
    assert torch.allclose(native, other, rtol=1e-5, atol=1e-5)
