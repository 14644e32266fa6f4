"""The dispatch of the public ops (`ops/dispatch.py`): which implementation a call
runs (CPU float32, CPU bfloat16, kernels disabled, CUDA placements with and
without CuPy, shapes a kernel does not take), that the choice is cached per
placement, that every implementation has the op's signature, and that argument
validation runs once per call, before any implementation, with the same errors
whichever implementation would have run. No GPU needed: CUDA placements are
given to the backends as (device, dtype) pairs."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import ops
from ops import cpu, cuda, dispatch, rotary_cache
from ops.cpu import _build
from ops.cuda import _module
from ops.dispatch import TORCH, Backend, Impl, Op
from ops.rotary import build_rope_cache, rope_inv_freq

REPO = Path(__file__).resolve().parents[2]
CUDA0 = torch.device("cuda", 0)
CPU = torch.device("cpu")


def _attention(dtype: torch.dtype, head_dim: int = 64) -> tuple[torch.Tensor, ...]:
    q = torch.randn(2, 4, head_dim, dtype=dtype)
    kc = torch.randn(4, 16, 2, head_dim, dtype=dtype)
    tables = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    return q, kc, kc.clone(), tables, torch.tensor([5, 20], dtype=torch.int32)


def _args(name: str, dtype: torch.dtype) -> tuple[Any, ...]:
    """Valid arguments of each public op, in `dtype` on the CPU."""
    x, w = torch.randn(3, 32, dtype=dtype), torch.ones(32, dtype=dtype)
    if name == "rms_norm":
        return x, w, 1e-6
    if name == "fused_add_rms_norm":
        return x, torch.randn(3, 32, dtype=dtype), w, 1e-6
    if name == "silu_and_mul":
        return (x,)
    if name == "rotary_embedding":
        q, k = torch.randn(3, 4, 64, dtype=dtype), torch.randn(3, 2, 64, dtype=dtype)
        return torch.tensor([0, 5, 9]), q, k, build_rope_cache(rope_inv_freq(64, 1e4), 16)
    if name == "reshape_and_cache":
        k, v = torch.randn(3, 2, 16, dtype=dtype), torch.randn(3, 2, 16, dtype=dtype)
        kc, vc = torch.zeros(2, 8, 2, 16, dtype=dtype), torch.zeros(2, 8, 2, 16, dtype=dtype)
        return k, v, kc, vc, torch.tensor([0, 9, 4])
    if name == "rotary_embedding_and_cache":
        positions, q, k, cos_sin = _args("rotary_embedding", dtype)
        kc, vc = torch.zeros(2, 8, 2, 64, dtype=dtype), torch.zeros(2, 8, 2, 64, dtype=dtype)
        return positions, q, k, torch.randn_like(k), cos_sin, kc, vc, torch.tensor([0, 9, 4])
    q, kc, vc, tables, lens = _attention(dtype)
    if name == "paged_attention_decode":
        return q, kc, vc, tables, lens, 0.125
    assert name == "paged_attention_prefill"
    return q, kc, vc, tables, torch.tensor([0, 1, 2], dtype=torch.int32), lens, 0.125


ALL_OPS = pytest.mark.parametrize("name", ops.__all__)
needs_cpu_kernels = pytest.mark.skipif(cpu.library() is None, reason="CPU kernels not built")


@contextlib.contextmanager
def fresh_choices() -> Iterator[None]:
    """Dispatch caches cleared on entry and exit (for patched backends)."""
    dispatch.clear_caches()
    try:
        yield
    finally:
        dispatch.clear_caches()


# The ops that write or read the KV cache take 16-bit caches beside float32 activations.
KV_CACHE_OPS = (
    "reshape_and_cache",
    "rotary_embedding_and_cache",
    "paged_attention_decode",
    "paged_attention_prefill",
)


def _cpu_backend(name: str) -> dispatch.Backend:
    return cpu.KV_CACHE_BACKEND if name in KV_CACHE_OPS else cpu.BACKEND


@ALL_OPS
def test_every_public_op_has_one_signature(name: str) -> None:
    op = getattr(ops, name)
    assert isinstance(op, Op) and dispatch.REGISTRY[name] is op and op.__name__ == name
    signature = inspect.signature(op.reference)
    assert inspect.signature(op) == signature and op.__doc__ == op.reference.__doc__
    backends = [impl.backend for impl in op.kernels]
    assert backends[:2] == [cuda.BACKEND, _cpu_backend(name)]
    # the fused op's last resort before its reference: the two ops it fuses
    assert backends[2:] == ([rotary_cache.SPLIT] if name == "rotary_embedding_and_cache" else [])
    for impl in op.kernels:
        assert inspect.signature(impl.fn) == signature, impl
    assert getattr(cpu, name) is op.kernels[1].fn and getattr(cuda, name) is op.kernels[0].fn


@needs_cpu_kernels
@ALL_OPS
def test_cpu_float32_runs_the_c_kernel(name: str) -> None:
    op = getattr(ops, name)
    impl = op.select(*_args(name, torch.float32))
    assert impl.backend is _cpu_backend(name) and impl.fn is getattr(cpu, name)


@ALL_OPS
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_cpu_other_dtypes_run_the_reference(name: str, dtype: torch.dtype) -> None:
    op = getattr(ops, name)
    impl = op.select(*_args(name, dtype))
    assert impl.backend is TORCH and impl.fn is op.reference


@ALL_OPS
def test_kernels_disabled_run_the_reference(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    op = getattr(ops, name)
    with fresh_choices():
        monkeypatch.setattr(_build, "library", lambda: None)
        assert op.select(*_args(name, torch.float32)).fn is op.reference
        op(*_args(name, torch.float32))  # and it runs


_PROBE = """
import json, torch, ops
from tests.ops.test_dispatch import _args
print(json.dumps({n: getattr(ops, n).select(*_args(n, torch.float32)).backend.name
                  for n in ops.__all__}))
