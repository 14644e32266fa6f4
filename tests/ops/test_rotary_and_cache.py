"""`ops.rotary_embedding_and_cache`: rotary then the KV cache write, one op.

Checked against the two ops in sequence on their torch paths (the op's meaning),
bit for bit: float32, float16 and bfloat16 activations; float32, float16 and
bfloat16 caches; q, k and v strided views of one qkv tensor, and heads that are
not contiguous (copied for the kernel, copied back); partial rotary; neox and
GPT-J pairs; MHA, GQA and MQA; the OpenMP branch (300 tokens). The C kernel equals
the two C kernels with padding slots (-1: rotated, not cached), checks positions
and slots before it touches anything, and is the one C call the op makes; the
dispatch (CPU kernel, CUDA kernel, the two ops in sequence where only they have
kernels, the reference) and both ops' validation.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import ops
import ops.cpu as cpu
from ops import cuda, rotary_cache
from ops.cpu import _build
from ops.cuda import _module
from ops.dispatch import TORCH
from ops.rotary import build_rope_cache, rope_inv_freq
from tests.ops.cpu_paths import torch_path
from tests.ops.test_dispatch import fresh_choices

needs_cpu_kernels = pytest.mark.skipif(cpu.library() is None, reason="CPU kernels not built")
OP = ops.rotary_embedding_and_cache
CUDA0 = torch.device("cuda", 0)
CPU = torch.device("cpu")
MAX_POS = 512
# (query heads, kv heads, head size, rotary dims, tokens)
SHAPES = [
    (4, 4, 64, 64, 5),  # MHA
    (6, 2, 64, 32, 7),  # GQA, partial rotary
    (8, 1, 80, 80, 300),  # MQA, the OpenMP branch
    (3, 1, 96, 64, 9),  # partial rotary, a head size with a 16-float tail
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


class Step:
    """One layer's step: a qkv tensor (q, k, v its column views), the table,
    positions, slots, and NaN-filled caches."""

    def __init__(
        self,
        shape: tuple[int, int, int, int, int],
        dtype: torch.dtype = torch.float32,
        cache_dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> None:
        heads, kv_heads, d, rot, n = shape
        g = torch.Generator().manual_seed(seed)
        self.heads, self.kv_heads, self.d, self.n = heads, kv_heads, d, n
        self.qkv = torch.randn(n, (heads + 2 * kv_heads) * d, generator=g).to(dtype)
        self.cos_sin = build_rope_cache(rope_inv_freq(rot, 10000.0), MAX_POS)
        self.positions = torch.randint(0, MAX_POS, (n,), generator=g)
        self.positions[0], self.positions[-1] = 0, MAX_POS - 1
        blocks = -(-n // 16) + 1
        self.slots = torch.randperm(blocks * 16, generator=g)[:n]
        shape4 = (blocks, 16, kv_heads, d)
        self.caches = [torch.full(shape4, math.nan, dtype=cache_dtype) for _ in range(2)]

    def clone(self) -> Step:
        other = object.__new__(Step)
        other.__dict__.update(self.__dict__)
        other.qkv, other.caches = self.qkv.clone(), [c.clone() for c in self.caches]
        return other

    def qkv_views(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, h, kv, d = self.n, self.heads, self.kv_heads, self.d
        q = self.qkv[:, : h * d].view(n, h, d)
        k = self.qkv[:, h * d : (h + kv) * d].view(n, kv, d)
        v = self.qkv[:, (h + kv) * d :].view(n, kv, d)
        return q, k, v

    def args(self, is_neox: bool = True) -> tuple[Any, ...]:
        q, k, v = self.qkv_views()
        kc, vc = self.caches
        return self.positions, q, k, v, self.cos_sin, kc, vc, self.slots, is_neox

    def two_ops(self, is_neox: bool = True) -> None:
        positions, q, k, v, cos_sin, kc, vc, slots, _ = self.args()
        ops.rotary_embedding(positions, q, k, cos_sin, is_neox)
        ops.reshape_and_cache(k, v, kc, vc, slots)

    def state(self) -> list[torch.Tensor]:
        """Every tensor the op may write, as bits (NaNs compare equal)."""
        return [_bits(t) for t in (self.qkv, *self.caches)]


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t.view(torch.int32) if t.element_size() == 4 else t.view(torch.int16)


def _same(a: Step, b: Step) -> None:
    for x, y in zip(a.state(), b.state(), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cache_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("is_neox", [True, False])
def test_equals_the_two_reference_ops(
    shape: tuple[int, int, int, int, int],
    dtype: torch.dtype,
    cache_dtype: torch.dtype,
    is_neox: bool,
) -> None:
    step = Step(shape, dtype, cache_dtype, seed=sum(shape))
    want = step.clone()
    with torch_path():
        want.two_ops(is_neox)
    original = step.qkv.clone()
    impl = OP.select(*step.args(is_neox))
    if dtype == torch.float32 and cpu.library() is not None:
        assert impl.fn is cpu.rotary_embedding_and_cache  # every cache dtype
    else:
        assert impl.fn is OP.reference
    OP(*step.args(is_neox))
    _same(step, want)
    _, k, _ = step.qkv_views()
    flat_k = step.caches[0].view(-1, step.kv_heads, step.d)
    assert torch.equal(flat_k[step.slots], k.to(cache_dtype))  # the rotated keys went in
    assert not torch.equal(step.qkv, original)  # and they were rotated


@needs_cpu_kernels
@pytest.mark.parametrize("cache_dtype", DTYPES, ids=str)
def test_heads_that_are_not_contiguous(cache_dtype: torch.dtype) -> None:
    """q, k and v `[T, H, D]` views with the heads interleaved (a head stride that
    is not D): the kernel works on contiguous copies, the op writes q and k back."""
    n, h, kv, d = 6, 4, 2, 64
    base = torch.randn(n, d, h + 2 * kv).transpose(1, 2)  # [T, H, D], head stride 1
    cos_sin = build_rope_cache(rope_inv_freq(32, 10000.0), 64)
    positions, slots = torch.tensor([0, 3, 63, 9, 1, 2]), torch.tensor([7, 0, 31, 8, 16, 3])
    runs = []
    for kernel in (True, False):
        qkv = base.clone()
        q, k, v = qkv[:, :h], qkv[:, h : h + kv], qkv[:, h + kv :]
        caches = [torch.zeros(2, 16, kv, d, dtype=cache_dtype) for _ in range(2)]
        if kernel:
            assert OP.select(positions, q, k, v, cos_sin, *caches, slots).backend is not TORCH
            OP(positions, q, k, v, cos_sin, *caches, slots)
        else:
            OP.reference(positions, q, k, v, cos_sin, *caches, slots)
        runs.append([_bits(t) for t in (qkv, *caches)])
    for got, want in zip(*runs, strict=True):
        assert torch.equal(got, want)


@needs_cpu_kernels
@pytest.mark.parametrize("cache_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("is_neox", [True, False])
def test_padding_slots_as_the_two_kernels(cache_dtype: torch.dtype, is_neox: bool) -> None:
    """A negative slot is a padding token: its q and k are rotated, nothing is
    cached (the C kernels' convention; the torch reference has none)."""
    step = Step((6, 2, 64, 32, 9), cache_dtype=cache_dtype, seed=3)
    step.slots[[1, 4]] = -1
    want = step.clone()
    positions, q, k, v, cos_sin, kc, vc, slots, _ = want.args()
    cpu.rotary_embedding(positions, q, k, cos_sin, is_neox)
    cpu.reshape_and_cache(k, v, kc, vc, slots)
    cpu.rotary_embedding_and_cache(*step.args(is_neox))
    _same(step, want)
    assert step.caches[0].isnan().sum() == step.caches[0].numel() - 7 * 2 * 64


@needs_cpu_kernels
@pytest.mark.parametrize("bad", ["position past", "position -1", "slot past"])
def test_out_of_range_touches_nothing(bad: str) -> None:
    step = Step((4, 2, 64, 64, 5))
    if bad.startswith("position"):
        step.positions[2] = MAX_POS if bad.endswith("past") else -1
        message = cpu.rotary.POSITION_OUT_OF_RANGE
    else:
        step.slots[2] = step.caches[0].shape[0] * 16
        message = cpu.kv_cache.SLOT_OUT_OF_RANGE
    before = step.state()
    with pytest.raises(IndexError, match=message):
        OP(*step.args())
    for x, y in zip(step.state(), before, strict=True):
        assert torch.equal(x, y)  # checked before anything is rotated or written


@pytest.mark.parametrize("kernels", [True, False])
def test_validation_is_both_ops(kernels: bool) -> None:
    """Refused as `rotary_embedding` and `reshape_and_cache` refuse (their
    messages), whatever would have run; ranges raise IndexError either way."""
    with fresh_choices() if kernels else torch_path():
        step = Step((4, 2, 64, 64, 5))
        positions, q, k, v, cos_sin, kc, vc, slots, _ = step.args()
        with pytest.raises(ValueError, match=r"^rotary_embedding: positions \(4,\)"):
            OP(positions[:4], q, k, v, cos_sin, kc, vc, slots)
        with pytest.raises(ValueError, match=r"^reshape_and_cache: key .* slot_mapping \(4,\)"):
            OP(positions, q, k, v, cos_sin, kc, vc, slots[:4])
        with pytest.raises(ValueError, match=r"^reshape_and_cache: key .* value \(5, 1, 64\)"):
            OP(positions, q, k, v[:, :1], cos_sin, kc, vc, slots)
        strided = torch.zeros((*kc.shape[:-1], 128))[..., :64]
        with pytest.raises(ValueError, match="contiguous KV caches only"):
            OP(positions, q, k, v, cos_sin, strided, strided, slots)
        with pytest.raises(IndexError):
            OP(positions + MAX_POS, q, k, v, cos_sin, kc, vc, slots)
        with pytest.raises(IndexError):
            OP(positions, q, k, v, cos_sin, kc, vc, slots + kc.shape[0] * 16)


# --- dispatch ------------------------------------------------------------------------


def _places(activations: torch.dtype, caches: torch.dtype, device: torch.device = CUDA0) -> Any:
    return ((device, activations),) * 3 + ((device, caches),) * 2


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_one_dtype_takes_the_fused_kernel(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_module, "cupy_importable", lambda: True)
    with fresh_choices():
        (impl,) = OP.candidates(_places(dtype, dtype))
        assert impl.backend is cuda.BACKEND and impl.fn is cuda.rotary_embedding_and_cache


@pytest.mark.parametrize("caches", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_caches_of_another_dtype_run_the_two_ops(
    caches: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """float32 activations beside a 16-bit cache on CUDA: no fused kernel, but
    rotary has its kernel, so the two ops run in sequence, each dispatching."""
    monkeypatch.setattr(_module, "cupy_importable", lambda: True)
    with fresh_choices():
        choices = OP.candidates(_places(torch.float32, caches))
        assert [i.backend for i in choices] == [rotary_cache.SPLIT]
    monkeypatch.setattr(_module, "cupy_importable", lambda: False)
    with fresh_choices():
        assert [i.backend for i in OP.candidates(_places(torch.float32, caches))] == [TORCH]


@needs_cpu_kernels
def test_cpu_caches_no_kernel_takes_run_the_two_ops() -> None:
    """float64 caches beside float32 activations: the rotary C kernel, then the
    cache write's reference; the same bits as the two ops."""
    step = Step((6, 2, 64, 32, 7), cache_dtype=torch.float64)
    want = step.clone()
    impl = OP.select(*step.args())
    assert impl.backend is rotary_cache.SPLIT
    OP(*step.args())
    want.two_ops()
    for x, y in zip(step.state()[1:], want.state()[1:], strict=True):
        assert torch.equal(x, y)
    assert torch.equal(step.qkv, want.qkv)


@needs_cpu_kernels
def test_one_c_call_per_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = cpu.library()
    calls: dict[str, int] = {}
    for symbol in (
        "llmcore_rotary_embedding_f32",
        "llmcore_reshape_and_cache_f32",
        "llmcore_rotary_embedding_and_cache_f32",
    ):
        original = getattr(lib, symbol)

        def spy(*args: Any, _symbol: str = symbol, _original: Any = original) -> Any:
            calls[_symbol] = calls.get(_symbol, 0) + 1
            return _original(*args)

        monkeypatch.setattr(lib, symbol, spy)
    OP(*Step((4, 2, 64, 64, 5), cache_dtype=torch.bfloat16).args())
    assert calls == {"llmcore_rotary_embedding_and_cache_f32": 1}


def test_kernels_disabled_run_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    with fresh_choices():
        monkeypatch.setattr(_build, "library", lambda: None)
        assert OP.select(*Step(SHAPES[0]).args()).fn is OP.reference
