"""The tensor-core prefill kernel (kernels/attention_prefill.cu) on the CPU
emulator, through `ops.cuda.paged_attention_prefill`, against the torch
reference: float16 and bfloat16, head sizes 64, 80 and 128, GQA groups of 1, 3 and 4,
prompts with and without cached context, sequences of 0 and 1 new tokens,
lengths off the 32-token tile and the 8-token cache block, sliding windows (one
token, inside a block, across tiles) with the blocks before each window freed
and NaN, and soft caps. The emulator's WMMA holds whole tiles in every lane; see
tests/ops/cuda_emulator.h. Shares test_cuda_emulated.py's compiled library."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ops
from ops.cuda import attention
from tests.ops.test_cuda_emulated import _close, emulated, library  # noqa: F401 (fixtures)
from tests.ops.test_reference_ops import _drop_out_of_window_blocks, _paged_setup

pytestmark = pytest.mark.usefixtures("emulated")

# Context lengths and new tokens: a one-token prompt, a prompt off the tile (40 of
# 45 with a prefix of 5), a short chunk after 6 cached tokens, a 37-token chunk
# after 32 (two tiles; with a 1-token window the first one starts on a block
# boundary, the block before it freed and NaN), no new tokens, and two full tiles
# exactly (64, after a 1-token prefix).
LENS, Q_LENS = [1, 45, 9, 69, 7, 65], [1, 40, 3, 37, 0, 64]


def _run(
    dtype: torch.dtype,
    d: int,
    heads: int,
    kv_heads: int,
    window: int | None = None,
    cap: float | None = None,
    lens: list[int] = LENS,
    q_lens: list[int] = Q_LENS,
    block_size: int = 8,
) -> None:
    q, kc, vc, tables, starts, seq_lens, _, _ = _paged_setup(
        lens, q_lens, heads, kv_heads, d, block_size, dtype, seed=d + heads + (window or 0)
    )
    _drop_out_of_window_blocks(kc, vc, tables, starts, seq_lens, window)
    args = (q, kc, vc, tables, starts, seq_lens, d**-0.5)
    options: dict[str, Any] = {"sliding_window": window, "soft_cap": cap}
    _, launch = attention.plan_paged_attention_prefill(*args, **options)
    assert launch.kernel.name == "paged_attention_prefill_tc"
    want = ops.paged_attention_prefill.reference(*args, **options)
    got = ops.cuda.paged_attention_prefill(*args, **options)
    assert got.dtype == dtype and got.shape == q.shape
    assert torch.isfinite(got.float()).all()  # nothing out of a window was read
    _close(got, want, dtype)


@pytest.mark.parametrize(
    ("dtype", "d", "heads", "kv_heads"),
    [
        (torch.float16, 64, 2, 2),
        (torch.float16, 80, 3, 1),
        (torch.bfloat16, 64, 4, 1),
        (torch.bfloat16, 80, 2, 2),
        (torch.bfloat16, 128, 8, 2),
    ],
)
def test_prefill_tensor_cores(dtype: torch.dtype, d: int, heads: int, kv_heads: int) -> None:
    _run(dtype, d, heads, kv_heads)


# Windows of one token, inside a cache block (5), across the tile and key tiles
# (40), with a soft cap; and a cap alone.
@pytest.mark.parametrize(
    ("dtype", "d", "window", "cap"),
    [
        (torch.float16, 64, 1, None),
        (torch.bfloat16, 80, 5, None),
        (torch.float16, 80, 40, 2.0),
        (torch.bfloat16, 64, None, 2.0),
    ],
)
def test_prefill_tensor_cores_window_and_cap(
    dtype: torch.dtype, d: int, window: int | None, cap: float | None
) -> None:
    _run(dtype, d, 4, 1, window, cap)


def test_prefill_tensor_cores_one_long_prompt() -> None:
    """One sequence, no prefix: three tiles (the last partial) and causal key
    tiles skipped past each tile's last row."""
    _run(torch.bfloat16, 64, 3, 1, lens=[75], q_lens=[75])