"""


def test_environment_switch_disables_the_cpu_kernels() -> None:
    env = {**os.environ, "LLMCORE_CPU_KERNELS": "0", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == dict.fromkeys(ops.__all__, "torch")


@ALL_OPS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_placements_take_the_cuda_kernel_when_cupy_is_there(
    name: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = getattr(ops, name)
    places = ((CUDA0, dtype),) * len(op._on(*_args(name, torch.float32)))
    with fresh_choices():
        monkeypatch.setattr(_module, "cupy_importable", lambda: True)
        choices = op.candidates(places)
        assert choices[0].backend is cuda.BACKEND
        assert choices[-1].supports is None  # the reference, or a kernel that takes all
        assert (choices[-1].backend is TORCH) == (choices[0].supports is not None)
    with fresh_choices():
        monkeypatch.setattr(_module, "cupy_importable", lambda: False)
        assert [i.backend for i in op.candidates(places)] == [TORCH]


@pytest.mark.parametrize(
    "places",
    [
        ((CUDA0, torch.float16), (CUDA0, torch.bfloat16)),  # two dtypes
        ((CUDA0, torch.float16), (torch.device("cuda", 1), torch.float16)),  # two devices
        ((CUDA0, torch.float16), (CPU, torch.float16)),
        ((CUDA0, torch.float64), (CUDA0, torch.float64)),  # no kernel for float64
        ((CPU, torch.float32), (torch.device("meta"), torch.float32)),
    ],
)
def test_mixed_or_unsupported_placements_run_the_reference(
    places: tuple[dispatch.Place, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_module, "cupy_importable", lambda: True)
    with fresh_choices():
        assert [i.backend for i in ops.rms_norm.candidates(places)] == [TORCH]


@needs_cpu_kernels
def test_shapes_a_kernel_does_not_take_run_the_reference() -> None:
    q, kc, vc, tables, lens = _attention(torch.float32, head_dim=72)  # not a multiple of 16
    assert ops.paged_attention_decode.select(q, kc, vc, tables, lens, 0.1).backend is TORCH
    x = torch.randn(3, 32)
    broadcast = torch.full((1,), 2.0)  # one weight for every feature: torch's broadcasting
    assert ops.rms_norm.select(x, broadcast, 1e-6).backend is TORCH
    torch.testing.assert_close(ops.rms_norm(x, broadcast, 1e-6), ops.rms_norm(x, 2 * x**0, 1e-6))
    assert ops.silu_and_mul.select(torch.randn(3, 7)).backend is TORCH
    with pytest.raises(RuntimeError):  # an odd width is the reference's shape error
        ops.silu_and_mul(torch.randn(3, 7))
    empty = torch.randn(0, 32)
    assert ops.rms_norm(empty, torch.ones(32), 1e-6).shape == (0, 32)
    assert ops.silu_and_mul(empty).shape == (0, 16)


def _counting_backend(accepted: bool) -> tuple[Backend, list[tuple[dispatch.Place, ...]]]:
    seen: list[tuple[dispatch.Place, ...]] = []

    def accepts(places: tuple[dispatch.Place, ...]) -> bool:
        seen.append(places)
        return accepted

    return Backend("counting", accepts), seen


def test_choice_is_made_once_per_placement() -> None:
    backend, seen = _counting_backend(True)
    kernel_calls: list[torch.Tensor] = []

    def double(x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    def kernel(x: torch.Tensor) -> torch.Tensor:
        kernel_calls.append(x)
        return x + x

    op = Op("test_double", double, on=lambda x: (x,), kernels=[Impl(backend, kernel)])
    try:
        for _ in range(3):
            assert torch.equal(op(torch.ones(2)), torch.full((2,), 2.0))
        op(torch.ones(2, dtype=torch.float64))
        assert seen == [((CPU, torch.float32),), ((CPU, torch.float64),)]
        assert len(kernel_calls) == 4
        assert op.candidates(((CPU, torch.float32),)) == (op.kernels[0],)  # it takes all
        op.clear_cache()
        op(torch.ones(2))
        assert len(seen) == 3
    finally:
        del dispatch.REGISTRY["test_double"]


def test_supports_is_asked_per_call_and_the_reference_comes_last() -> None:
    backend, _ = _counting_backend(True)
    never, _ = _counting_backend(False)

    def neg(x: torch.Tensor) -> torch.Tensor:
        return -x

    def kernel(x: torch.Tensor) -> torch.Tensor:
        return x.new_full(x.shape, 7.0)

    short = Impl(backend, kernel, lambda x: x.shape[0] < 3)
    op = Op("test_neg", neg, on=lambda x: (x,), kernels=[Impl(never, kernel), short])
    try:
        assert op.candidates(((CPU, torch.float32),)) == (short, op._torch)
        assert op(torch.ones(2)).tolist() == [7.0, 7.0]
        assert op(torch.ones(3)).tolist() == [-1.0, -1.0, -1.0]
        assert op.select(torch.ones(3)).fn is neg
    finally:
        del dispatch.REGISTRY["test_neg"]


# --- validation ---------------------------------------------------------------------

VALIDATED = ["reshape_and_cache", "rotary_embedding", "rotary_embedding_and_cache",
             "paged_attention_decode", "paged_attention_prefill"]  # fmt: skip


def _modes() -> list[str]:
    return ["c kernel", "torch float32", "torch bfloat16"]


@contextlib.contextmanager
def _mode(mode: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[torch.dtype]:
    with fresh_choices():
        if mode == "torch float32":
            monkeypatch.setattr(_build, "library", lambda: None)
        yield torch.bfloat16 if mode == "torch bfloat16" else torch.float32


@pytest.mark.parametrize("name", VALIDATED)
@pytest.mark.parametrize("mode", _modes())
def test_validation_runs_once_per_call(
    name: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = getattr(ops, name)
    calls: list[int] = []
    check = op.validate

    def counted(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        check(*args, **kwargs)

    monkeypatch.setattr(op, "validate", counted)
    with _mode(mode, monkeypatch) as dtype:
        op(*_args(name, dtype))
    assert calls == [1]


def _bad_calls(dtype: torch.dtype) -> list[tuple[Callable[..., Any], tuple[Any, ...], str]]:
    """(op, arguments, message) of calls every implementation must refuse alike."""
    k, v, kc, vc, slots = _args("reshape_and_cache", dtype)
    positions, q, key, cos_sin = _args("rotary_embedding", dtype)
    aq, akc, avc, tables, lens, scale = _args("paged_attention_decode", dtype)
    starts = torch.tensor([0, 1, 2], dtype=torch.int32)
    strided = torch.zeros(2, 8, 2, 32, dtype=dtype)[..., :16]
    return [
        (ops.reshape_and_cache, (k[:, :1], v[:, :1], kc, vc, slots),
         "reshape_and_cache: key (3, 1, 16), value (3, 1, 16) and slot_mapping (3,) do not "
         "fit caches (2, 8, 2, 16)"),
        (ops.reshape_and_cache, (k, v, kc, vc, slots[:2]),
         "reshape_and_cache: key (3, 2, 16), value (3, 2, 16) and slot_mapping (2,) do not "
         "fit caches (2, 8, 2, 16)"),
        (ops.reshape_and_cache, (k, v, strided, strided, slots),
         "reshape_and_cache writes contiguous KV caches only"),
        (ops.reshape_and_cache, (k, v, kc, vc, slots.to("meta")),
         "reshape_and_cache: slot_mapping is on meta, key on cpu"),
        (ops.rotary_embedding, (positions, q, key[:2], cos_sin),
         "rotary_embedding: positions (3,), query (3, 4, 64), key (2, 2, 64) and a table of "
         "width 64 do not fit"),
        (ops.rotary_embedding, (positions[:2], q, key, cos_sin),
         "rotary_embedding: positions (2,), query (3, 4, 64), key (3, 2, 64) and a table of "
         "width 64 do not fit"),
        (ops.rotary_embedding, (positions.to("meta"), q, key, cos_sin),
         "rotary_embedding: positions on meta and the table on cpu, query on cpu"),
        (ops.paged_attention_decode, (aq[:, :3], akc, avc, tables, lens, scale),
         "paged_attention_decode: query (2, 3, 64), caches (4, 16, 2, 64) and (4, 16, 2, 64), "
         "block_tables (2, 2) and seq_lens (2,) do not fit"),
        (ops.paged_attention_decode, (aq[:1], akc, avc, tables, lens, scale),
         "paged_attention_decode: 1 query rows for 2 sequences"),
        (ops.paged_attention_decode, (aq, akc, avc, tables, lens.to("meta"), scale),
         "paged_attention_decode: every tensor must be on the query's device, cpu"),
        (ops.paged_attention_prefill, (aq, akc, avc, tables, starts[:2], lens, scale),
         "paged_attention_prefill: query_start_loc (2,) for 2 sequences (it needs one entry "
         "more)"),
        (ops.paged_attention_prefill, (aq, akc, avc[:3], tables, starts, lens, scale),
         "paged_attention_prefill: query (2, 4, 64), caches (4, 16, 2, 64) and (3, 16, 2, 64), "
         "block_tables (2, 2) and seq_lens (2,) do not fit"),
    ]  # fmt: skip


@pytest.mark.parametrize("mode", _modes())
def test_validation_errors_are_the_same_whatever_would_run(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _mode(mode, monkeypatch) as dtype:
        for op, args, message in _bad_calls(dtype):
            with pytest.raises(ValueError) as info:
                op(*args)
            assert str(info.value) == message


@pytest.mark.parametrize("mode", _modes())
def test_index_ranges_raise_index_error_whatever_runs(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked where it is free: in the C kernels (their own message) and by torch's
    indexing in the reference (torch's message); the type is the same."""
    with _mode(mode, monkeypatch) as dtype:
        k, v, kc, vc, _ = _args("reshape_and_cache", dtype)
        with pytest.raises(IndexError):
            ops.reshape_and_cache(k, v, kc, vc, torch.tensor([0, 16, 3]))
        _, q, key, cos_sin = _args("rotary_embedding", dtype)
        with pytest.raises(IndexError):
            ops.rotary_embedding(torch.tensor([0, 16, 3]), q, key, cos_sin)
