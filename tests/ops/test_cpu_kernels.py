"""The C kernels of the CPU backend (`ops/cpu`) against the torch paths of `ops`.

Covered: paged attention (decode, prefill mixed with single-row sequences, chunked
prefill; head sizes 64, 128 and 80 (the generic path), GQA groups 1, 3 and 4, block
sizes 8, 16 and 32, ragged lengths, every unwritten cache slot NaN, random block
tables, the query a strided view of a qkv tensor), its batch invariance and its
online softmax (scores around ±1e3, the max in a later tile); reshape_and_cache and
rotary_embedding (bit-identical, strided views, out-of-range indices); rms_norm,
fused_add_rms_norm and silu_and_mul (to float32 rounding, scalar tails, strided
rows, the OpenMP branch); the dispatch of the public ops; and the build (one cached
library, reused; `LLMCORE_CPU_KERNELS=0`; a failing compiler).

The kernel result comes from the `ops.cpu` wrapper; the reference from the public
op with the kernel library reported missing (`_build.library` patched to None and
the dispatch caches cleared), which forces every torch path.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import ops
import ops.cpu as cpu
from ops import dispatch
from ops.cpu import _build
from ops.rotary import build_rope_cache, rope_inv_freq
from tests.ops.cpu_paths import torch_path
from tests.ops.test_reference_ops import _drop_out_of_window_blocks as drop_blocks

if cpu.library() is None:
    pytest.skip(
        "CPU kernels not built (no C compiler, a failed build or LLMCORE_CPU_KERNELS=0)",
        allow_module_level=True,
    )

REPO = Path(__file__).resolve().parents[2]
ATOL = RTOL = 1e-5  # attention: float32 summation order and the kernel's own exp


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The float32 bit patterns, so that bit-identical NaNs compare equal."""
    return t.contiguous().view(torch.int32)


def _strided_rows(rows: int, cols: int, extra: int = 24) -> torch.Tensor:
    """`[rows, cols]` random, each row the start of a wider row (row stride > cols)."""
    return torch.randn(rows, cols + extra)[:, :cols]


# --- paged attention ---------------------------------------------------------------


@dataclass
class Paged:
    query: torch.Tensor  # [T, Hq, D], a column slice of a qkv tensor
    key_cache: torch.Tensor
    value_cache: torch.Tensor
    block_tables: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    slots: list[torch.Tensor]  # each sequence's flat cache slots, in position order
    scale: float
    window: int | None = None
    cap: float | None = None


def _paged(
    seq_lens: list[int],
    q_lens: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
) -> Paged:
    """Random caches where only each sequence's `seq_lens[i]` slots are written (the
    rest, and two blocks nobody owns, hold NaN), blocks in random order, each table
    one column wider than needed (padding pointing at an unowned NaN block)."""
    owned = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(owned) + 2
    perm = torch.randperm(num_blocks).tolist()
    tables = torch.full((len(seq_lens), max(owned) + 1), perm[-1], dtype=torch.int32)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.full(shape, math.nan)
    value_cache = torch.full(shape, math.nan)
    flat_k = key_cache.view(-1, num_kv_heads, head_dim)
    flat_v = value_cache.view(-1, num_kv_heads, head_dim)
    slots = []
    taken = 0
    for i, n in enumerate(seq_lens):
        tables[i, : owned[i]] = torch.tensor(perm[taken : taken + owned[i]])
        taken += owned[i]
        pos = torch.arange(n)
        slot = tables[i].long()[pos // block_size] * block_size + pos % block_size
        flat_k[slot] = torch.randn(n, num_kv_heads, head_dim)
        flat_v[slot] = torch.randn(n, num_kv_heads, head_dim)
        slots.append(slot)
    num_tokens = sum(q_lens)
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim)
    query = qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    starts = torch.tensor([0, *itertools.accumulate(q_lens)], dtype=torch.int32)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    return Paged(query, key_cache, value_cache, tables, starts, lens, slots, head_dim**-0.5)


def _kernel_attention(p: Paged, decode: bool) -> torch.Tensor:
    return _attention(cpu, p, decode)