def test_prefill_tensor_cores_block_size_not_a_power_of_two() -> None:
    """Blocks of 12 tokens take the gather's division path (a power of two shifts)."""
    _run(torch.float16, 64, 4, 2, window=20, block_size=12)


def test_head_size_256_takes_the_scalar_prefill() -> None:
    """Gemma's 256-wide heads: the scalar kernel (the tensor-core tile's output
    would not fit static shared memory), with a window and a soft cap."""
    q, kc, vc, tables, starts, seq_lens, _, _ = _paged_setup(
        [9, 20], [9, 6], 4, 2, 256, 8, torch.bfloat16, seed=256
    )
    args = (q, kc, vc, tables, starts, seq_lens, 0.0625)
    options: dict[str, Any] = {"sliding_window": 7, "soft_cap": 50.0}
    _, launch = attention.plan_paged_attention_prefill(*args, **options)
    assert launch.kernel.name == "paged_attention_prefill"
    _close(ops.cuda.paged_attention_prefill(*args, **options),
           ops.paged_attention_prefill.reference(*args, **options), torch.bfloat16)  # fmt: skip


def test_scalar_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """16-bit queries the WMMA kernel cannot take run the scalar kernel (same results)."""
    monkeypatch.setattr(attention, "use_tensor_cores", lambda *_: False)
    q, kc, vc, tables, starts, seq_lens, _, _ = _paged_setup(
        LENS[:4], Q_LENS[:4], 2, 1, 64, 8, torch.float16, seed=5
    )
    args = (q, kc, vc, tables, starts, seq_lens, 0.125)
    _, launch = attention.plan_paged_attention_prefill(*args)
    assert launch.kernel.name == "paged_attention_prefill"
    _close(
        ops.cuda.paged_attention_prefill(*args),
        ops.paged_attention_prefill.reference(*args),
        torch.float16,
    )


def test_a_tensor_core_kernel_that_does_not_build_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where NVRTC cannot build the WMMA kernel (no `mma.h` among a machine's CUDA
    headers), prefill launches the scalar kernel instead, with the same results."""
    monkeypatch.setattr(attention, "kernel_compiles", lambda launch: False)
    launched: list[str] = []
    emulated_run = attention.run
    monkeypatch.setattr(
        attention, "run", lambda launch: launched.append(launch.kernel.name) or emulated_run(launch)
    )
    q, kc, vc, tables, starts, seq_lens, _, _ = _paged_setup(
        LENS[:4], Q_LENS[:4], 2, 1, 64, 8, torch.bfloat16, seed=6
    )
    args = (q, kc, vc, tables, starts, seq_lens, 0.125)
    got = ops.cuda.paged_attention_prefill(*args)
    assert launched == ["paged_attention_prefill"]
    _close(got, ops.paged_attention_prefill.reference(*args), torch.bfloat16)


def test_dispatch_rules() -> None:
    """float32 and rows the kernel cannot load 16 bytes at a time take the scalar
    kernel; the tile grid covers every sequence without reading a device value."""
    kc = torch.zeros(4, 8, 1, 64, dtype=torch.float16)
    q = torch.zeros(1 + 50 * 2 * 64, dtype=torch.float16)
    aligned, shifted = q[:-1].view(50, 2, 64), q[1:].view(50, 2, 64)
    assert attention.use_tensor_cores(aligned, kc, kc)
    assert not attention.use_tensor_cores(shifted, kc, kc)
    assert not attention.use_tensor_cores(aligned.float(), kc.float(), kc.float())
    tables, starts = torch.zeros(3, 4, dtype=torch.int32), torch.tensor([0, 31, 33, 50])
    _, launch = attention.plan_paged_attention_prefill(
        aligned, kc, kc, tables, starts, torch.tensor([31, 2, 17]), 0.1
    )
    assert launch.grid == (3 + 50 // 32, 2, 1)
