"""float16 and bfloat16 KV caches beside float32 activations on the CPU (issue 19).

Checked: `reshape_and_cache` rounds float32 keys and values into 16-bit caches bit
for bit as torch's `.to(dtype)` does (ties, overflow to infinity, float16
subnormals, a slot size with a scalar tail, the OpenMP branch); paged attention
over 16-bit caches equals the float32 kernel run on the same values widened to
float32, bit for bit, and the torch reference to float32 rounding (decode, prefill,
GQA, sliding windows with the out-of-window blocks NaN, soft caps); the AVX2/F16C
(`x86-64-v3`) and portable (`x86-64`) builds give the native build's bits; the
dispatch of mixed placements (CPU kernel; CUDA keeps one dtype, so the reference).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

import pytest
import torch

import ops
import ops.cpu as cpu
from ops import dispatch
from ops.cpu import _build
from ops.cpu import attention as cpu_attention
from ops.cpu import kv_cache as cpu_kv_cache
from tests.ops.cpu_paths import torch_path
from tests.ops.test_cpu_kernels import (
    ATOL,
    RTOL,
    Paged,
    _drop_out_of_window_blocks,
    _kernel_attention,
    _kv_step,
    _paged,
    _prefill_lens,
    _public_attention,
    _torch_attention,
)

HALF = pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _delicate(dtype: torch.dtype, n: int = 4096) -> torch.Tensor:
    """float32 values where rounding to `dtype` is delicate: exact ties between two
    neighbours (even and odd), one ulp either side of them, the overflow threshold,
    float16 subnormals and the values around 2^-25, signed zeros, infinities, and
    random bit patterns over the whole float32 range."""
    g = torch.Generator().manual_seed(1)
    bits = torch.randint(-(2**31), 2**31 - 1, (n,), generator=g, dtype=torch.int64)
    if dtype == torch.float16:
        # Half-range exponents (2^-24 .. 2^15), tie bits set below the half mantissa.
        exp = torch.randint(103, 143, (n,), generator=g)
        ties = (exp << 23) | (torch.randint(0, 2**10, (n,), generator=g) << 13) | 0x1000
        edges = [65504.0, 65519.0, 65520.0, 65536.0, 1e6, 2.0**-24, 2.0**-25, 1.5 * 2.0**-25]
        edges += [2.0**-14, 2.0**-14 * (1 - 2**-11), 3 * 2.0**-26, 1e-8, 6e-8]
    else:
        exp = torch.randint(1, 255, (n,), generator=g)
        ties = (exp << 23) | (torch.randint(0, 2**7, (n,), generator=g) << 16) | 0x8000
        edges = [3.3895e38, 3.3961e38, 3.4028e38, 1e-38, 1e-40, 1e-45]
    ties = torch.cat([ties, ties + 1, ties - 1])
    values = torch.cat([bits, ties]).to(torch.int32).view(torch.float32)
    specials = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), *edges])
    return torch.cat([specials, -specials, values])


def _write(dtype: torch.dtype, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Keys and values `[T, Hkv, D]` written to slots 0..T-1 by the C kernel and by
    the torch reference: (kernel key cache, kernel value cache, reference ...)."""
    t, hkv, d = key.shape
    caches = [torch.full((t, 1, hkv, d), 7.0, dtype=dtype) for _ in range(4)]
    slots = torch.randperm(t)
    cpu.reshape_and_cache(key, value, caches[0], caches[1], slots)
    with torch_path():
        ops.reshape_and_cache(key, value, caches[2], caches[3], slots)
    return tuple(caches)


def _same_bits_or_both_nan(got: torch.Tensor, want: torch.Tensor) -> None:
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))


@HALF
@pytest.mark.parametrize(("kv_heads", "head_dim"), [(1, 40), (2, 64)])  # 40: a scalar tail
def test_reshape_and_cache_rounds_as_torch(
    dtype: torch.dtype, kv_heads: int, head_dim: int
) -> None:
    values = _delicate(dtype)
    n = values.numel() // (kv_heads * head_dim) * kv_heads * head_dim
    key = values[:n].view(-1, kv_heads, head_dim)
    value = values[torch.randperm(values.numel())[:n]].view(-1, kv_heads, head_dim)
    kc, vc, ref_k, ref_v = _write(dtype, key, value)
    _same_bits_or_both_nan(kc, ref_k)
    _same_bits_or_both_nan(vc, ref_v)
    assert kc.isinf().any() and (kc != 0).any()  # it did write, overflow included