def _public_attention(p: Paged, decode: bool) -> torch.Tensor:
    """The public op (whichever path dispatch picks)."""
    return _attention(ops, p, decode)


def _attention(module: Any, p: Paged, decode: bool) -> torch.Tensor:
    """`module`'s paged_attention_decode or _prefill on `p`."""
    options = {"sliding_window": p.window, "soft_cap": p.cap}
    if decode:
        return module.paged_attention_decode(
            p.query, p.key_cache, p.value_cache, p.block_tables, p.seq_lens, p.scale, **options
        )
    return module.paged_attention_prefill(
        p.query, p.key_cache, p.value_cache, p.block_tables, p.query_start_loc, p.seq_lens,
        p.scale, **options,
    )  # fmt: skip


def _torch_attention(p: Paged, decode: bool) -> torch.Tensor:
    with torch_path():
        return _public_attention(p, decode)


def _prefill_lens(bs: int) -> tuple[list[int], list[int]]:
    """(seq_lens, q_lens): whole prompts, single rows among them, and chunks whose
    earlier tokens are already cached (seq_len > q_len)."""
    pairs = [(5, 5), (1, 1), (bs + 3, bs + 3), (37, 1), (3 * bs + 5, 9), (2 * bs + 1, bs - 1)]
    return [s for s, _ in pairs], [q for _, q in pairs]


ATTENTION_SHAPES = pytest.mark.parametrize(
    ("head_dim", "group", "block_size"),
    list(itertools.product([64, 128, 80], [1, 3, 4], [16, 32, 8])),
)


@ATTENTION_SHAPES
def test_paged_attention_decode_matches_torch(head_dim: int, group: int, block_size: int) -> None:
    lens = [1, block_size - 1, block_size, block_size + 1, 3 * block_size + 5, 61]
    p = _paged(lens, [1] * len(lens), 2 * group, 2, head_dim, block_size)
    assert cpu.attention_supported(2 * group, 2, head_dim, block_size)
    got = _kernel_attention(p, decode=True)
    assert torch.isfinite(got).all()  # no unwritten (NaN) slot was read
    torch.testing.assert_close(got, _torch_attention(p, decode=True), atol=ATOL, rtol=RTOL)


@ATTENTION_SHAPES
def test_paged_attention_prefill_matches_torch(head_dim: int, group: int, block_size: int) -> None:
    seq_lens, q_lens = _prefill_lens(block_size)
    p = _paged(seq_lens, q_lens, 2 * group, 2, head_dim, block_size)
    got = _kernel_attention(p, decode=False)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, _torch_attention(p, decode=False), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("decode", [True, False])
@pytest.mark.parametrize("head_dim", [64, 80])
def test_paged_attention_is_batch_invariant(decode: bool, head_dim: int) -> None:
    if decode:
        seq_lens, q_lens = [1, 15, 16, 17, 53, 100], [1] * 6
    else:
        seq_lens, q_lens = _prefill_lens(16)
    p = _paged(seq_lens, q_lens, 8, 2, head_dim, 16)
    batched = _kernel_attention(p, decode)
    for i in range(len(seq_lens)):
        rows = slice(int(p.query_start_loc[i]), int(p.query_start_loc[i + 1]))
        alone = Paged(
            p.query[rows],
            p.key_cache,
            p.value_cache,
            p.block_tables[i : i + 1],
            p.query_start_loc[i : i + 2] - p.query_start_loc[i],
            p.seq_lens[i : i + 1],
            p.slots[i : i + 1],
            p.scale,
        )
        assert torch.equal(_kernel_attention(alone, decode), batched[rows]), f"sequence {i}"


