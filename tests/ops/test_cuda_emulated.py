"""The CUDA kernels run on the CPU, through the Python wrappers, against the torch
reference ops: the real `.cu` sources compiled by g++ with `cuda_emulator.h`
(std::threads for CUDA threads, barriers for __syncthreads and warp shuffles).
The C++ glue is generated from the kernel declarations in `ops/cuda/_kernels.py`
(C types included), and each wrapper's `run` is swapped for one that hands
`build_args`' tuple to the emulated kernel. This checks indexing, strides,
synchronisation, split-K merging and rounding where no GPU exists. Skipped
without g++ or the CUDA headers (cuda_fp16.h, cuda_bf16.h)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import llmcore
import ops
from ops.cuda import activation, attention, kv_cache, norm, rotary
from ops.cuda._kernels import ALL_KERNELS, COMPILE_OPTIONS
from ops.cuda._launch import SCALAR_TYPES, Launch, build_args
from ops.cuda.build_check import KERNELS_DIR, find_nvcc
from ops.rotary import build_rope_cache, rope_inv_freq
from tests.ops.test_reference_ops import _drop_out_of_window_blocks, _paged_setup

HERE = Path(__file__).resolve().parent
HEAD_SIZES = (64, 80, 128, 256)  # 80 leaves lanes idle in the last slice of a head
EXPRESSIONS = [
    (kernel, dtype, expr)
    for kernel in ALL_KERNELS
    for dtype in SCALAR_TYPES
    for expr in kernel.name_expressions(dtype)
    if not kernel.head_sizes or any(expr.endswith(f", {h}>") for h in HEAD_SIZES)
]
INDEX = {expr: i for i, (_, _, expr) in enumerate(EXPRESSIONS)}
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
_CTYPES: dict[type, Any] = {
    np.uint64: ctypes.c_uint64,
    np.int32: ctypes.c_int32,
    np.int64: ctypes.c_int64,
    np.float32: ctypes.c_float,
}


def _cuda_include() -> Path | None:
    nvcc = find_nvcc()
    candidates = [Path(os.environ.get("CUDA_HOME", "/nonexistent")) / "include"]
    candidates += [Path(nvcc).resolve().parent.parent / "include"] if nvcc else []
    candidates.append(Path("/usr/local/cuda/include"))
    return next((c for c in candidates if (c / "cuda_bf16.h").exists()), None)


def _glue() -> str:
    lines = ['#include "cuda_emulator.h"']
    lines += [f'#include "{KERNELS_DIR / s}"' for s in sorted({k.source for k in ALL_KERNELS})]
    for i, (kernel, dtype, expr) in enumerate(EXPRESSIONS):
        lines.append(f'extern "C" void emu_{i}(unsigned gx, unsigned gy, unsigned gz, unsigned bx,')
        lines.append("                         void** a) {")
        for j, arg in enumerate(kernel.args):
            ctype = arg.ctype.replace("scalar_t", SCALAR_TYPES[dtype])
            lines.append(f"  {ctype} p{j} = *reinterpret_cast<{ctype}*>(a[{j}]);")
        call = ", ".join(f"p{j}" for j in range(len(kernel.args)))
        lines.append(f"  emu_launch({{gx, gy, gz}}, {{bx, 1, 1}}, [=] {{ {expr}({call}); }});")
        lines.append("}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    include, gxx = _cuda_include(), shutil.which("g++")
    if include is None or gxx is None:
        pytest.skip("needs g++ and the CUDA headers")
    folder = tmp_path_factory.mktemp("cuda_emulator")
    (folder / "glue.cpp").write_text(_glue(), encoding="utf-8")
    defines = [o for o in COMPILE_OPTIONS if o.startswith("-D")]
    cmd = [gxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", *defines]
    cmd += [f"-I{include}", f"-I{HERE}", f"-I{KERNELS_DIR}", "glue.cpp", "-o", "emu.so"]
    subprocess.run(cmd, cwd=folder, check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(folder / "emu.so"))


def _emulated_run(lib: ctypes.CDLL, launch: Launch) -> None:
    boxes = [_CTYPES[type(a)](a.item()) for a in build_args(launch)]
    pointers = (ctypes.c_void_p * len(boxes))(*(ctypes.addressof(b) for b in boxes))
    (gx, gy, gz), (bx, by, bz) = launch.grid, launch.block
    assert by == bz == 1
    getattr(lib, f"emu_{INDEX[launch.name_expression]}")(gx, gy, gz, bx, pointers)


@pytest.fixture
def emulated(library: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for module in (activation, attention, kv_cache, norm, rotary):
        monkeypatch.setattr(module, "run", lambda launch: _emulated_run(library, launch))
    monkeypatch.setattr(attention, "kernel_compiles", lambda launch: True)  # the emulator's
    yield


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])


DTYPES = list(SCALAR_TYPES)


@pytest.mark.parametrize("dtype", DTYPES)
def test_norms_and_silu(emulated: None, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 200, generator=g).to(dtype)[:, :100]  # strided rows
    res, w = torch.randn(3, 100, generator=g).to(dtype), torch.randn(100, generator=g).to(dtype)
    _close(ops.cuda.rms_norm(x, w, 1e-6), ops.rms_norm(x, w, 1e-6), dtype)
    got, want = (
        ops.cuda.fused_add_rms_norm(x, res, w, 1e-5),
        ops.fused_add_rms_norm(x, res, w, 1e-5),
    )
    _close(got[0], want[0], dtype)
    _close(got[1], want[1], dtype)
    gu = torch.randn(2, 3, 2 * 300, generator=g).to(dtype)
    _close(ops.cuda.silu_and_mul(gu), ops.silu_and_mul(gu), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False])
def test_rotary_and_cache_write(emulated: None, dtype: torch.dtype, is_neox: bool) -> None:
    n, heads, kv_heads, d, rot = 5, 3, 1, 64, 32  # partial rotary
    cache = build_rope_cache(rope_inv_freq(rot, 10000.0), 64)
    positions = torch.tensor([0, 7, 63, 1, 30])
    qkv = torch.randn(n, (heads + 2 * kv_heads) * d).to(dtype)
    want = qkv.clone()
    for t, rotate in ((qkv, ops.cuda.rotary_embedding), (want, ops.rotary_embedding)):
        q = t[:, : heads * d].view(n, heads, d)
        k = t[:, heads * d : (heads + kv_heads) * d].view(n, kv_heads, d)
        rotate(positions, q, k, cache, is_neox)
    _close(qkv, want, dtype)
    k, v = qkv[:, heads * d :].view(n, 2, kv_heads, d).unbind(1)
    slots = torch.tensor([5, 0, 31, 16, 17])
    caches = [torch.zeros(2, 16, kv_heads, d, dtype=dtype) for _ in range(4)]
    ops.cuda.reshape_and_cache(k, v, caches[0], caches[1], slots)
    ops.reshape_and_cache(k, v, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False])
def test_rotary_embedding_and_cache_in_one_launch(
    emulated: None, dtype: torch.dtype, is_neox: bool
) -> None:
    """The fused kernel gives the bits of the two kernels in sequence: q and k of
    one qkv tensor rotated in place (partial rotary, GQA), the rotated key and the
    value in their slots, a padding slot (-1) rotated and not cached."""
    n, heads, kv_heads, d, rot = 5, 4, 2, 80, 32
    cache = build_rope_cache(rope_inv_freq(rot, 10000.0), 64)
    positions, slots = torch.tensor([0, 7, 63, 1, 30]), torch.tensor([5, -1, 31, 16, 17])
    qkv = torch.randn(n, (heads + 2 * kv_heads) * d).to(dtype)
    runs = []
    for fused in (True, False):
        t = qkv.clone()
        q = t[:, : heads * d].view(n, heads, d)
        k, v = t[:, heads * d :].view(n, 2, kv_heads, d).unbind(1)
        caches = [torch.full((2, 16, kv_heads, d), 7.0, dtype=dtype) for _ in range(2)]
        if fused:
            ops.cuda.rotary_embedding_and_cache(positions, q, k, v, cache, *caches, slots, is_neox)
        else:
            ops.cuda.rotary_embedding(positions, q, k, cache, is_neox)
            ops.cuda.reshape_and_cache(k, v, *caches, slots)
        runs.append((t, *caches))
    for got, want in zip(*runs, strict=True):
        assert torch.equal(got, want)
    rotated, key_cache, _ = runs[0]
    want = qkv.clone()
    q, k = want[:, : heads * d].view(n, heads, d), want[:, heads * d :][:, : kv_heads * d]
    ops.rotary_embedding(positions, q, k.view(n, kv_heads, d), cache, is_neox)
    _close(rotated, want, dtype)
    assert (key_cache.view(32, -1) != 7.0).any(-1).nonzero().flatten().tolist() == [5, 16, 17, 31]


# (dtype, head size, split-K, query heads, kv heads, window, soft cap): every
# dtype, both head sizes, both paths, GQA groups of 1, 3, 6 (two blocks: 4 + 2
# heads) and 8; windows of one token, inside a block (8 tokens), across blocks and
# partitions (16 tokens), past every sequence; caps alone and with a window.
DECODE_CASES = [
    (torch.float32, 64, False, 6, 2, None, None),
    (torch.float32, 80, True, 6, 1, None, None),
    (torch.float32, 64, True, 2, 2, None, None),
    (torch.float16, 64, True, 6, 2, None, None),
    (torch.float16, 80, False, 2, 2, None, None),
    (torch.bfloat16, 64, False, 6, 1, None, None),
    (torch.bfloat16, 80, True, 8, 1, None, None),
    (torch.float32, 64, True, 6, 2, 20, None),
    (torch.float32, 80, False, 6, 1, 5, 2.0),
    (torch.float16, 64, True, 2, 2, 1, None),
    (torch.bfloat16, 64, True, 8, 1, None, 2.0),
    (torch.float32, 64, True, 4, 2, 1000, 30.0),
    (torch.float16, 80, False, 2, 2, 11, None),
    (torch.bfloat16, 128, True, 8, 2, None, None),  # slots of 16 threads, no idle lane
    (torch.float32, 128, True, 4, 1, 13, None),  # slots of a whole warp
    (torch.bfloat16, 256, True, 8, 2, None, 30.0),  # Gemma's head: slots of a warp
    (torch.float32, 256, False, 2, 1, 9, None),  # two 16-byte loads a thread a row
]


@pytest.mark.parametrize(
    ("dtype", "d", "split", "heads", "kv_heads", "window", "cap"), DECODE_CASES
)
def test_paged_decode(
    emulated: None,
    monkeypatch: pytest.MonkeyPatch,
    dtype: torch.dtype,
    d: int,
    split: bool,
    heads: int,
    kv_heads: int,
    window: int | None,
    cap: float | None,
) -> None:
    # Three partitions of at least 4 tokens: chunks of 4 to 15 rows, some empty.
    monkeypatch.setattr(attention, "num_partitions", lambda *_: 3 if split else 1)
    monkeypatch.setattr(attention, "MIN_PARTITION", 4)
    lens = [1, 7, 8, 9, 30, 45]
    q, kc, vc, tables, starts, seq_lens, _, _ = _paged_setup(
        lens, [1] * len(lens), heads, kv_heads, d, 8, dtype, seed=d + heads
    )
    _drop_out_of_window_blocks(kc, vc, tables, starts, seq_lens, window)
    args = (q, kc, vc, tables, seq_lens, 2 * d**-0.5)
    options = {"sliding_window": window, "soft_cap": cap}
    want = ops.paged_attention_decode.reference(*args, **options)
    got = ops.cuda.paged_attention_decode(*args, **options)
    assert torch.isfinite(got.float()).all()  # nothing out of the window was read
    _close(got, want, dtype)


@pytest.mark.parametrize("split", [False, True])
def test_paged_decode_block_size_not_a_power_of_two(
    emulated: None, monkeypatch: pytest.MonkeyPatch, split: bool
) -> None:
    """Blocks of 12 tokens take the kernel's division path (a power of two shifts)."""
    monkeypatch.setattr(attention, "num_partitions", lambda *_: 3 if split else 1)
    monkeypatch.setattr(attention, "MIN_PARTITION", 4)
    lens = [1, 11, 12, 13, 40]
    q, kc, vc, tables, _, seq_lens, _, _ = _paged_setup(
        lens, [1] * len(lens), 4, 2, 64, 12, torch.float16, seed=12
    )
    args = (q, kc, vc, tables, seq_lens, 0.125)
    _close(ops.cuda.paged_attention_decode(*args), ops.paged_attention_decode.reference(*args),
           torch.float16)  # fmt: skip


