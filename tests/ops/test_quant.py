"""The quantized matmul (ops.quant, ops/cpu/kernels/quant*.c) against references.

For every type in `TYPES` (one harness: a new type adds an entry to `F16_FIELDS`,
`EXACT` and `ACTIVATIONS`): random valid weights (random bytes, random fp16 scales),
odd row counts, several widths, 1 to 300 tokens, compared with

* (a) a float64 reference over the same quantized activations (integer sums exact,
  ggml's Q8_0 / Q8_1 numerics re-implemented here in numpy and checked against
  gguf's Q8_0 and the C quantizer): float32 accumulation error only;
* (b) dequantize-then-matmul in float32 (`ops.quant`'s torch reference), within the
  error of the int8 activations (bounded from the activations' own rounding);

bit stability (each token's output identical alone, in any batch of 1..64 at any
position, at 1 or 2 threads; `torch.equal`); bias; get_rows bit-identical to
`gguf.quants.dequantize`; the AVX2 (`-march=x86-64-v3`) and portable
(`-march=x86-64`, with the bit-level fp16 code) builds bit-identical to the native
one; the dispatch and the `QuantWeight` API.
"""

from __future__ import annotations

import contextlib
import platform
import threading
from collections.abc import Callable, Iterator

import gguf
import gguf.quants
import numpy as np
import pytest
import torch

from ops.cpu import _build
from ops.cpu import quant as cq
from ops.quant import (
    LINEAR_OPS,
    QuantLinear,
    QuantType,
    QuantWeight,
    kernels_support,
    quant_embedding,
    quant_linear,
    quantize_int8_rows,
)
from ops.quant_blocks import BLOCK_SIZES
from tests.ops.cpu_paths import torch_path

if _build.library() is None:
    pytest.skip("CPU kernels not built", allow_module_level=True)

T = QuantType
TYPES = [t for t in (T.Q4_0, T.Q4_1, T.Q8_0, T.I8_ROW) if kernels_support(t)]
BLOCK_TYPES = [t for t in TYPES if t != T.I8_ROW]

# Byte offsets of the fp16 fields (scales and mins) in each type's block.
F16_FIELDS: dict[QuantType, tuple[int, ...]] = {T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q8_0: (0,)}


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- random weights ---------------------------------------------------------------