@HALF
@pytest.mark.parametrize("num_tokens", [7, 600])  # 600: the OpenMP branch
def test_reshape_and_cache_half_strided_and_padding(dtype: torch.dtype, num_tokens: int) -> None:
    key, value = _kv_step(num_tokens, 2, 80)  # column slices of a qkv tensor
    slots = torch.randperm(48 * 16)[:num_tokens]
    slots[1] = -1  # a padding token: skipped
    shape = (48, 16, 2, 80)
    kc, vc = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    cpu.reshape_and_cache(key, value, kc, vc, slots)
    keep = slots >= 0
    assert torch.equal(kc.view(-1, 2, 80)[slots[keep]], key[keep].to(dtype))
    assert torch.equal(vc.view(-1, 2, 80)[slots[keep]], value[keep].to(dtype))
    assert int((kc != 0).any(-1).any(-1).sum()) == int(keep.sum())


def _with_caches(p: Paged, dtype: torch.dtype) -> Paged:
    """`p` with its caches rounded to `dtype` (NaN stays NaN)."""
    return Paged(
        p.query, p.key_cache.to(dtype), p.value_cache.to(dtype), p.block_tables,
        p.query_start_loc, p.seq_lens, p.slots, p.scale, p.window, p.cap,
    )  # fmt: skip


def _widened(p: Paged) -> Paged:
    """`p` with its caches widened to float32: the values the kernel computes with."""
    return _with_caches(p, torch.float32)


@HALF
@pytest.mark.parametrize("decode", [True, False])
@pytest.mark.parametrize(
    ("head_dim", "group", "block_size", "window", "cap"),
    [
        (64, 1, 16, None, None),
        (128, 4, 16, None, None),
        (80, 3, 8, None, None),
        (64, 4, 16, 5, None),
        (128, 1, 8, 37, 30.0),
        (80, 2, 16, None, 2.0),
        (64, 2, 32, 1, None),
    ],
)
def test_paged_attention_half_caches(
    dtype: torch.dtype,
    decode: bool,
    head_dim: int,
    group: int,
    block_size: int,
    window: int | None,
    cap: float | None,
) -> None:
    if decode:
        lens, q_lens = [1, block_size - 1, block_size + 1, 3 * block_size + 5, 61], [1] * 5
    else:
        lens, q_lens = _prefill_lens(block_size)
    p = _paged(lens, q_lens, 2 * group, 2, head_dim, block_size)
    p.window, p.cap = window, cap
    if window is not None:
        _drop_out_of_window_blocks(p, window)
    half = _with_caches(p, dtype)
    got = _kernel_attention(half, decode)
    assert torch.isfinite(got).all()
    # The same arithmetic as the float32 kernel on the same values, bit for bit.
    assert torch.equal(got, _kernel_attention(_widened(half), decode))
    want = _torch_attention(half, decode)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    # The reference casts the gathered keys and values: exactly the widened cache's.
    assert torch.equal(want, _torch_attention(_widened(half), decode))


# The kernels built for AVX2 + F16C (x86-64-v3) and for no SIMD (x86-64: the portable
# float16 conversions) give the native build's bits (AVX-512 conversions here).
BUILDS = ["x86-64-v3", "x86-64"]