def _dense_reference(p: Paged, q_len: int, scores: torch.Tensor) -> torch.Tensor:
    """float64 softmax(scores) @ V for the one sequence of `p`: `scores` `[L, Hkv]`
    are the same for every query head of a kv head and every query row."""
    seq_len, group = scores.shape[0], p.query.shape[1] // scores.shape[1]
    values = p.value_cache.view(-1, *p.value_cache.shape[2:])[p.slots[0]].double()
    out = torch.empty(q_len, p.query.shape[1], p.query.shape[2], dtype=torch.float64)
    for j in range(q_len):
        n = seq_len - q_len + j + 1
        weights = scores[:n].double().softmax(0)  # [n, Hkv]
        per_kv = torch.einsum("lh,lhd->hd", weights, values[:n])
        out[j] = per_kv.repeat_interleave(group, dim=0)
    return out


@pytest.mark.parametrize(("base", "jump"), [(1000.0, 2.0), (-1000.0, 2.0), (0.0, 9.0)])
@pytest.mark.parametrize("block_size", [8, 16])
def test_online_softmax_rescales(base: float, jump: float, block_size: int) -> None:
    """Scores set exactly: kv head 0 rises (its max from position 48 on, several tiles
    in, so the earlier tiles' sums and accumulators must be rescaled), kv head 1 has
    its max in the first tile. (0, 9): small scores first, the max far above them
    later. Around ±1e3, any exp taken without the running max under- or overflows."""
    seq_len, q_len, kv_heads = 70, 3, 2
    p = _paged([seq_len], [q_len], 4, kv_heads, 64, block_size)
    pos = torch.arange(seq_len)
    rising = base + 0.25 * (pos % 7) + jump * (pos >= 48)
    falling = base + 0.25 * (pos % 5) + jump * (pos < 5)
    scores = torch.stack([rising, falling], dim=1)  # [L, Hkv], exact in float32
    keys = p.key_cache.view(-1, kv_heads, 64)
    keys[p.slots[0], :, 0] = scores
    p.query.zero_()
    p.query[..., 0] = 1.0  # with scale 1, q·k is exactly the key's first feature
    p.scale = 1.0
    got = _kernel_attention(p, decode=False)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, _torch_attention(p, decode=False), atol=ATOL, rtol=RTOL)
    want = _dense_reference(p, q_len, scores)
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=RTOL)


def _drop_out_of_window_blocks(p: Paged, window: int) -> None:
    """What the KV cache manager may do under a sliding window (see the helper it
    calls): a kernel that read a freed block would return NaN."""
    drop_blocks(p.key_cache, p.value_cache, p.block_tables, p.query_start_loc, p.seq_lens, window)


WINDOWS_AND_CAPS = pytest.mark.parametrize(
    ("window", "cap"),
    [
        (1, None),
        (5, None),
        (37, None),
        (1000, None),
        (None, 2.0),
        (None, 30.0),
        (5, 2.0),
        (37, 30.0),
    ],
)


@WINDOWS_AND_CAPS
@pytest.mark.parametrize(
    ("head_dim", "group", "block_size"), [(64, 1, 16), (80, 4, 8), (128, 3, 16)]
)
def test_paged_attention_window_and_cap_match_torch(
    window: int | None, cap: float | None, head_dim: int, group: int, block_size: int
) -> None:
    """Windows of one token, inside one block, spanning blocks, past every sequence;
    soft caps that bite (2) and that barely do (30), alone and with a window; decode
    and prefill (chunks, single rows) over ragged batches; out-of-window blocks NaN."""
    seq_lens, q_lens = _prefill_lens(block_size)
    decode_lens = [1, block_size - 1, block_size + 1, 3 * block_size + 5, 61]
    for decode, (lens, qs) in ((True, (decode_lens, [1] * 5)), (False, (seq_lens, q_lens))):
        p = _paged(lens, qs, 2 * group, 2, head_dim, block_size)
        p.scale, p.window, p.cap = 2.0 * head_dim**-0.5, window, cap  # sharper scores
        if window is not None:
            _drop_out_of_window_blocks(p, window)
        got = _kernel_attention(p, decode)
        assert torch.isfinite(got).all()  # no block out of the window was read
        want = _torch_attention(p, decode)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
        if window is not None and window < min(lens):  # the window changes the result
            p.window = None
            assert not torch.allclose(_torch_attention(p, decode)[-1], want[-1], atol=1e-3)