@pytest.mark.parametrize(
    ("dtype", "window", "cap"),
    [
        (torch.float32, None, None),
        (torch.float16, None, None),
        (torch.bfloat16, None, None),
        (torch.float32, 1, None),
        (torch.float32, 6, 2.0),
        (torch.bfloat16, 13, None),
        (torch.float16, None, 2.0),
    ],
)
def test_paged_prefill(
    emulated: None, dtype: torch.dtype, window: int | None, cap: float | None
) -> None:
    lens, q_lens = [1, 8, 9, 20, 7], [1, 8, 3, 6, 0]
    q, kc, vc, tables, starts, seq_lens, _, _ = _paged_setup(
        lens, q_lens, 4, 1, 80, 8, dtype, seed=7
    )
    _drop_out_of_window_blocks(kc, vc, tables, starts, seq_lens, window)
    args = (q, kc, vc, tables, starts, seq_lens, 0.2)
    options = {"sliding_window": window, "soft_cap": cap}
    want = ops.paged_attention_prefill.reference(*args, **options)
    got = ops.cuda.paged_attention_prefill(*args, **options)
    assert torch.isfinite(got.float()).all()
    _close(got, want, dtype)


@pytest.mark.slow  # a whole (tiny) model on the emulated kernels: costly, though file-free
def test_tiny_llama_through_the_kernels_equals_the_torch_path(
    emulated: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A 2-layer Llama (head size 64, GQA 4:2) run with every op on the emulated
    kernels: chunked prefill and decode across blocks, same logits and tokens."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=256,
        intermediate_size=320,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    loaded = llmcore.load_model(tmp_path, dtype="float32")
    prompt = list(range(3, 60, 4))
    runs = []
    for kernels in (False, True):
        if kernels:
            for name in ops.__all__:  # every op has a kernel
                monkeypatch.setattr(ops, name, getattr(ops.cuda, name))
        runner = llmcore.ModelRunner(loaded, num_blocks=6, block_size=8)
        first = runner.execute([llmcore.SequenceChunk(prompt, 0, [0, 1, 2])])
        runner = llmcore.ModelRunner(loaded, num_blocks=6, block_size=8)
        runs.append((first, llmcore.greedy_generate(runner, prompt, 10, prefill_chunk=6)))
    torch.testing.assert_close(runs[1][0], runs[0][0], atol=1e-4, rtol=1e-4)
    assert runs[1][1] == runs[0][1]
