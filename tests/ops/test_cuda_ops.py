"""The CUDA kernels against the torch reference ops (GPU only; skipped elsewhere).

Every kernel runs on random shapes (block boundaries, GQA ratios, ragged context
lengths, long contexts through split-K, strided inputs, every dtype) and is
compared with the same op on CPU tensors, which takes the torch path. Tolerances
(absolute and relative, per dtype): float32 2e-5 (summation order only),
float16 2e-3 and bfloat16 2e-2 (two units in the last place of the output).
The end-to-end test greedy-decodes SmolLM2 on CUDA and on the CPU at float32 and
wants the same tokens.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import llmcore
import ops
from ops.cuda import attention as cuda_attention
from ops.rotary import build_rope_cache, rope_inv_freq
from tests.ops.test_reference_ops import _drop_out_of_window_blocks, _paged_setup

pytest.importorskip("cupy")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

CUDA = torch.device("cuda")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    tol = TOL[dtype]
    torch.testing.assert_close(got.cpu().float(), want.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 576, 4096, 5000])
def test_norms(dtype: torch.dtype, hidden: int) -> None:
    g = torch.Generator().manual_seed(hidden)
    x = torch.randn(7, 2 * hidden, generator=g).to(dtype)[:, :hidden]  # strided rows
    res, w = torch.randn(7, hidden, generator=g).to(dtype), torch.randn(hidden).to(dtype)
    xc, rc, wc = x.to(CUDA), res.to(CUDA), w.to(CUDA)
    _close(ops.cuda.rms_norm(xc, wc, 1e-6), ops.rms_norm(x, w, 1e-6), dtype)
    normed, summed = ops.cuda.fused_add_rms_norm(xc, rc, wc, 1e-5)
    ref_normed, ref_summed = ops.fused_add_rms_norm(x, res, w, 1e-5)
    _close(summed, ref_summed, dtype)
    _close(normed, ref_normed, dtype)
    assert torch.equal(ops.rms_norm(xc, wc, 1e-6), ops.cuda.rms_norm(xc, wc, 1e-6))  # dispatch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [32, 1536, 14336])
def test_silu_and_mul(dtype: torch.dtype, d: int) -> None:
    x = torch.randn(5, 3, 2 * d).to(dtype)
    _close(ops.cuda.silu_and_mul(x.to(CUDA)), ops.silu_and_mul(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize(("heads", "kv_heads", "d", "rot"), [(9, 3, 64, 64), (8, 2, 128, 64)])
def test_rotary_in_place_on_strided_views(
    dtype: torch.dtype, is_neox: bool, heads: int, kv_heads: int, d: int, rot: int
) -> None:
    n = 13
    cache = build_rope_cache(rope_inv_freq(rot, 10000.0), 256)
    positions = torch.randint(0, 256, (n,))
    qkv = torch.randn(n, (heads + 2 * kv_heads) * d).to(dtype)
    qkv_gpu = qkv.to(CUDA)
    for t in (qkv, qkv_gpu):
        q = t[:, : heads * d].view(n, heads, d)
        k = t[:, heads * d : (heads + kv_heads) * d].view(n, kv_heads, d)
        ops.rotary_embedding(positions.to(t.device), q, k, cache.to(t.device), is_neox=is_neox)
    _close(qkv_gpu, qkv, dtype)  # v untouched, partial rotary tail untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_and_cache(dtype: torch.dtype) -> None:
    kv = torch.randn(6, 2 * 3 * 64).to(dtype)
    key, value = kv[:, : 3 * 64].view(6, 3, 64), kv[:, 3 * 64 :].view(6, 3, 64)
    slots = torch.tensor([0, 15, 16, 47, 33, 5])
    caches = [torch.zeros(3, 16, 3, 64, dtype=dtype) for _ in range(2)]
    gpu = [c.to(CUDA) for c in caches]
    ops.reshape_and_cache(key, value, *caches, slots)
    ops.cuda.reshape_and_cache(key.to(CUDA), value.to(CUDA), *gpu, slots.to(CUDA))
    for got, want in zip(gpu, caches, strict=True):
        assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize(("heads", "kv_heads", "d", "rot"), [(9, 3, 64, 64), (8, 2, 128, 64)])
def test_rotary_embedding_and_cache(
    dtype: torch.dtype, is_neox: bool, heads: int, kv_heads: int, d: int, rot: int
) -> None:
    """The one-launch op against the two CUDA kernels (bit for bit) and the torch
    reference on the CPU; strided views of one qkv tensor, a padding slot."""
    n = 13
    cache = build_rope_cache(rope_inv_freq(rot, 10000.0), 256)
    positions = torch.randint(0, 256, (n,))
    slots = torch.randperm(4 * 16)[:n]
    qkv = torch.randn(n, (heads + 2 * kv_heads) * d).to(dtype)
    runs = []
    for device, fused in ((CUDA, True), (CUDA, False), (torch.device("cpu"), True)):
        t = qkv.to(device)
        q = t[:, : heads * d].view(n, heads, d)
        k, v = t[:, heads * d :].view(n, 2, kv_heads, d).unbind(1)
        caches = [torch.zeros(4, 16, kv_heads, d, dtype=dtype, device=device) for _ in range(2)]
        args = (positions.to(device), q, k, v, cache.to(device), *caches, slots.to(device))
        if fused:
            ops.rotary_embedding_and_cache(*args, is_neox=is_neox)
        else:
            ops.rotary_embedding(*args[:3], args[4], is_neox=is_neox)
            ops.reshape_and_cache(k, v, *caches, slots.to(device))
        torch.cuda.synchronize()
        runs.append([x.cpu() for x in (t, *caches)])
    for got, want in zip(runs[0], runs[1], strict=True):
        assert torch.equal(got, want)
    for got, want in zip(runs[0], runs[2], strict=True):
        _close(got, want, dtype)
    padded = slots.to(CUDA).clone()
    padded[3] = -1  # a padding token: rotated, not cached
    kc, vc = (
        torch.zeros(4, 16, kv_heads, d, dtype=dtype, device=CUDA),
        torch.zeros(4, 16, kv_heads, d, dtype=dtype, device=CUDA),
    )
    t = qkv.to(CUDA)
    q = t[:, : heads * d].view(n, heads, d)
    k, v = t[:, heads * d :].view(n, 2, kv_heads, d).unbind(1)
    ops.cuda.rotary_embedding_and_cache(positions.to(CUDA), q, k, v, cache.to(CUDA), kc, vc, padded)
    assert torch.equal(t.cpu(), runs[0][0])
    written = (kc.view(64, -1) != 0).any(-1).cpu()
    assert written.nonzero().flatten().tolist() == sorted(
        slots[[i for i in range(n) if i != 3]].tolist()
    )


def _to_cuda(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(CUDA) for t in tensors]


GQA = [(4, 4), (8, 2), (9, 3), (6, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", ops.cuda.HEAD_SIZES)
@pytest.mark.parametrize(("heads", "kv_heads"), GQA)
@pytest.mark.parametrize("bs", [8, 16])
@pytest.mark.parametrize("split", [False, True])
def test_paged_decode(
    monkeypatch: Any, dtype: torch.dtype, d: int, heads: int, kv_heads: int, bs: int, split: bool
) -> None:
    monkeypatch.setattr(cuda_attention, "num_partitions", lambda *_: 5 if split else 1)
    lens = [1, bs - 1, bs, bs + 1, 100, 513, 1500]
    q, kc, vc, tables, _, seq_lens, _, _ = _paged_setup(
        lens, [1] * len(lens), heads, kv_heads, d, bs, dtype, seed=d + heads + bs
    )
    want = ops.paged_attention_decode(q, kc, vc, tables, seq_lens, d**-0.5)
    got = ops.cuda.paged_attention_decode(*_to_cuda(q, kc, vc, tables, seq_lens), d**-0.5)
    _close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("window", "cap"), [(1, None), (5, None), (700, None), (None, 50.0), (37, 2.0)]
)
@pytest.mark.parametrize("split", [False, True])
def test_paged_window_and_cap(
    monkeypatch: Any, dtype: torch.dtype, window: int | None, cap: float | None, split: bool
) -> None:
    """Decode (one pass and split-K) and prefill with a sliding window and a soft cap,
    the blocks out of every window NaN, against the torch reference."""
    monkeypatch.setattr(cuda_attention, "num_partitions", lambda *_: 5 if split else 1)
    lens, q_lens = [1, 15, 16, 17, 100, 1500], [1, 15, 3, 1, 40, 9]
    options = {"sliding_window": window, "soft_cap": cap}
    for qs in ([1] * len(lens), q_lens):
        q, kc, vc, tables, starts, seq_lens, _, _ = _paged_setup(
            lens, qs, 8, 2, 128, 16, dtype, seed=len(qs)
        )
        _drop_out_of_window_blocks(kc, vc, tables, starts, seq_lens, window)
        if qs == q_lens:
            args = (q, kc, vc, tables, starts, seq_lens, 0.1)
            want = ops.paged_attention_prefill.reference(*args, **options)
            got = ops.cuda.paged_attention_prefill(*_to_cuda(*args[:-1]), 0.1, **options)
        else:
            args = (q, kc, vc, tables, seq_lens, 0.1)
            want = ops.paged_attention_decode.reference(*args, **options)
            got = ops.cuda.paged_attention_decode(*_to_cuda(*args[:-1]), 0.1, **options)
        assert torch.isfinite(got.float()).all()
        _close(got, want, dtype)


def test_long_context_takes_split_k() -> None:
    assert cuda_attention.num_partitions(1, 32, 8, 20000, 132) > 1
    q, kc, vc, tables, _, seq_lens, _, _ = _paged_setup(
        [9000, 3], [1, 1], 4, 2, 128, 16, torch.bfloat16, seed=3
    )
    want = ops.paged_attention_decode(q, kc, vc, tables, seq_lens, 0.1)
    got = ops.paged_attention_decode(*_to_cuda(q, kc, vc, tables, seq_lens), 0.1)
    _close(got, want, torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", ops.cuda.HEAD_SIZES)
@pytest.mark.parametrize(("heads", "kv_heads"), GQA)
@pytest.mark.parametrize("bs", [8, 16])
def test_paged_prefill(dtype: torch.dtype, d: int, heads: int, kv_heads: int, bs: int) -> None:
    lens = [1, bs, bs + 1, 3 * bs - 1, 40, 7]
    q_lens = [1, bs, 5, 3 * bs - 1, 17, 0]
    q, kc, vc, tables, starts, seq_lens, _, _ = _paged_setup(
        lens, q_lens, heads, kv_heads, d, bs, dtype, seed=d * heads + bs
    )
    want = ops.paged_attention_prefill(q, kc, vc, tables, starts, seq_lens, d**-0.5)
    got = ops.cuda.paged_attention_prefill(*_to_cuda(q, kc, vc, tables, starts, seq_lens), d**-0.5)
    _close(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("heads", "kv_heads", "d"), [(32, 8, 128), (12, 4, 64), (8, 8, 80), (6, 2, 96)]
)
@pytest.mark.parametrize(("window", "cap"), [(None, None), (100, None), (1, None), (None, 30.0)])
def test_paged_prefill_tensor_cores(
    dtype: torch.dtype, heads: int, kv_heads: int, d: int, window: int | None, cap: float | None
) -> None:
    """The WMMA prefill at prompt sizes: two 300-token chunks after a 64-token
    prefix, a short chunk, an empty sequence; 16-token blocks, the blocks before
    every window NaN."""
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("the tensor-core prefill needs sm_80+")
    lens, q_lens = [364, 364, 40, 9], [300, 300, 17, 0]
    q, kc, vc, tables, starts, seq_lens, _, _ = _paged_setup(
        lens, q_lens, heads, kv_heads, d, 16, dtype, seed=heads + d
    )
    _drop_out_of_window_blocks(kc, vc, tables, starts, seq_lens, window)
    options: dict[str, Any] = {"sliding_window": window, "soft_cap": cap}
    args = (q, kc, vc, tables, starts, seq_lens)
    cuda_args = _to_cuda(*args)
    _, launch = cuda_attention.plan_paged_attention_prefill(*cuda_args, d**-0.5, **options)
    assert launch.kernel.name == "paged_attention_prefill_tc"
    want = ops.paged_attention_prefill.reference(*args, d**-0.5, **options)
    got = ops.cuda.paged_attention_prefill(*cuda_args, d**-0.5, **options)
    assert torch.isfinite(got.float()).all()
    _close(got, want, dtype)


def test_smollm2_greedy_on_cuda_equals_cpu(smollm2_path: Any, smollm2: Any) -> None:
    gpu_model = llmcore.load_model(smollm2_path, dtype="float32", device="cuda")
    prompt = torch.randint(100, 40000, (37,), generator=torch.Generator().manual_seed(0)).tolist()
    runs = []
    for loaded in (smollm2, gpu_model):
        runner = llmcore.ModelRunner(loaded, num_blocks=16, block_size=16)
        runs.append(llmcore.greedy_generate(runner, prompt, 48, prefill_chunk=16))
    assert runs[0] == runs[1]