@pytest.mark.parametrize("cap", [0.5, 5.0, 50.0])
def test_soft_cap_of_exact_scores(cap: float) -> None:
    """Scores set exactly over [-3c, 3c] (tanh's polynomial and exp branches, and
    its saturation), against a float64 softmax of c * tanh(s / c)."""
    seq_len, q_len, kv_heads = 70, 3, 2
    p = _paged([seq_len], [q_len], 4, kv_heads, 64, 16)
    pos = torch.arange(seq_len, dtype=torch.float64)
    rising = (pos / (seq_len - 1) * 6 - 3) * cap
    scores = torch.stack([rising, rising.flip(0) * 0.3], dim=1).float()  # [L, Hkv]
    p.key_cache.view(-1, kv_heads, 64)[p.slots[0], :, 0] = scores
    p.query.zero_()
    p.query[..., 0] = 1.0
    p.scale, p.cap = 1.0, cap
    got = _kernel_attention(p, decode=False)
    capped = torch.tanh(scores.double() / cap) * cap
    torch.testing.assert_close(
        got.double(), _dense_reference(p, q_len, capped), atol=ATOL, rtol=RTOL
    )
    torch.testing.assert_close(got, _torch_attention(p, decode=False), atol=ATOL, rtol=RTOL)


def test_prefill_rows_before_the_first_sequence_are_skipped() -> None:
    """query_start_loc may start past row 0: those rows belong to no sequence."""
    kc, vc = torch.randn(4, 16, 1, 64), torch.randn(4, 16, 1, 64)
    query = torch.randn(5, 1, 64)
    tables = torch.tensor([[0, 1]], dtype=torch.int32)
    starts, lens = torch.tensor([2, 5], dtype=torch.int32), torch.tensor([20], dtype=torch.int32)
    got = cpu.paged_attention_prefill(query, kc, vc, tables, starts, lens, 0.125)
    want = cpu.paged_attention_prefill(query[2:], kc, vc, tables, starts - 2, lens, 0.125)
    assert torch.equal(got[2:], want)
    assert not got[:2].any()


def test_paged_attention_rejects_sizes_past_its_buffers() -> None:
    assert not cpu.attention_supported(8, 2, 72, 16)  # head_dim not a multiple of 16
    assert not cpu.attention_supported(34, 2, 64, 16)  # group of 17
    assert not cpu.attention_supported(8, 2, 272, 16)
    assert not cpu.attention_supported(6, 4, 64, 16)  # heads not a multiple of kv heads
    p = _paged([5], [1], 4, 2, 72, 16)
    with pytest.raises(RuntimeError, match="llmcore_paged_attention_f32"):
        _kernel_attention(p, decode=True)


# --- reshape_and_cache -----------------------------------------------------------------


