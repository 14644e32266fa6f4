"""The CUDA wrappers against the kernels they launch, without a GPU or CuPy.

The `__global__` signatures are parsed from the `.cu` sources and compared with
the declarative specs the wrappers launch through (names, order, C types, the
head-size template parameter); then every wrapper's launch plan is built on CPU
tensors of every dtype and turned into the argument tuple CuPy would receive, so
a wrong order, a missing argument, or a tensor of the wrong dtype fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import ops
from ops.cuda import _module
from ops.cuda._kernels import ALL_KERNELS, HEAD_SIZES, PAGED_ATTENTION_DECODE
from ops.cuda._launch import POINTER, SCALAR_TYPES, VALUE_TYPES, Kernel, Launch, build_args
from ops.cuda.activation import plan_silu_and_mul
from ops.cuda.attention import (
    MIN_PARTITION,
    num_partitions,
    plan_paged_attention_decode,
    plan_paged_attention_prefill,
)
from ops.cuda.kv_cache import plan_reshape_and_cache
from ops.cuda.norm import plan_fused_add_rms_norm, plan_rms_norm
from ops.cuda.rotary import plan_rotary_embedding, plan_rotary_embedding_and_cache

KERNELS_DIR = Path(ops.__file__).parent / "cuda" / "kernels"
_GLOBAL = re.compile(
    r"template\s*<([^>]*)>\s*__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\(([^)]*)\)"
)
C_SIZES = {"int": 4, "long long": 8, "float": 4}


def _parse_sources() -> dict[str, tuple[str, list[str], list[tuple[str, str]]]]:
    """kernel name -> (file, template parameters, [(C type, name)])."""
    found = {}
    for path in sorted(KERNELS_DIR.glob("*.cu")):
        for template, name, params in _GLOBAL.findall(path.read_text(encoding="utf-8")):
            args = []
            for param in params.split(","):
                words = param.replace("__restrict__", "").replace("*", "* ").split()
                args.append((" ".join(words[:-1]).replace(" *", "*"), words[-1]))
            found[name] = (path.name, [t.strip() for t in template.split(",")], args)
    return found


SOURCES = _parse_sources()


def test_every_kernel_in_the_sources_has_a_spec_and_back() -> None:
    assert len(SOURCES) == 10
    assert sorted(SOURCES) == sorted(k.name for k in ALL_KERNELS)


@pytest.mark.parametrize("kernel", ALL_KERNELS, ids=lambda k: k.name)
def test_spec_matches_the_kernel_signature(kernel: Kernel) -> None:
    source, template, args = SOURCES[kernel.name]
    assert kernel.source == source
    assert [(a.ctype, a.name) for a in kernel.args] == args
    assert template[0] == "typename scalar_t"
    assert (template[1:] == ["int HEAD_SIZE"]) == bool(kernel.head_sizes), template
    for arg in kernel.args:
        assert arg.is_pointer or arg.ctype in VALUE_TYPES, arg
        if not arg.is_pointer:  # the numpy scalar CuPy packs is as wide as the C type
            assert np.dtype(VALUE_TYPES[arg.ctype]).itemsize == C_SIZES[arg.ctype]
    assert np.dtype(POINTER).itemsize == 8


def test_name_expressions_cover_every_dtype_and_head_size() -> None:
    exprs = PAGED_ATTENTION_DECODE.name_expressions(torch.bfloat16)
    assert exprs == [f"paged_attention_decode<__nv_bfloat16, {h}>" for h in HEAD_SIZES]
    assert set(SCALAR_TYPES.values()) == {"float", "__half", "__nv_bfloat16"}


def test_kernel_source_inlines_the_common_header() -> None:
    text = _module.kernel_source("attention.cu")
    assert '#include "common.cuh"' not in text and "warp_sum" in text


def _check(launch: Launch) -> None:
    args = build_args(launch)
    assert len(args) == len(launch.kernel.args)
    for arg, value in zip(launch.kernel.args, args, strict=True):
        given = launch.values[arg.name]
        if arg.is_pointer:
            assert isinstance(given, torch.Tensor) and value == given.data_ptr()
        else:
            assert type(value) is VALUE_TYPES[arg.ctype]
    assert all(0 < b <= 1024 for b in launch.block) and launch.block[0] % 32 == 0
    assert launch.grid[0] < 2**31 and max(launch.grid[1:]) < 2**16


DTYPES = list(SCALAR_TYPES)


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_plans(dtype: torch.dtype) -> None:
    x, res, w = (
        torch.randn(5, 96).to(dtype),
        torch.randn(5, 96).to(dtype),
        torch.ones(96, dtype=dtype),
    )
    _check(plan_rms_norm(x, w, 1e-6)[1])
    _check(plan_fused_add_rms_norm(x, res, w, 1e-6)[2])
    _check(plan_silu_and_mul(x)[1])
    qkv = torch.randn(7, (4 + 2 + 2) * 64).to(dtype)  # q and k as strided views, as in llama
    q, k = qkv[:, : 4 * 64].view(7, 4, 64), qkv[:, 4 * 64 : 6 * 64].view(7, 2, 64)
    positions = torch.arange(7)
    launch = plan_rotary_embedding(positions, q, k, torch.randn(16, 64), is_neox=False)
    _check(launch)
    assert launch.values["query_stride"] == 8 * 64 and launch.values["is_neox"] == 0
    caches = torch.zeros(4, 16, 2, 64, dtype=dtype), torch.zeros(4, 16, 2, 64, dtype=dtype)
    _check(plan_reshape_and_cache(k, k, *caches, torch.tensor([3, 0, 9, 1, 2, 5, 6])))
    v = qkv[:, 6 * 64 :].view(7, 2, 64)
    slots = torch.tensor([3, 0, 9, 1, -1, 5, 6])
    launch = plan_rotary_embedding_and_cache(
        positions, q, k, v, torch.randn(16, 32), *caches, slots, True
    )
    _check(launch)
    assert launch.values["value_stride"] == 8 * 64 and launch.values["kv_head_dim"] == 64
    assert launch.grid == (7, 1, 1) and launch.values["rot_dim"] == 32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_size", HEAD_SIZES)
@pytest.mark.parametrize("max_len", [40, 20000])
def test_attention_plans(dtype: torch.dtype, head_size: int, max_len: int) -> None:
    kc = torch.zeros(8, 16, 2, head_size, dtype=dtype)
    q = torch.randn(3, 6, head_size).to(dtype)
    tables = torch.zeros(3, 4, dtype=torch.int64)  # int64 tables are narrowed to int32
    lens = torch.tensor([1, max_len, 17])
    out, launches = plan_paged_attention_decode(q, kc, kc, tables, lens, 0.1, max_len)
    # 3 sequences x 2 kv heads (each serving its group of 3 query heads in one block)
    # = 6 blocks a partition; 20000 tokens fill the default 132 SMs with 88 of them.
    partitions = 1 if max_len == 40 else 88
    assert out.shape == q.shape and len(launches) == (2 if partitions > 1 else 1)
    for launch in launches:
        _check(launch)
    assert launches[0].grid == (2, 3, partitions)
    assert launches[0].values["min_partition"] == MIN_PARTITION
    starts = torch.tensor([0, 1, 3])
    out, launch = plan_paged_attention_prefill(q, kc, kc, tables, starts, lens[:2], 0.1)
    _check(launch)
    assert launch.name_expression.endswith(f", {head_size}>")
    if dtype == torch.float32 or head_size == 256:  # a block per (query token, head)
        assert launch.grid == (3, 6, 1) and launch.kernel.name == "paged_attention_prefill"
    else:  # tensor cores: a block per (32-token tile, head), one spare tile per sequence
        assert launch.grid == (2 + 3 // 32, 6, 1) and launch.block == (64, 1, 1)
        assert launch.kernel.name == "paged_attention_prefill_tc"
    assert (launch.values["sliding_window"], launch.values["soft_cap"]) == (0, 0.0)  # none


@pytest.mark.parametrize("window", [1, 1000, 9000])
def test_attention_plans_with_window_and_cap(window: int) -> None:
    """The options reach the kernels; a window bounds the split-K partitions (the
    kernel cuts each sequence's window), whatever the tables' capacity."""
    kc = torch.zeros(8, 16, 2, 64)
    q, tables, lens = torch.randn(3, 6, 64), torch.zeros(3, 4, dtype=torch.int32), torch.ones(3)
    _, launches = plan_paged_attention_decode(q, kc, kc, tables, lens, 0.1, 20000, window, 50.0)
    for launch in launches:
        _check(launch)
    decode = launches[0]
    assert (decode.values["sliding_window"], decode.values["soft_cap"]) == (window, 50.0)
    partitions = {1: 1, 1000: 16, 9000: 88}[window]  # 64-token minimum, 88 fill the GPU
    assert decode.grid[2] == partitions
    assert len(launches) == (2 if partitions > 1 else 1)
    starts = torch.tensor([0, 1, 3])
    _, launch = plan_paged_attention_prefill(q, kc, kc, tables, starts, lens[:2], 0.1, window, 2.0)
    _check(launch)
    assert (launch.values["sliding_window"], launch.values["soft_cap"]) == (window, 2.0)


@pytest.mark.parametrize(
    ("seqs", "heads", "kv_heads", "context", "expected"),
    [
        (1, 9, 3, 512, 8),  # 3 blocks a partition: as many 64-token chunks as there are
        (1, 9, 3, 40, 1),  # shorter than one chunk: one pass
        (64, 32, 8, 2048, 2),  # 512 blocks a partition: two cover 4 per SM
        (256, 32, 8, 4096, 1),  # 2048 blocks: one pass fills the GPU
        (1, 32, 8, 20000, 66),  # 8 blocks a partition: 66 x 8 >= 4 x 132
        (1, 1, 1, 100000, 128),  # the cap
        (3, 6, 6, 4096, 30),  # a group of 1: one block per head
    ],
)
def test_num_partitions_covers_the_gpu(
    seqs: int, heads: int, kv_heads: int, context: int, expected: int
) -> None:
    assert num_partitions(seqs, heads, kv_heads, context, 132) == expected


def test_build_args_rejects_wrong_dtype_order_and_names() -> None:
    x, w = torch.randn(2, 32), torch.randn(32)
    _, launch = plan_rms_norm(x, w, 1e-6)
    launch.values["weight"] = w.half()
    with pytest.raises(TypeError, match="weight"):
        build_args(launch)
    _, launch = plan_rms_norm(x, w, 1e-6)
    launch.values["hidden_size"] = 32.0
    with pytest.raises(TypeError, match="hidden_size"):
        build_args(launch)
    launch.values["hidden_size"] = 2**40
    with pytest.raises(OverflowError):
        build_args(launch)
    del launch.values["eps"]
    with pytest.raises(TypeError, match="missing"):
        build_args(launch)
    kc = torch.zeros(2, 16, 1, 64)
    _, launch = plan_paged_attention_prefill(
        torch.randn(1, 1, 64), kc, kc, torch.zeros(1, 1), torch.tensor([0, 1]), torch.ones(1), 1.0
    )
    launch.values["seq_lens"] = torch.ones(1, dtype=torch.int64)
    with pytest.raises(TypeError, match="seq_lens"):
        build_args(launch)


def test_cpu_tensors_take_the_torch_path() -> None:
    x = torch.randn(2, 64)
    assert not ops.cuda.BACKEND.accepts(((x.device, x.dtype),))
    assert not ops.cuda.BACKEND.accepts(((x.device, torch.float64),))
    assert ops.rms_norm.select(x, torch.ones(64), 1e-6).backend is not ops.cuda.BACKEND
    kc = torch.zeros(2, 16, 1, 72)
    assert not ops.cuda.attention.supports(torch.randn(1, 1, 72), kc, kc)  # head size 72


def test_a_kernel_that_does_not_build_is_reported_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def failing(source: str, dtype: torch.dtype, expression: str, device_index: int) -> None:
        calls.append(expression)
        raise RuntimeError("catastrophic error: cannot open source file mma.h")

    monkeypatch.setattr(_module, "_function", failing)
    _module._compiles.cache_clear()
    q, kc = torch.randn(5, 2, 64).to(torch.bfloat16), torch.zeros(4, 8, 1, 64, dtype=torch.bfloat16)
    starts, lens = torch.tensor([0, 5]), torch.tensor([5])
    _, launch = plan_paged_attention_prefill(q, kc, kc, torch.zeros(1, 1), starts, lens, 0.1)
    assert launch.kernel.name == "paged_attention_prefill_tc"
    key = (launch.kernel.source, launch.dtype, launch.name_expression, 0)  # CUDA device 0
    try:
        assert not _module._compiles(*key) and not _module._compiles(*key)
    finally:
        _module._compiles.cache_clear()
    assert len(calls) == 1 and "does not build here" in caplog.text
