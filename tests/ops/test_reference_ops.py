"""The torch reference ops against naive dense formulations, over random shapes:
block boundaries, GQA ratios, ragged lengths, every dtype. The CUDA kernels of a
later issue are tested against these same functions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ops
from ops.rotary import build_rope_cache, rope_inv_freq

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def _dense_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_cached: int, scale: float
) -> torch.Tensor:
    """q `[Lq, Hq, D]`, k/v `[Lk, Hkv, D]` (the Lq new tokens are the last of Lk)."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1).float()
    v = v.repeat_interleave(group, dim=1).float()
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    q_pos = torch.arange(q.shape[0])[:, None] + n_cached
    scores = scores.masked_fill(torch.arange(k.shape[0])[None, :] > q_pos, -math.inf)
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def _paged_setup(
    lens: list[int],
    q_lens: list[int],
    heads: int,
    kv_heads: int,
    d: int,
    bs: int,
    dtype: torch.dtype,
    seed: int,
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    max_blocks = max(-(-n // bs) for n in lens)
    num_blocks = max_blocks * len(lens) + 3
    perm = torch.randperm(num_blocks, generator=g)
    tables = perm[: max_blocks * len(lens)].view(len(lens), max_blocks).to(torch.int32)
    # Unwritten slots hold NaN: the ops must never let them into a result.
    kc = torch.full((num_blocks, bs, kv_heads, d), float("nan"), dtype=dtype)
    vc = torch.full_like(kc, float("nan"))
    keys = [torch.randn(n, kv_heads, d, generator=g).to(dtype) for n in lens]
    vals = [torch.randn(n, kv_heads, d, generator=g).to(dtype) for n in lens]
    for i, n in enumerate(lens):
        slots = torch.tensor([int(tables[i, p // bs]) * bs + p % bs for p in range(n)])
        ops.reshape_and_cache(keys[i], vals[i], kc, vc, slots)
    q = torch.randn(sum(q_lens), heads, d, generator=g).to(dtype)
    starts = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return q, kc, vc, tables, starts, torch.tensor(lens, dtype=torch.int32), keys, vals


def _drop_out_of_window_blocks(
    kc: torch.Tensor,
    vc: torch.Tensor,
    tables: torch.Tensor,
    starts: torch.Tensor,
    seq_lens: torch.Tensor,
    window: int | None,
) -> None:
    """The blocks wholly before the window of each sequence's first new token are
    freed (NaN, and their table entries pointed at a block no sequence owns)."""
    if window is None:
        return
    bs = kc.shape[1]
    spare = next(b for b in range(kc.shape[0]) if b not in set(tables.flatten().tolist()))
    for i, seq_len in enumerate(seq_lens.tolist()):
        q_len = int(starts[i + 1] - starts[i])
        for b in range(max(0, seq_len - q_len - window + 1) // bs):
            kc[int(tables[i, b])] = float("nan")
            vc[int(tables[i, b])] = float("nan")
            tables[i, b] = spare


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("heads", "kv_heads", "d"), [(4, 4, 64), (8, 2, 80), (6, 1, 96), (4, 2, 128)]
)
@pytest.mark.parametrize("bs", [8, 16])
def test_paged_prefill_matches_dense(
    dtype: torch.dtype, heads: int, kv_heads: int, d: int, bs: int
) -> None:
    lens = [1, bs, bs + 1, 3 * bs - 1, 40]
    q_lens = [1, bs, 5, 3 * bs - 1, 17]
    q, kc, vc, tables, starts, seq_lens, keys, vals = _paged_setup(
        lens, q_lens, heads, kv_heads, d, bs, dtype, seed=heads * d + bs
    )
    scale = d**-0.5
    out = ops.paged_attention_prefill(q, kc, vc, tables, starts, seq_lens, scale)
    for i, (n, ql) in enumerate(zip(lens, q_lens, strict=True)):
        s, e = int(starts[i]), int(starts[i + 1])
        ref = _dense_causal_attention(q[s:e], keys[i], vals[i], n - ql, scale)
        torch.testing.assert_close(out[s:e].float(), ref, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (8, 2), (9, 3)])
def test_paged_decode_matches_dense_and_prefill(
    dtype: torch.dtype, heads: int, kv_heads: int
) -> None:
    lens = [1, 15, 16, 17, 100]
    q, kc, vc, tables, starts, seq_lens, keys, vals = _paged_setup(
        lens, [1] * len(lens), heads, kv_heads, 64, 16, dtype, seed=heads
    )
    out = ops.paged_attention_decode(q, kc, vc, tables, seq_lens, 0.125)
    for i, n in enumerate(lens):
        ref = _dense_causal_attention(q[i : i + 1], keys[i], vals[i], n - 1, 0.125)
        torch.testing.assert_close(out[i : i + 1].float(), ref, atol=TOL[dtype], rtol=TOL[dtype])
    via_prefill = ops.paged_attention_prefill(q, kc, vc, tables, starts, seq_lens, 0.125)
    torch.testing.assert_close(out, via_prefill, atol=TOL[dtype], rtol=TOL[dtype])


def test_reshape_and_cache_writes_exactly_the_slots() -> None:
    kc = torch.zeros(4, 8, 2, 16)
    vc = torch.zeros(4, 8, 2, 16)
    key, value = torch.randn(3, 2, 16), torch.randn(3, 2, 16)
    slots = torch.tensor([31, 0, 9])
    ops.reshape_and_cache(key, value, kc, vc, slots)
    assert torch.equal(kc[3, 7], key[0]) and torch.equal(kc[0, 0], key[1])
    assert torch.equal(vc[1, 1], value[2])
    assert int((kc != 0).any(-1).any(-1).sum()) == 3


@pytest.mark.parametrize("is_neox", [True, False])
def test_rotary_matches_complex_rotation(is_neox: bool) -> None:
    d, heads, n = 64, 3, 11
    inv_freq = rope_inv_freq(d, 10000.0)
    cache = build_rope_cache(inv_freq, 64)
    positions = torch.randint(0, 64, (n,))
    q, k = torch.randn(n, heads, d), torch.randn(n, 1, d)
    q0, k0 = q.clone(), k.clone()
    ops.rotary_embedding(positions, q, k, cache, is_neox=is_neox)
    angle = positions[:, None].float() * inv_freq[None, :]  # [n, d/2]
    rot = torch.polar(torch.ones_like(angle), angle)[:, None, :]
    for before, after in ((q0, q), (k0, k)):
        if is_neox:
            z = torch.complex(before[..., : d // 2], before[..., d // 2 :]) * rot
            expected = torch.cat([z.real, z.imag], dim=-1)
        else:
            z = torch.view_as_complex(before.reshape(n, -1, d // 2, 2).contiguous()) * rot
            expected = torch.view_as_real(z).flatten(-2)
        torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)


def test_llama3_rope_scaling_keeps_high_and_scales_low_frequencies() -> None:
    base = rope_inv_freq(128, 500000.0)
    scaled = rope_inv_freq(
        128,
        500000.0,
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    assert torch.equal(scaled[:10], base[:10])
    torch.testing.assert_close(scaled[-5:], base[-5:] / 8.0)
    with pytest.raises(ValueError, match="yarn"):
        rope_inv_freq(64, 1e4, {"rope_type": "yarn", "factor": 4.0})


def test_norms_and_activation() -> None:
    x, res, w = torch.randn(5, 32), torch.randn(5, 32), torch.randn(32)
    expected = w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), expected)
    normed, summed = ops.fused_add_rms_norm(x, res, w, 1e-6)
    torch.testing.assert_close(summed, x + res)
    torch.testing.assert_close(normed, ops.rms_norm(x + res, w, 1e-6))
    gu = torch.randn(5, 64)
    torch.testing.assert_close(ops.silu_and_mul(gu), F.silu(gu[:, :32]) * gu[:, 32:])


def _brute_attention(
    query: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tables: torch.Tensor,
    starts: list[int],
    seq_lens: list[int],
    scale: float,
    window: int | None,
    cap: float | None,
) -> torch.Tensor:
    """Attention written out per query row and head, from the definitions."""
    bs, hkv = k.shape[1], k.shape[2]
    group = query.shape[1] // hkv
    out = torch.zeros_like(query)
    for i, seq_len in enumerate(seq_lens):
        q_len = starts[i + 1] - starts[i]
        ks = torch.stack([k[tables[i, p // bs], p % bs] for p in range(seq_len)])
        vs = torch.stack([v[tables[i, p // bs], p % bs] for p in range(seq_len)])
        for j in range(q_len):
            pos = seq_len - q_len + j
            lo = 0 if window is None else max(0, pos - window + 1)
            for h in range(query.shape[1]):
                scores = (ks[lo : pos + 1, h // group] @ query[starts[i] + j, h]) * scale
                if cap is not None:
                    scores = torch.tanh(scores / cap) * cap
                out[starts[i] + j, h] = torch.softmax(scores, 0) @ vs[lo : pos + 1, h // group]
    return out


@pytest.mark.parametrize("window,cap", [(None, None), (1, None), (4, None), (5, 3.0), (None, 2.0)])
def test_attention_sliding_window_and_soft_cap(window: int | None, cap: float | None) -> None:
    """Both ops against the definitions; blocks wholly before every window are
    filled with NaN and must never be read."""
    torch.manual_seed(3)
    nb, bs, hkv, d = 16, 4, 2, 16
    k, v = torch.randn(nb, bs, hkv, d), torch.randn(nb, bs, hkv, d)
    tables = torch.randperm(nb)[:15].view(3, 5).to(torch.int32)
    seq_lens, starts = [7, 19, 12], [0, 7, 8, 11]
    if window is not None:  # the blocks out of every new token's window hold garbage
        for i, seq_len in enumerate(seq_lens):
            first = max(0, seq_len - (starts[i + 1] - starts[i]) - window + 1)
            for b in range(first // bs):
                k[tables[i, b]] = float("nan")
                v[tables[i, b]] = float("nan")
    query = torch.randn(starts[-1], 4, d)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    expected = _brute_attention(query, k, v, tables, starts, seq_lens, 0.3, window, cap)
    got = ops.paged_attention_prefill(
        query, k, v, tables, torch.tensor(starts, dtype=torch.int32), lens, 0.3,
        sliding_window=window, soft_cap=cap,
    )  # fmt: skip
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    last = torch.tensor(starts[1:]) - 1
    decode_expected = _brute_attention(
        query[last], k, v, tables, [0, 1, 2, 3], seq_lens, 0.3, window, cap
    )
    got = ops.paged_attention_decode(
        query[last], k, v, tables, lens, 0.3, sliding_window=window, soft_cap=cap
    )
    torch.testing.assert_close(got, decode_expected, atol=1e-5, rtol=1e-5)


def test_attention_options_are_checked() -> None:
    q, k = torch.randn(1, 2, 16), torch.randn(2, 4, 1, 16)
    tables, lens = torch.zeros(1, 1, dtype=torch.int32), torch.tensor([1], dtype=torch.int32)
    with pytest.raises(ValueError, match="sliding_window"):
        ops.paged_attention_decode(q, k, k, tables, lens, 1.0, sliding_window=0)
    with pytest.raises(ValueError, match="soft_cap"):
        ops.paged_attention_decode(q, k, k, tables, lens, 1.0, soft_cap=-1.0)