def _kv_step(
    num_tokens: int, num_kv_heads: int, head_dim: int, num_heads: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value `[T, Hkv, D]` as the model has them: column slices of qkv."""
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim)
    width = num_kv_heads * head_dim
    k = qkv[:, num_heads * head_dim :][:, :width].view(num_tokens, num_kv_heads, head_dim)
    v = qkv[:, num_heads * head_dim + width :].view(num_tokens, num_kv_heads, head_dim)
    return k, v


def _caches(num_blocks: int, block_size: int, kv: int, d: int) -> tuple[torch.Tensor, ...]:
    shape = (num_blocks, block_size, kv, d)
    return torch.full(shape, math.nan), torch.full(shape, math.nan)


@pytest.mark.parametrize(("num_tokens", "num_blocks"), [(7, 5), (600, 48)])  # 600: OpenMP
def test_reshape_and_cache_bit_identical(num_tokens: int, num_blocks: int) -> None:
    key, value = _kv_step(num_tokens, 2, 80)
    assert key.stride(0) != 2 * 80  # strided, as the model passes them
    slots = torch.randperm(num_blocks * 16)[:num_tokens]
    kc, vc = _caches(num_blocks, 16, 2, 80)
    ref_k, ref_v = kc.clone(), vc.clone()
    cpu.reshape_and_cache(key, value, kc, vc, slots)
    with torch_path():
        ops.reshape_and_cache(key, value, ref_k, ref_v, slots)
    assert torch.equal(_bits(kc), _bits(ref_k)) and torch.equal(_bits(vc), _bits(ref_v))
    assert torch.equal(kc.view(-1, 2, 80)[slots], key)  # and it wrote something


def test_reshape_and_cache_slot_past_the_end_raises() -> None:
    key, value = _kv_step(3, 2, 64)
    kc, vc = _caches(4, 8, 2, 64)
    before = _bits(kc).clone()
    with pytest.raises(IndexError):
        cpu.reshape_and_cache(key, value, kc, vc, torch.tensor([0, 32, 5]))
    assert torch.equal(_bits(kc), before)  # checked before anything is written


def test_reshape_and_cache_rejects_shapes_that_do_not_fit() -> None:
    key, value = _kv_step(4, 2, 64)
    kc, vc = _caches(4, 8, 2, 64)
    with pytest.raises(ValueError, match="do not fit"):  # the op's validation, before any kernel
        ops.reshape_and_cache(key[:, :1], value[:, :1], kc, vc, torch.arange(4))
    with pytest.raises(ValueError, match="do not fit"):
        ops.reshape_and_cache(key, value, kc, vc, torch.arange(3))


def test_reshape_and_cache_skips_negative_slots() -> None:
    """The kernel's padding convention: a negative slot is a padding token, not
    written anywhere. (The torch path has no such convention: index_copy_ raises
    IndexError on a negative index.)"""
    key, value = _kv_step(4, 2, 64)
    kc, vc = _caches(4, 8, 2, 64)
    cpu.reshape_and_cache(key, value, kc, vc, torch.tensor([3, -1, 17, -5]))
    flat_k, flat_v = kc.view(-1, 2, 64), vc.view(-1, 2, 64)
    assert torch.equal(flat_k[[3, 17]], key[[0, 2]]) and torch.equal(flat_v[[3, 17]], value[[0, 2]])
    written = ~flat_k.isnan().all(-1).all(-1)
    assert written.nonzero().flatten().tolist() == [3, 17]


# --- rotary_embedding ------------------------------------------------------------------


def _qk_views(
    qkv: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    t = qkv.shape[0]
    q = qkv[:, : num_heads * head_dim].view(t, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim]
    return q, k.view(t, num_kv_heads, head_dim)


@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize(
    ("head_dim", "rotary_dim", "num_tokens"), [(64, 64, 9), (80, 80, 5), (96, 32, 7), (64, 64, 300)]
)
def test_rotary_bit_identical(
    is_neox: bool, head_dim: int, rotary_dim: int, num_tokens: int
) -> None:
    heads, kv_heads, max_pos = 6, 2, 512
    cos_sin = build_rope_cache(rope_inv_freq(rotary_dim, 10000.0), max_pos)
    positions = torch.randint(0, max_pos, (num_tokens,))
    positions[0], positions[-1] = 0, max_pos - 1
    qkv = torch.randn(num_tokens, (heads + 2 * kv_heads) * head_dim)
    original, ref = qkv.clone(), qkv.clone()
    q, k = _qk_views(qkv, heads, kv_heads, head_dim)
    cpu.rotary_embedding(positions, q, k, cos_sin, is_neox)
    with torch_path():
        ops.rotary_embedding(
            positions, *_qk_views(ref, heads, kv_heads, head_dim), cos_sin, is_neox
        )
    assert torch.equal(_bits(qkv), _bits(ref))  # the value columns untouched too
    q0, k0 = _qk_views(original, heads, kv_heads, head_dim)
    assert torch.equal(q[..., rotary_dim:], q0[..., rotary_dim:])  # partial rotary
    assert torch.equal(k[..., rotary_dim:], k0[..., rotary_dim:])
    assert not torch.equal(q[1:, :, :rotary_dim], q0[1:, :, :rotary_dim])  # it did rotate


def test_rotary_rejects_shapes_that_do_not_fit() -> None:
    cos_sin = build_rope_cache(rope_inv_freq(64, 10000.0), 16)
    q, k = torch.randn(3, 4, 64), torch.randn(4, 2, 64)
    with pytest.raises(ValueError, match="do not fit"):  # the op's validation, before any kernel
        ops.rotary_embedding(torch.arange(3), q, k, cos_sin)  # one key row too many
    with pytest.raises(ValueError, match="do not fit"):
        ops.rotary_embedding(torch.arange(2), q, k[:3], cos_sin)  # one position short


@pytest.mark.parametrize("bad", [512, -1])
def test_rotary_position_out_of_range_raises(bad: int) -> None:
    cos_sin = build_rope_cache(rope_inv_freq(64, 10000.0), 512)
    q, k = torch.randn(3, 4, 64), torch.randn(3, 2, 64)
    q0 = q.clone()
    with pytest.raises(IndexError):
        cpu.rotary_embedding(torch.tensor([1, bad, 2]), q, k, cos_sin)
    assert torch.equal(q, q0)


# --- norms and activation --------------------------------------------------------------

NORM_SHAPES = pytest.mark.parametrize(
    ("rows", "dim"),
    [(5, 64), (6, 100), (3, 7), (2100, 128)],  # tails; 2100x128: OpenMP
)


@NORM_SHAPES
@pytest.mark.parametrize("strided", [False, True])
def test_rms_norm_matches_torch(rows: int, dim: int, strided: bool) -> None:
    x = _strided_rows(rows, dim) if strided else torch.randn(rows, dim)
    weight = torch.randn(dim)
    got = cpu.rms_norm(x, weight, 1e-6)
    with torch_path():
        want = ops.rms_norm(x, weight, 1e-6)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@NORM_SHAPES
@pytest.mark.parametrize("strided", [False, True])
def test_fused_add_rms_norm_matches_torch(rows: int, dim: int, strided: bool) -> None:
    if strided:
        x, residual = _strided_rows(rows, dim), _strided_rows(rows, dim, extra=40)
    else:
        x, residual = torch.randn(rows, dim), torch.randn(rows, dim)
    x0, residual0, weight = x.clone(), residual.clone(), torch.randn(dim)
    normed, summed = cpu.fused_add_rms_norm(x, residual, weight, 1e-5)
    assert torch.equal(summed, x + residual)
    with torch_path():
        want = ops.rms_norm(x + residual, weight, 1e-5)
    torch.testing.assert_close(normed, want, atol=1e-6, rtol=1e-6)
    assert torch.equal(x, x0) and torch.equal(residual, residual0)  # inputs untouched


@pytest.mark.parametrize(("rows", "d"), [(5, 64), (6, 100), (3, 7), (600, 128)])  # 600: OpenMP
@pytest.mark.parametrize("strided", [False, True])
def test_silu_and_mul_matches_torch(rows: int, d: int, strided: bool) -> None:
    x = (_strided_rows(rows, 2 * d) if strided else torch.randn(rows, 2 * d)) * 4
    got = cpu.silu_and_mul(x)
    want = F.silu(x[:, :d].double()) * x[:, d:].double()
    torch.testing.assert_close(got.double(), want, atol=1e-7, rtol=1e-6)
    with torch_path():
        torch.testing.assert_close(got, ops.silu_and_mul(x), atol=1e-7, rtol=1e-6)


def test_silu_of_huge_negative_gates_is_zero() -> None:
    gate = torch.tensor([[-3e38, -1e37, -1e5, -89.0, -80.0, -1.0, 0.0, 1e5]])
    x = torch.cat([gate, torch.ones_like(gate)], dim=1)
    want = F.silu(gate.double())
    torch.testing.assert_close(cpu.silu_and_mul(x).double(), want, atol=1e-30, rtol=1e-6)


# --- dispatch -------------------------------------------------------------------------


def _run_rms_norm(dtype: torch.dtype) -> Any:
    return ops.rms_norm(torch.randn(3, 32, dtype=dtype), torch.ones(32, dtype=dtype), 1e-6)


def _run_fused(dtype: torch.dtype) -> Any:
    x, r = torch.randn(3, 32, dtype=dtype), torch.randn(3, 32, dtype=dtype)
    return ops.fused_add_rms_norm(x, r, torch.ones(32, dtype=dtype), 1e-6)


def _run_silu(dtype: torch.dtype) -> Any:
    return ops.silu_and_mul(torch.randn(3, 64, dtype=dtype))


def _run_rotary(dtype: torch.dtype) -> Any:
    q, k = torch.randn(3, 4, 64, dtype=dtype), torch.randn(3, 2, 64, dtype=dtype)
    cos_sin = build_rope_cache(rope_inv_freq(64, 10000.0), 16)
    ops.rotary_embedding(torch.tensor([0, 5, 9]), q, k, cos_sin)
    return q


def _run_cache(dtype: torch.dtype) -> Any:
    kc, vc = torch.zeros(2, 8, 2, 16, dtype=dtype), torch.zeros(2, 8, 2, 16, dtype=dtype)
    k, v = torch.randn(3, 2, 16, dtype=dtype), torch.randn(3, 2, 16, dtype=dtype)
    ops.reshape_and_cache(k, v, kc, vc, torch.tensor([0, 9, 4]))
    return kc


def _cast(p: Paged, dtype: torch.dtype) -> Paged:
    p.query, p.key_cache, p.value_cache = (
        t.to(dtype) for t in (p.query, p.key_cache, p.value_cache)
    )
    return p


def _run_decode(dtype: torch.dtype, head_dim: int = 64) -> Any:
    return _public_attention(_cast(_paged([5, 20], [1, 1], 4, 2, head_dim, 16), dtype), True)


def _run_prefill(dtype: torch.dtype, head_dim: int = 64) -> Any:
    return _public_attention(_cast(_paged([5, 20], [5, 3], 4, 2, head_dim, 16), dtype), False)


DISPATCH = pytest.mark.parametrize(
    ("run", "symbol"),
    [
        pytest.param(_run_rms_norm, "llmcore_rms_norm_f32", id="rms_norm"),
        pytest.param(_run_fused, "llmcore_fused_add_rms_norm_f32", id="fused_add_rms_norm"),
        pytest.param(_run_silu, "llmcore_silu_and_mul_f32", id="silu_and_mul"),
        pytest.param(_run_rotary, "llmcore_rotary_embedding_f32", id="rotary_embedding"),
        pytest.param(_run_cache, "llmcore_reshape_and_cache_f32", id="reshape_and_cache"),
        pytest.param(_run_decode, "llmcore_paged_attention_f32", id="paged_attention_decode"),
        pytest.param(_run_prefill, "llmcore_paged_attention_f32", id="paged_attention_prefill"),
    ],
)


def _spy(monkeypatch: pytest.MonkeyPatch, symbol: str) -> list[int]:
    """Replace the C function `symbol` of the kernel library by a wrapper counting
    its calls (the wrappers look it up on the library at every call)."""
    calls: list[int] = []
    lib = cpu.library()
    original = getattr(lib, symbol)

    def spy(*args: Any) -> Any:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(lib, symbol, spy)
    return calls


@DISPATCH
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_public_ops_dispatch_on_dtype(
    monkeypatch: pytest.MonkeyPatch,
    run: Callable[[torch.dtype], Any],
    symbol: str,
    dtype: torch.dtype,
) -> None:
    calls = _spy(monkeypatch, symbol)
    out = run(dtype)
    assert len(calls) == (1 if dtype == torch.float32 else 0)
    first = out[0] if isinstance(out, tuple) else out
    assert first.dtype == dtype and torch.isfinite(first.float()).all()


@pytest.mark.parametrize("run", [_run_decode, _run_prefill])
def test_attention_unsupported_head_dim_takes_torch_path(
    monkeypatch: pytest.MonkeyPatch, run: Callable[..., Any]
) -> None:
    calls = _spy(monkeypatch, "llmcore_paged_attention_f32")
    out = run(torch.float32, head_dim=72)
    assert not calls and torch.isfinite(out).all()


def _places(*tensors: torch.Tensor) -> tuple[dispatch.Place, ...]:
    return tuple((t.device, t.dtype) for t in tensors)


def test_available() -> None:
    f32, bf16 = torch.zeros(2), torch.zeros(2, dtype=torch.bfloat16)
    assert cpu.BACKEND.accepts(_places(f32, f32))
    assert not cpu.BACKEND.accepts(_places(f32, bf16))
    assert not cpu.BACKEND.accepts(_places(torch.zeros(2, dtype=torch.float64)))
    assert not cpu.BACKEND.accepts(_places(torch.zeros(2, device="meta")))


# --- the build -----------------------------------------------------------------------

_PROBE = """
import json, logging, math
logging.basicConfig(level=logging.WARNING, format="%(name)s:%(levelname)s:%(message)s")
import torch, ops, ops.cpu
lib = ops.cpu.library()
x, w = torch.randn(3, 40), torch.rand(40)
ok = torch.allclose(ops.rms_norm(x, w, 1e-6),
                    w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), atol=1e-6)