@pytest.fixture
def other_build(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    lib = _build.library_for(request.param, (), _build.KV_SOURCES)
    monkeypatch.setattr(cpu_attention, "library", lambda: lib)
    monkeypatch.setattr(cpu_kv_cache, "library", lambda: lib)
    yield


def _results(dtype: torch.dtype) -> list[torch.Tensor]:
    """The cache write of delicate values, then decode and prefill over the caches."""
    torch.manual_seed(5)
    values = _delicate(dtype)
    values = values[: values.numel() // 64 * 64].view(-1, 1, 64)
    out = list(_write(dtype, values, values.flip(0))[:2])
    for decode, (lens, q_lens) in ((True, ([3, 17, 40], [1, 1, 1])), (False, _prefill_lens(16))):
        p = _paged(lens, q_lens, 8, 2, 80, 16)
        p.window, p.cap = 20, 5.0
        out.append(_kernel_attention(_with_caches(p, dtype), decode))
        p.window = p.cap = None
        out.append(_kernel_attention(_with_caches(p, dtype), decode))
    return out


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 builds")
@pytest.mark.parametrize("other_build", BUILDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_other_instruction_sets_are_bit_identical(other_build: None, dtype: torch.dtype) -> None:
    ours = _results(dtype)
    with pytest.MonkeyPatch.context() as mp:  # back to the native library
        mp.setattr(cpu_attention, "library", _build.library)
        mp.setattr(cpu_kv_cache, "library", _build.library)
        native = _results(dtype)
    for a, b in zip(ours, native, strict=True):
        bits = torch.int32 if a.dtype == torch.float32 else torch.int16
        assert torch.equal(a.view(bits), b.view(bits))  # NaNs included


@HALF
@pytest.mark.parametrize("decode", [True, False])
def test_mixed_placements_dispatch(dtype: torch.dtype, decode: bool) -> None:
    """float32 queries with 16-bit caches run the C kernel; a float16 query, caches
    of two dtypes, or float32 caches under a 16-bit query run the reference."""
    p = _with_caches(_paged([5, 20], [1, 1] if decode else [5, 3], 4, 2, 64, 16), dtype)
    op = ops.paged_attention_decode if decode else ops.paged_attention_prefill
    args: tuple[object, ...]
    if decode:
        args = (p.query, p.key_cache, p.value_cache, p.block_tables, p.seq_lens, p.scale)
    else:
        args = (p.query, p.key_cache, p.value_cache, p.block_tables, p.query_start_loc,
                p.seq_lens, p.scale)  # fmt: skip
    assert op.select(*args).backend is cpu.KV_CACHE_BACKEND
    assert torch.equal(_public_attention(p, decode), _kernel_attention(p, decode))
    for q, k, v in [
        (p.query.to(dtype), p.key_cache, p.value_cache),
        (p.query, p.key_cache, p.value_cache.float()),
        (p.query.to(dtype), p.key_cache.float(), p.value_cache.float()),
    ]:
        assert op.select(q, k, v, *args[3:]).fn is op.reference
    key, value = _kv_step(3, 2, 64)
    write = (key, value, p.key_cache, p.value_cache, torch.tensor([0, 1, 2]))
    assert ops.reshape_and_cache.select(*write).backend is cpu.KV_CACHE_BACKEND
    assert (
        ops.reshape_and_cache.select(key.to(dtype), *write[1:]).fn
        is ops.reshape_and_cache.reference
    )


@HALF
def test_cuda_keeps_one_dtype(dtype: torch.dtype) -> None:
    cuda0 = torch.device("cuda", 0)
    assert not ops.cuda.BACKEND.accepts(((cuda0, torch.float32), (cuda0, dtype), (cuda0, dtype)))
    cpu0 = torch.device("cpu")
    assert cpu.KV_CACHE_BACKEND.accepts(((cpu0, torch.float32), (cpu0, dtype), (cpu0, dtype)))
    assert not cpu.KV_CACHE_BACKEND.accepts(((cpu0, torch.float32), (cpu0, dtype), (cuda0, dtype)))
    assert not cpu.BACKEND.accepts(((cpu0, torch.float32), (cpu0, dtype), (cpu0, dtype)))


def test_kernel_library_off_takes_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build, "library", lambda: None)
    dispatch.clear_caches()
    try:
        p = _with_caches(_paged([5], [1], 4, 2, 64, 16), torch.float16)
        assert (
            ops.paged_attention_decode.select(
                p.query, p.key_cache, p.value_cache, p.block_tables, p.seq_lens, p.scale
            ).fn
            is ops.paged_attention_decode.reference
        )
    finally:
        dispatch.clear_caches()
