"""`ops.gelu_tanh_and_mul` (GeGLU with GELU's tanh approximation, Gemma's MLP): the
torch reference is transformers' `gelu_pytorch_tanh` times up, bit for bit; the C
kernel agrees with the formula in float64 to float32 rounding (vector bodies, scalar
tails, strided rows, OpenMP rows), is 0 for gates far below zero and exact for huge
positive ones, and is what float32 CPU calls run; other dtypes run the reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ops
from ops import cpu
from ops.cpu import activation as cpu_activation
from ops.dispatch import TORCH

needs_cpu_kernels = pytest.mark.skipif(cpu.library() is None, reason="CPU kernels not built")


def _exact(x: torch.Tensor) -> torch.Tensor:
    """The op in float64: `g * sigmoid(2u)`, which is `0.5 g (1 + tanh(u))` without
    the cancellation of `1 + tanh(u)` for very negative `u`."""
    d = x.shape[-1] // 2
    g, up = x[..., :d].double(), x[..., d:].double()
    u = math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)
    return g * torch.sigmoid(2 * u) * up


def test_reference_is_transformers_gelu_pytorch_tanh() -> None:
    from transformers.activations import ACT2FN

    x = torch.randn(5, 2 * 40) * 3
    want = ACT2FN["gelu_pytorch_tanh"](x[:, :40]) * x[:, 40:]
    assert torch.equal(ops.gelu_tanh_and_mul.reference(x), want)
    xb = x.bfloat16()
    want_bf16 = F.gelu(xb[:, :40], approximate="tanh") * xb[:, 40:]
    assert torch.equal(ops.gelu_tanh_and_mul(xb), want_bf16)


@needs_cpu_kernels
@pytest.mark.parametrize(("rows", "d"), [(5, 64), (6, 100), (3, 7), (600, 128)])  # 600: OpenMP
@pytest.mark.parametrize("strided", [False, True])
def test_c_kernel_matches_the_formula(rows: int, d: int, strided: bool) -> None:
    x = torch.randn(rows, 2 * d + (3 if strided else 0)) * 4
    if strided:  # rows of a wider tensor: a row stride of its own
        x = x[:, : 2 * d]
    assert ops.gelu_tanh_and_mul.select(x).fn is cpu_activation.gelu_tanh_and_mul
    got = ops.gelu_tanh_and_mul(x)
    torch.testing.assert_close(got.double(), _exact(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got, ops.gelu_tanh_and_mul.reference(x), atol=1e-5, rtol=1e-6)


@needs_cpu_kernels
def test_c_kernel_at_the_extremes() -> None:
    gate = torch.tensor(
        [[-3e38, -1e20, -1e5, -11.0, -10.0, -3.0, -1e-4, 0.0, 1e-4, 3.0, 1e5, 3e38]]
    )
    x = torch.cat([gate, torch.ones_like(gate)], dim=1)
    got = ops.gelu_tanh_and_mul(x)
    want = _exact(x)
    torch.testing.assert_close(got.double(), want, atol=1e-30, rtol=1e-6)
    assert torch.equal(got[0, -2:], gate[0, -2:])  # gelu(g) = g for huge g
    assert not got.isnan().any()


def test_other_dtypes_and_odd_widths_run_the_reference() -> None:
    assert ops.gelu_tanh_and_mul.select(torch.randn(3, 64, dtype=torch.bfloat16)).backend is TORCH
    assert ops.gelu_tanh_and_mul.select(torch.randn(3, 7)).backend is TORCH
    with pytest.raises(RuntimeError):  # an odd width is the reference's shape error
        ops.gelu_tanh_and_mul(torch.randn(3, 7))
    assert ops.gelu_tanh_and_mul(torch.randn(0, 32)).shape == (0, 16)