def random_weight(qtype: QuantType, rows: int, cols: int, seed: int = 0) -> QuantWeight:
    """Random valid bytes: random quants, random fp16 scales in (-1, 1) (I8_ROW: random
    int8 and positive float32 scales)."""
    rng = np.random.default_rng(seed)
    if qtype == T.I8_ROW:
        q = rng.integers(-128, 128, size=(rows, cols), dtype=np.int8)
        scale = rng.uniform(1e-3, 2e-2, size=(rows, 1)).astype(np.float32)
        raw = np.concatenate([q.view(np.uint8), scale.view(np.uint8)], axis=1)
        return QuantWeight.from_raw(qtype, raw, (rows, cols))
    block, block_bytes = BLOCK_SIZES[qtype]
    n = rows * (cols // block)
    raw = rng.integers(0, 256, size=(n, block_bytes), dtype=np.uint8)
    for offset in F16_FIELDS[qtype]:
        raw[:, offset : offset + 2] = rng.uniform(-1, 1, (n, 1)).astype(np.float16).view(np.uint8)
    return QuantWeight.from_raw(qtype, raw, (rows, cols))


# ---- activations as the kernels quantize them (ggml's numerics, numpy float32) ------


def np_roundf(v: np.ndarray) -> np.ndarray:
    """C's roundf (halves away from zero), as gguf.quants.np_roundf."""
    a = np.abs(v)
    floored = np.floor(a)
    return np.sign(v) * (floored + np.floor(2 * (a - floored)))


def quantize_q8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's quantize_row_q8_1_ref over `x` `[n, cols]` float32: q `[n, nb, 32]`,
    d `[n, nb]` and s = fp16(sum q * d) `[n, nb]` (Q8_0 is q and d)."""
    n, cols = x.shape
    blocks = x.reshape(n, cols // 32, 32)
    d = np.abs(blocks).max(-1) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = np_roundf(blocks * inv[..., None])
    s = (q.sum(-1).astype(np.float32) * d).astype(np.float16).astype(np.float32)
    return q.astype(np.int64), d.astype(np.float16).astype(np.float32), s


def quantize_i8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per token: scale = amax / 127 (float32), q = roundf(x / scale)."""
    scale = np.abs(x).max(-1) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(scale == 0, np.float32(0), np.float32(1) / scale).astype(np.float32)
    return np_roundf(x * inv[:, None]).astype(np.int64), scale.astype(np.float32)


def acts_q8(x: np.ndarray) -> np.ndarray:
    q, d, _ = quantize_q8(x)
    return (q * d[..., None].astype(np.float64)).reshape(x.shape)


def acts_i8(x: np.ndarray) -> np.ndarray:
    q, scale = quantize_i8(x)
    return q * scale[:, None].astype(np.float64)


# The activations a type's kernel multiplies, dequantized (float64).
ACTIVATIONS: dict[QuantType, Callable[[np.ndarray], np.ndarray]] = {
    T.Q4_0: acts_q8,
    T.Q4_1: acts_q8,
    T.Q8_0: acts_q8,
    T.I8_ROW: acts_i8,
}


# ---- the exact reference: integer sums, float64 scaling -----------------------------


def _f16(raw: np.ndarray) -> np.ndarray:
    return raw.copy().view(np.float16).astype(np.float64)[..., 0]


def _blocks(w: QuantWeight) -> np.ndarray:
    block, block_bytes = BLOCK_SIZES[w.qtype]
    return w.data.numpy().reshape(w.rows, w.cols // block, block_bytes)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int64)


def exact_32(w: QuantWeight, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 / Q4_1 / Q8_0: sum over blocks of d_w d_a (sum q_w q_a) (+ m_w s_a), in
    float64 with exact integer sums; returns (values, sum of |terms| over the lanes the
    kernels accumulate) `[n, rows]`."""
    b = _blocks(w)
    dw = _f16(b[..., 0:2])
    if w.qtype == T.Q8_0:
        qw = b[..., 2:].view(np.int8).astype(np.int64)
    elif w.qtype == T.Q4_0:
        qw = _nibbles(b[..., 2:]) - 8
    else:
        qw = _nibbles(b[..., 4:])
    qa, da, sa = quantize_q8(x)
    rows, nb = dw.shape
    # the integer sums of each lane (4 values), as the kernels accumulate them
    lanes = np.einsum("rbil,tbil->trbi", qw.reshape(rows, nb, 8, 4), qa.reshape(-1, nb, 8, 4))
    terms = lanes * (dw[None] * da[:, None, :].astype(np.float64))[..., None]
    values, magnitude = terms.sum((-1, -2)), np.abs(terms).sum((-1, -2))
    if w.qtype == T.Q4_1:
        mins = _f16(b[..., 2:4])[None] * sa[:, None, :].astype(np.float64)
        values, magnitude = values + mins.sum(-1), magnitude + np.abs(mins).sum(-1)
    return values, magnitude


def exact_i8(w: QuantWeight, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data = w.data.numpy()
    qw = data[:, : w.cols].view(np.int8).astype(np.int64)
    ws = data[:, w.cols :].copy().view(np.float32)[:, 0].astype(np.float64)
    qa, sa = quantize_i8(x)
    values = (qa @ qw.T) * ws[None] * sa[:, None].astype(np.float64)
    return values, np.abs(values)


EXACT: dict[QuantType, Callable[[QuantWeight, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    T.Q4_0: exact_32,
    T.Q4_1: exact_32,
    T.Q8_0: exact_32,
    T.I8_ROW: exact_i8,
}


def widths(qtype: QuantType) -> list[int]:
    """Row widths to test: one odd block count, SmolLM2's 576, and for I8_ROW a width
    that is not a multiple of 64 (the masked tail)."""
    if qtype == T.I8_ROW:
        return [40, 96, 576]
    block = BLOCK_SIZES[qtype][0]
    return [3 * block, 576 if 576 % block == 0 else 3 * block * 3]


def cases(qtypes: list[QuantType]) -> list[tuple[QuantType, int]]:
    return [(t, c) for t in qtypes for c in widths(t)]


def _ids(case: tuple[QuantType, int]) -> str:
    return f"{case[0].name}-{case[1]}"


# ---- accuracy ---------------------------------------------------------------------


@pytest.mark.parametrize("case", cases(TYPES), ids=_ids)
@pytest.mark.parametrize("rows", [1, 3, 5, 67])
@pytest.mark.parametrize("n", [1, 4, 5, 64, 300])
def test_matches_exact_and_dequantized_references(
    case: tuple[QuantType, int], rows: int, n: int
) -> None:
    qtype, cols = case
    w = random_weight(qtype, rows, cols, seed=rows * 1000 + n)
    x = torch.randn(n, cols, generator=torch.Generator().manual_seed(n))
    out = cq.qmatmul(w.descriptor, x)
    assert out.shape == (n, rows) and out.dtype == torch.float32
    # (a) the same quantized activations, exact integer sums, float64 scaling
    values, magnitude = EXACT[qtype](w, x.numpy())
    err = np.abs(out.numpy().astype(np.float64) - values)
    assert (err <= 1e-6 * magnitude + 1e-30).all(), (err / magnitude).max()
    # (b) dequantize-then-matmul in float32: off by the activations' int8 rounding
    reference = x @ w.dequantize().T
    wabs = w.dequantize().double().abs().numpy()
    xs = x.numpy().astype(np.float64)
    act_error = np.abs(xs - ACTIVATIONS[qtype](x.numpy())) @ wabs.T
    bound = 1.01 * act_error + 2**-10 * (np.abs(xs) @ wabs.T) + 1e-6
    assert (np.abs(out.numpy() - reference.numpy()) <= bound).all()


def test_activation_quantizers_match_ggml() -> None:
    x = torch.randn(4, 256) * torch.logspace(-3, 2, 4)[:, None]
    x[1, :32] = 0  # an all-zero block: d = 0, q = 0
    x[2, 5] = 0.5 * x[2, :32].abs().max() / 127 * 127  # exercise ties near halves
    for row in x:
        q, d, s = cq.quantize_activations(T.Q4_1, row)
        q_ref, d_ref, s_ref = quantize_q8(row.numpy()[None])
        assert np.array_equal(q.numpy(), q_ref.reshape(-1))
        assert np.array_equal(d.numpy(), d_ref[0]) and np.array_equal(s.numpy(), s_ref[0])
        # gguf's Q8_0 is ggml's reference: the same bytes
        q0, d0, _ = cq.quantize_activations(T.Q8_0, row)
        packed = gguf.quants.quantize(row.numpy()[None], gguf.GGMLQuantizationType.Q8_0)
        blocks = packed.reshape(-1, 34)
        assert np.array_equal(q0.numpy(), blocks[:, 2:].view(np.int8).reshape(-1))
        assert np.array_equal(d0.numpy(), blocks[:, :2].copy().view(np.float16)[:, 0])
        qi, di, _ = cq.quantize_activations(T.I8_ROW, row)
        qi_ref, scale_ref = quantize_i8(row.numpy()[None])
        assert np.array_equal(qi.numpy(), qi_ref[0]) and di[0].item() == scale_ref[0]


def test_roundf_ties_go_away_from_zero() -> None:
    # amax 127 gives d = 1 exactly (an fp16 value), so x * (1 / d) = x: the ties stay ties
    row = torch.tensor([127.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5] + [0.0] * 25)
    q, d, _ = cq.quantize_activations(T.Q8_0, row)
    assert d[0].item() == 1.0
    assert q[:7].tolist() == [127, 1, -1, 2, -2, 3, -3]


# ---- bit stability ----------------------------------------------------------------


@pytest.mark.parametrize("case", cases(TYPES), ids=_ids)
def test_each_token_is_bit_identical_in_any_batch(case: tuple[QuantType, int]) -> None:
    qtype, cols = case
    w = random_weight(qtype, 67, cols, seed=7)
    x = torch.randn(300, cols, generator=torch.Generator().manual_seed(1))
    with threads(2):
        full = cq.qmatmul(w.descriptor, x)
    alone = torch.cat([cq.qmatmul(w.descriptor, x[t : t + 1]) for t in range(0, 300, 37)])
    assert torch.equal(alone, full[0:300:37])
    rng = np.random.default_rng(0)
    for n in range(1, 65):
        start = int(rng.integers(0, 300 - n + 1))
        with threads(1 + n % 2):
            assert torch.equal(
                cq.qmatmul(w.descriptor, x[start : start + n]), full[start : start + n]
            )
    with threads(1):
        assert torch.equal(cq.qmatmul(w.descriptor, x), full)


def test_concurrent_callers_each_get_their_own_buffer() -> None:
    """ctypes releases the GIL: two Python threads call at once, with different token
    counts (each thread's activation buffer grows on its own)."""
    w = random_weight(T.Q4_1, 67, 576, seed=3)
    xs = [torch.randn(n, 576) for n in (1, 7, 64, 200)]
    expected = [cq.qmatmul(w.descriptor, x) for x in xs]
    failures: list[int] = []

    def work(offset: int) -> None:
        for i in range(40):
            k = (i + offset) % len(xs)
            if not torch.equal(cq.qmatmul(w.descriptor, xs[k]), expected[k]):
                failures.append(k)

    workers = [threading.Thread(target=work, args=(o,)) for o in (0, 1, 2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not failures


# ---- bias, strides, rows ----------------------------------------------------------


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bias_is_added_last(qtype: QuantType) -> None:
    w = random_weight(qtype, 67, 96, seed=5)
    x = torch.randn(9, 96)
    bias = torch.randn(67)
    assert torch.equal(cq.qmatmul(w.descriptor, x, bias), cq.qmatmul(w.descriptor, x) + bias)
    assert torch.equal(quant_linear(x, w, bias), cq.qmatmul(w.descriptor, x) + bias)


def test_strided_and_batched_activations() -> None:
    w = random_weight(T.Q8_0, 5, 64, seed=6)
    wide = torch.randn(2, 6, 100)
    x = wide[..., 10:74]  # rows of 64 inside rows of 100
    out = quant_linear(x, w)
    assert out.shape == (2, 6, 5)
    assert torch.equal(out, cq.qmatmul(w.descriptor, x.contiguous().view(12, 64)).view(2, 6, 5))


@pytest.mark.parametrize("qtype", [t for t in TYPES if cq.Support.GET_ROWS in cq.support(t)])
def test_get_rows_is_bit_identical_to_gguf(qtype: QuantType) -> None:
    w = random_weight(qtype, 67, widths(qtype)[0], seed=8)
    ids = torch.tensor([[3, 0, 66], [5, 5, 1]])
    rows = quant_embedding(ids, w)
    assert rows.shape == (2, 3, w.cols)
    if qtype == T.I8_ROW:
        expected = w.dequantize()[ids]
    else:
        full = gguf.quants.dequantize(w.data.numpy(), gguf.GGMLQuantizationType(int(qtype)))
        expected = torch.from_numpy(full.reshape(w.rows, w.cols))[ids]
    assert torch.equal(rows, expected)
    assert torch.equal(w.dequantize()[ids], expected)  # the torch reference too


# ---- the other instruction sets ---------------------------------------------------

# The same sources built for AVX2 (x86-64-v3) and for no SIMD (x86-64, with the
# bit-level fp16 conversions instead of _Float16): the canonical arithmetic of
# quant_tiles.c makes them bit-identical to the native build.
BUILDS = [("x86-64-v3", ()), ("x86-64", ("LLMCORE_NO_FLOAT16",))]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 builds")
@pytest.mark.parametrize("build", BUILDS, ids=lambda b: b[0])
@pytest.mark.parametrize("case", cases(TYPES), ids=_ids)
def test_other_instruction_sets_are_bit_identical(
    build: tuple[str, tuple[str, ...]], case: tuple[QuantType, int]
) -> None:
    lib = _build.library_for(*build)
    expected_isa = {"x86-64-v3": "avx2", "x86-64": "scalar"}[build[0]]
    assert cq.isa(lib) == expected_isa
    qtype, cols = case
    w = random_weight(qtype, 67, cols, seed=9)
    x = torch.randn(70, cols)
    bias = torch.randn(67)
    assert torch.equal(cq.qmatmul(w.descriptor, x, bias, lib), cq.qmatmul(w.descriptor, x, bias))
    ids = torch.tensor([0, 66, 7])
    assert torch.equal(cq.qget_rows(w.descriptor, ids, lib), cq.qget_rows(w.descriptor, ids))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 builds")
@pytest.mark.parametrize("build", BUILDS, ids=lambda b: b[0])
def test_other_instruction_sets_quantize_activations_alike(
    build: tuple[str, tuple[str, ...]],
) -> None:
    lib = _build.library_for(*build)
    x = torch.randn(3, 96) * torch.tensor([1e-6, 1.0, 3e4])[:, None]  # fp16 subnormal d too
    for row in x:
        for kind in (T.Q8_0, T.Q4_1, T.I8_ROW):
            ours = cq.quantize_activations(kind, row, lib)
            native = cq.quantize_activations(kind, row)
            assert all(torch.equal(a, b) for a, b in zip(ours, native, strict=True))


# ---- dispatch and the Python API ----------------------------------------------------


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dispatch_kernel_and_reference(qtype: QuantType) -> None:
    w = random_weight(qtype, 5, 96 if qtype != T.I8_ROW else 40, seed=10)
    x = torch.randn(3, w.cols)
    op = LINEAR_OPS[qtype]
    assert op.select(x, w, None).backend.name == f"cpu-{qtype.name.lower()}"
    assert op.select(x.double(), w, None).backend.name == "torch"
    kernel = QuantLinear(w)(x)
    with torch_path():
        assert op.select(x, w, None).backend.name == "torch"
        reference = QuantLinear(w)(x)
        rows = quant_embedding(torch.tensor([4, 0]), w)
    assert torch.equal(reference, x @ w.dequantize().T)
    torch.testing.assert_close(
        kernel, reference, rtol=0.05, atol=0.05 * reference.abs().max().item()
    )
    assert torch.equal(rows, w.dequantize()[[4, 0]])


def test_types_without_kernels_take_the_reference() -> None:
    raw = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float16)
    w = QuantWeight.from_raw(T.F16, raw, (3, 8))
    assert not kernels_support(T.F16)
    x = torch.randn(2, 8)
    assert LINEAR_OPS[T.F16].select(x, w, None).backend.name == "torch"
    assert torch.equal(quant_linear(x, w), x @ torch.from_numpy(raw).float().T)
    desc = w.descriptor
    assert cq.Support.MATMUL not in cq.support(T.F16)
    with pytest.raises(RuntimeError, match="llmcore_qmatmul failed"):
        cq.qmatmul(desc, x)


def test_validation() -> None:
    w = random_weight(T.Q4_0, 4, 64)
    with pytest.raises(ValueError, match="64 columns"):
        quant_linear(torch.randn(2, 32), w)
    with pytest.raises(ValueError, match="bias"):
        quant_linear(torch.randn(2, 64), w, torch.randn(3))
    with pytest.raises(IndexError):
        quant_embedding(torch.tensor([4]), w)
    with pytest.raises(ValueError, match="multiple of 32"):
        QuantWeight.from_raw(T.Q4_0, np.zeros(18, np.uint8), (1, 16))
    with pytest.raises(ValueError, match="need 36"):
        QuantWeight.from_raw(T.Q4_0, np.zeros(18, np.uint8), (2, 32))


def test_quant_weight_api() -> None:
    a, b = random_weight(T.Q4_1, 3, 64, seed=1), random_weight(T.Q4_1, 2, 64, seed=2)
    assert a.shape == (3, 64) and a.rows == 3 and a.nbytes == 3 * 40
    fused = QuantWeight.cat([a, b])
    assert torch.equal(fused.dequantize(), torch.cat([a.dequantize(), b.dequantize()]))
    perm = torch.tensor([4, 0, 2])
    assert torch.equal(fused.index_rows(perm).dequantize(), fused.dequantize()[perm])
    with pytest.raises(ValueError, match="one type"):
        QuantWeight.cat([a, random_weight(T.Q4_0, 1, 64)])
    # from_raw shares the bytes (a GGUF memmap is not copied)
    raw = a.data.numpy().copy()
    shared = QuantWeight.from_raw(T.Q4_1, raw.reshape(-1), (3, 64))
    assert shared.data.data_ptr() == raw.ctypes.data
    assert torch.equal(shared.dequantize(dtype=torch.bfloat16), a.dequantize().bfloat16())


def test_quantize_int8_rows() -> None:
    weight = torch.randn(7, 50) * torch.logspace(-2, 1, 7)[:, None]
    weight[3] = 0
    w = quantize_int8_rows(weight)
    assert w.qtype == T.I8_ROW and w.shape == (7, 50) and w.data.shape == (7, 54)
    scales = w.data[:, 50:].contiguous().view(torch.float32)[:, 0]
    assert torch.equal(scales, weight.abs().amax(1) / 127)
    q = w.data[:, :50].contiguous().view(torch.int8)
    assert int(q.abs().max()) == 127 and not q[3].any()
    deq = w.dequantize()
    assert (deq - weight).abs().le(scales[:, None] / 2 * 1.0001).all()
    # the same rounding as the kernels' per-token activation quantizer
    for row in weight:
        qa, _, _ = cq.quantize_activations(T.I8_ROW, row)
        assert torch.equal(qa, quantize_int8_rows(row[None]).data[0, :50].view(torch.int8))