print(json.dumps({"lib": None if lib is None else lib._name, "ok": bool(ok)}))
"""


def _probe(env: dict[str, str]) -> tuple[dict[str, Any], str]:
    """Import ops.cpu in a fresh interpreter (its own functools.cache) with `env`."""
    base = {k: v for k, v in os.environ.items() if k not in ("CC", "LLMCORE_CPU_KERNELS")}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**base, "OMP_NUM_THREADS": "1", **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_build_is_cached_and_reused(tmp_path: Path) -> None:
    cache = tmp_path / "nested" / "cache"  # created by the build
    first, _ = _probe({"LLMCORE_CACHE_DIR": str(cache)})
    built = list(cache.iterdir())
    assert len(built) == 1 and built[0].match("cpu-kernels-*.so")  # no temporary left
    assert first == {"lib": str(built[0]), "ok": True}
    stat = built[0].stat()
    second, _ = _probe({"LLMCORE_CACHE_DIR": str(cache)})
    assert second == first
    assert list(cache.iterdir()) == built
    again = built[0].stat()
    assert (again.st_mtime_ns, again.st_ino) == (stat.st_mtime_ns, stat.st_ino)  # not rebuilt


def test_failing_compiler_leaves_the_torch_paths(tmp_path: Path) -> None:
    assert _build.compiler() is not None
    # `false` is on PATH, so compiler() takes it, and the build exits 1.
    result, stderr = _probe({"CC": "false", "LLMCORE_CACHE_DIR": str(tmp_path)})
    assert result == {"lib": None, "ok": True}
    assert "llmcore.ops:WARNING:CPU kernels unavailable" in stderr
    assert not list(tmp_path.rglob("*.so"))


def test_missing_compiler_named_by_cc_is_not_replaced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert _build.compiler() is None
    monkeypatch.delenv("CC")
    assert _build.compiler() in ("cc", "gcc", "clang")


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang is not installed")
def test_clang_builds_with_or_without_openmp(tmp_path: Path) -> None:
    """clang takes the other branch of vec.h; without LLVM's libomp `-fopenmp` does not
    link and the kernels are built single-threaded (`-fopenmp-simd`), with a warning."""
    main = tmp_path / "main.c"
    main.write_text("int main(void) { return 0; }\n")
    links = subprocess.run(
        ["clang", "-fopenmp", str(main), "-o", str(tmp_path / "main")], capture_output=True
    )
    result, stderr = _probe({"CC": "clang", "LLMCORE_CACHE_DIR": str(tmp_path / "cache")})
    assert result["ok"] and result["lib"] is not None
    assert ("built without OpenMP" in stderr) == (links.returncode != 0)


@pytest.mark.parametrize("value", ["0", "false", "No"])
def test_disabled_by_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    monkeypatch.setenv("LLMCORE_CPU_KERNELS", value)
    monkeypatch.setenv("LLMCORE_CACHE_DIR", str(tmp_path))
    assert _build.library.__wrapped__() is None  # the uncached body, in this process
    assert not list(tmp_path.iterdir())
