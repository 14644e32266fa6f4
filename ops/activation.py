"""Gated activations: the ops, their torch references and their dispatch.

`silu_and_mul` (SwiGLU: Llama, Qwen, Mistral) and `gelu_tanh_and_mul` (GeGLU with
the tanh approximation of GELU: Gemma). The kernels (`ops.cpu.activation`,
`ops.cuda.activation`) take an even last dimension; an odd one runs the
reference, which raises torch's shape error. `gelu_tanh_and_mul` has a C kernel
only: on other placements it runs its reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ops import cpu, cuda
from ops.cpu import activation as cpu_activation
from ops.cuda import activation as cuda_activation
from ops.dispatch import Impl, Op


def _silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU: `x` is `[..., 2 * d]` holding gate then up; returns `silu(gate) * up`."""
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def _even(x: torch.Tensor) -> bool:
    return x.shape[-1] % 2 == 0


silu_and_mul = Op(
    "silu_and_mul",
    _silu_and_mul,
    on=lambda x: (x,),
    kernels=[
        Impl(cuda.BACKEND, cuda_activation.silu_and_mul, _even),
        Impl(cpu.BACKEND, cpu_activation.silu_and_mul, _even),
    ],
)


def _gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """GeGLU: `x` is `[..., 2 * d]` holding gate then up; returns `gelu(gate) * up`
    with GELU's tanh approximation (`gelu_pytorch_tanh` in Hugging Face configs):
    `0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3)))`."""
    d = x.shape[-1] // 2
    return F.gelu(x[..., :d], approximate="tanh") * x[..., d:]


gelu_tanh_and_mul = Op(
    "gelu_tanh_and_mul",
    _gelu_tanh_and_mul,
    on=lambda x: (x,),
    kernels=[Impl(cpu.BACKEND, cpu_activation.gelu_tanh_and_mul, _even)],
)
