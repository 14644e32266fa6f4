"""The K-quant kernels (ops/cpu/kernels/quant_k.c: Q4_K, Q5_K, Q6_K weights against
Q8_K activations) through the quantized matmul (`ops.quant`) and directly.

Covered: the Q8_K activation quantizer (byte for byte against a numpy transcription
of ggml's quantize_row_q8_K_ref: ties, a negative extreme, all-zero blocks); get_rows
(`quant_embedding`) and the torch reference bit-identical to `gguf.quants.dequantize`;
`QuantLinear` against a float64 reference from the same integers (tight) and against
dequantize-then-matmul (within the activations' int8 rounding), for 1..67 rows and
1..300 tokens; extreme blocks (the largest scales, quants and activations); each
token bit-identical alone and in any batch at 1 or 2 threads; every sub-tile of a
4 x 4 tile bit-identical to the full tile (the tile functions called directly, with
strided rows) and beyond its 4 x 4 contract; the AVX2 (`-march=x86-64-v3`, and with
AVX-VNNI `-march=alderlake`) and portable (`-march=x86-64`) builds bit-identical to the
native one; the dispatch.

The blocks are random and valid: random float16 d and dmin (some subnormal), random
6-bit scales and mins (int8 scales for Q6_K), random quants, packed here from their
integer fields (the packing checked against gguf's dequantization).
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize

from ops.cpu import _build
from ops.cpu import quant as cq
from ops.quant import LINEAR_OPS, QuantLinear, QuantType, QuantWeight, quant_embedding
from tests.ops.cpu_paths import torch_path

if _build.library() is None:
    pytest.skip("CPU kernels not built", allow_module_level=True)

T = QuantType
QK, ACT_BYTES = 256, 320
BLOCK_BYTES = {T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210}
KINDS = [t for t in BLOCK_BYTES if cq.Support.MATMUL in cq.support(t)]
if not KINDS:
    pytest.skip("the library has no K-quant kernels", allow_module_level=True)


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


# AVX2 and portable C (built for the framework's tests too), and AVX2 with AVX-VNNI's
# vpdpwssd where this CPU runs it (a build of its own: slow).
BUILDS = [
    pytest.param(("x86-64-v3", ()), id="x86-64-v3"),
    pytest.param(("x86-64", ("LLMCORE_NO_FLOAT16",)), id="x86-64"),
    pytest.param(
        ("alderlake", ()),
        id="avx-vnni",
        marks=[
            pytest.mark.slow,
            pytest.mark.skipif(" avx_vnni" not in _cpu_flags(), reason="no AVX-VNNI here"),
        ],
    ),
]


@pytest.fixture
def keep_threads() -> Iterator[None]:
    """Tests here may set torch's (and so the kernels') thread count; it is put back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---- the library's K-quant functions, called directly ----------------------------


def _declared(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.llmcore_qact_q8_k.argtypes = [p, i64, p]
    lib.llmcore_qact_q8_k.restype = None
    lib.llmcore_qact_q8_k_row_bytes.argtypes = [i64]
    lib.llmcore_qact_q8_k_row_bytes.restype = i64
    for kind in BLOCK_BYTES:
        fn = getattr(lib, f"llmcore_qtile_{kind.name.lower()}")
        fn.argtypes = [i64, p, i64, c_int, p, i64, c_int, p, i64]
        fn.restype = None
    return lib


def act(x: np.ndarray, lib: ctypes.CDLL | None = None) -> np.ndarray:
    """The C Q8_K rows of float32 rows x [n, cols]: uint8 [n, row_bytes]."""
    lib = _declared(lib or _build.library())
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, cols = x.shape
    out = np.full((n, lib.llmcore_qact_q8_k_row_bytes(cols)), 0xAB, dtype=np.uint8)
    for t in range(n):
        lib.llmcore_qact_q8_k(x[t].ctypes.data, cols, out[t].ctypes.data)
    return out


def tile(
    kind: QuantType, w: np.ndarray, a: np.ndarray, nrows: int, ntok: int, out_stride: int
) -> np.ndarray:
    """llmcore_qtile_*: out[t, r] = <row r of w, activation row t> (any row strides)."""
    lib = _declared(_build.library())
    out = np.full((ntok, out_stride), np.nan, dtype=np.float32)
    getattr(lib, f"llmcore_qtile_{kind.name.lower()}")(
        a.shape[1] // ACT_BYTES * QK,
        w.ctypes.data,
        w.strides[0],
        nrows,
        a.ctypes.data,
        a.strides[0],
        ntok,
        out.ctypes.data,
        out_stride,
    )
    return out[:, :nrows]


# ---- random valid blocks, packed here from their integer fields ---------------------


@dataclass
class Blocks:
    """rows x nb blocks of one type: the weight and the integers its bytes hold."""

    weight: QuantWeight
    d: np.ndarray  # float32 [rows, nb]
    dmin: np.ndarray  # float32 [rows, nb] (zero for Q6_K)
    sc: np.ndarray  # int64 [rows, nb, 16]: the scale of each 16 values
    mn: np.ndarray  # int64 [rows, nb, 8]: the min of each 32 values (Q4_K/Q5_K)
    q: np.ndarray  # int64 [rows, nb, 256]: the unsigned quants
    offset: int  # 32 for Q6_K (its values are q - 32), else 0

    @property
    def raw(self) -> np.ndarray:
        return self.weight.data.numpy()

    def exact(self) -> np.ndarray:
        """The weights in float64, as the integers say: d * sc * (q - offset) - dmin * mn."""
        sc = np.repeat(self.sc, 16, axis=-1).astype(np.float64)
        mn = np.repeat(self.mn, 32, axis=-1).astype(np.float64)
        d, dmin = self.d.astype(np.float64)[..., None], self.dmin.astype(np.float64)[..., None]
        return (d * sc * (self.q - self.offset) - dmin * mn).reshape(self.q.shape[0], -1)


def random_f16(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    v = (np.abs(rng.standard_normal(shape)) * scale).astype(np.float16)
    tiny = rng.random(shape) < 0.05  # some subnormal float16
    v[tiny] = (rng.integers(1, 1024, size=int(tiny.sum())) * 2.0**-24).astype(np.float16)
    return v


def pack_k4_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """The 12 bytes of eight 6-bit scales and mins (ggml's layout), sc and mn [..., 8]."""
    out = np.empty((*sc.shape[:-1], 12), dtype=np.uint8)
    out[..., 0:4] = (sc[..., :4] & 63) | ((sc[..., 4:] >> 4) << 6)
    out[..., 4:8] = (mn[..., :4] & 63) | ((mn[..., 4:] >> 4) << 6)
    out[..., 8:12] = (sc[..., 4:] & 15) | ((mn[..., 4:] & 15) << 4)
    return out


def make_blocks(
    kind: QuantType, rows: int, cols: int, seed: int = 0, extreme: bool = False
) -> Blocks:
    rng = np.random.default_rng(seed)
    shape = (rows, cols // QK)
    q6 = kind == T.Q6_K
    qmax = {T.Q4_K: 15, T.Q5_K: 31, T.Q6_K: 63}[kind]
    if extreme:
        q = np.full((*shape, QK), qmax, dtype=np.int64)
        sc8 = np.full((*shape, 8), 63, dtype=np.int64)
        mn = np.full((*shape, 8), 63, dtype=np.int64)
        sc16 = np.full((*shape, 16), -128 if q6 else 63, dtype=np.int64)
        sc16[..., 1::2] = 127 if q6 else 63
    else:
        q = rng.integers(0, qmax + 1, size=(*shape, QK))
        sc8 = rng.integers(0, 64, size=(*shape, 8))
        mn = rng.integers(0, 64, size=(*shape, 8))
        sc16 = rng.integers(-128, 128, size=(*shape, 16)) if q6 else np.repeat(sc8, 2, axis=-1)
    d = random_f16(rng, shape, 1e-3)
    dmin = random_f16(rng, shape, 1e-3) if not q6 else np.zeros(shape, dtype=np.float16)
    if q6:
        qb = q.reshape(*shape, 2, 4, 32)  # [half, quarter, l]
        ql = np.concatenate(
            [(qb[..., 0, :] & 15) | ((qb[..., 2, :] & 15) << 4),
             (qb[..., 1, :] & 15) | ((qb[..., 3, :] & 15) << 4)], axis=-1,
        )  # fmt: skip
        qh = sum((qb[..., j, :] >> 4) << (2 * j) for j in range(4))
        parts = [
            ql.reshape(*shape, 128),
            qh.reshape(*shape, 64),
            sc16.astype(np.int8).view(np.uint8),
            d.view(np.uint8).reshape(*shape, 2),
        ]
        mn = np.zeros((*shape, 8), dtype=np.int64)
    else:
        qb = q.reshape(*shape, 4, 2, 32)  # [pair of sub-blocks, which, l]
        qs = ((qb[..., 0, :] & 15) | ((qb[..., 1, :] & 15) << 4)).reshape(*shape, 128)
        parts = [d.view(np.uint8).reshape(*shape, 2), dmin.view(np.uint8).reshape(*shape, 2)]
        parts.append(pack_k4_scales(sc8, mn))
        if kind == T.Q5_K:
            sub = q.reshape(*shape, 8, 32)
            parts.append(sum((sub[..., j, :] >> 4) << j for j in range(8)))
        parts.append(qs)
    raw = np.concatenate([p.astype(np.uint8) for p in parts], axis=-1)
    assert raw.shape[-1] == BLOCK_BYTES[kind]
    return Blocks(
        weight=QuantWeight.from_raw(kind, raw.reshape(rows, -1), (rows, cols)),
        d=d.astype(np.float32),
        dmin=dmin.astype(np.float32),
        sc=sc16,
        mn=mn,
        q=q,
        offset=32 if q6 else 0,
    )


def gguf_rows(w: QuantWeight) -> np.ndarray:
    return dequantize(w.data.numpy(), GT(int(w.qtype))).reshape(w.rows, w.cols)


# ---- Q8_K activations as ggml makes them (numpy float32) -------------------------


def q8k_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's quantize_row_q8_K_ref on one float32 row: (d [nb], q int8 [nb, 256], bsums)."""
    blocks = x.astype(np.float32).reshape(-1, QK)
    d = np.zeros(len(blocks), dtype=np.float32)
    q = np.zeros(blocks.shape, dtype=np.int8)
    for i, b in enumerate(blocks):
        first = int(np.argmax(np.abs(b)))  # the first value of the largest magnitude
        if b[first] == 0:
            continue
        iscale = np.float32(-127.0) / b[first]
        q[i] = np.minimum(np.rint(iscale * b), 127).astype(np.int8)
        d[i] = np.float32(1.0) / iscale
    bsums = q.reshape(len(blocks), 16, 16).astype(np.int64).sum(-1)
    return d, q, bsums


def parse_act(row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quant_k.c's Q8_K layout: (d, q, bsums) of one activation row (the sums of 32
    checked on the way)."""
    blocks = row.reshape(-1, ACT_BYTES)
    q = blocks[:, :256].view(np.int8)
    bsums = blocks[:, 256:288].copy().view(np.int16).astype(np.int64)
    bsum32 = blocks[:, 288:304].copy().view(np.int16).astype(np.int64)
    np.testing.assert_array_equal(bsum32, bsums.reshape(-1, 8, 2).sum(-1))
    d = blocks[:, 304:308].copy().view(np.float32)[:, 0]
    return d, q, bsums


def acts_q8k(x: np.ndarray) -> np.ndarray:
    """The activations the kernels multiply, dequantized (float64) [n, cols]."""
    out = []
    for row in x:
        d, q, _ = q8k_reference(row)
        out.append((q.astype(np.float64) * d.astype(np.float64)[:, None]).reshape(-1))
    return np.array(out)


def exact(blocks: Blocks, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 x @ W.T over the Q8_K activations with exact integer sums, and the sum of
    |terms| it is accurate to: [n, rows] each."""
    w = blocks.exact()
    xa = acts_q8k(x)
    return xa @ w.T, np.abs(xa) @ np.abs(w).T


def random_x(n: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.01, 1.0, 30.0])[torch.randint(0, 3, (n, 1), generator=g)]
    return torch.randn(n, cols, generator=g) * scale


# ---- the activation quantizer and the packing ---------------------------------------


def test_act_matches_ggml() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 1024)).astype(np.float32)
    x[0, :256] = 0.0  # an all-zero block
    x[1, 300], x[1, 400] = -5.0, 5.0  # a tie: the first (negative) value wins
    x[2, 512 + 7] = -80.0  # a negative extreme
    x[2, 768:] = 1.0  # every value the extreme
    got = act(x)
    assert got.shape == (3, 4 * ACT_BYTES)
    for t in range(3):
        d, q, bsums = q8k_reference(x[t])
        gd, gq, gb = parse_act(got[t])
        np.testing.assert_array_equal(gd.view(np.uint32), d.view(np.uint32))
        np.testing.assert_array_equal(gq, q)
        np.testing.assert_array_equal(gb, bsums)
        assert not got[t].reshape(-1, ACT_BYTES)[:, 308:].any()  # the padding is zeros
    assert parse_act(got[1])[0][1] > 0  # d = -max / 127 with max = -5


@pytest.mark.parametrize("kind", KINDS, ids=lambda t: t.name)
def test_packing_matches_gguf(kind: QuantType) -> None:
    """The test's own packing: gguf reads back the integers it packed."""
    blocks = make_blocks(kind, 3, 512, seed=2)
    np.testing.assert_allclose(gguf_rows(blocks.weight), blocks.exact(), rtol=1e-6, atol=1e-9)


# ---- get_rows -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=lambda t: t.name)
def test_get_rows_bit_identical_to_gguf(kind: QuantType) -> None:
    w = make_blocks(kind, 67, 1024, seed=3).weight
    ids = torch.tensor([[3, 0, 66], [5, 5, 1]])
    expected = torch.from_numpy(gguf_rows(w))[ids]
    assert torch.equal(quant_embedding(ids, w), expected)
    assert torch.equal(w.dequantize()[ids], expected)  # the torch reference too


# ---- the matmul against its references ---------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=lambda t: t.name)
@pytest.mark.parametrize(
    ("cols", "rows", "n"),
    [(256, 1, 1), (768, 5, 4), (768, 67, 5), (4096, 3, 1), (4096, 9, 8), (768, 67, 300)],
)
def test_matmul_against_references(kind: QuantType, cols: int, rows: int, n: int) -> None:
    blocks = make_blocks(kind, rows, cols, seed=cols + rows + n)
    w = blocks.weight
    x = random_x(n, cols, seed=n)
    out = QuantLinear(w)(x)
    assert out.shape == (n, rows) and out.dtype == torch.float32
    # (a) the same quantized activations, exact integer sums, float64 scaling
    values, magnitude = exact(blocks, x.numpy())
    err = np.abs(out.numpy().astype(np.float64) - values)
    assert (err <= 4e-6 * magnitude + 1e-30).all(), (err / magnitude).max()
    # (b) dequantize-then-matmul in float32: off by the activations' int8 rounding
    reference = x @ w.dequantize().T
    wabs = np.abs(gguf_rows(w)).astype(np.float64)
    xs = x.numpy().astype(np.float64)
    act_error = np.abs(xs - acts_q8k(x.numpy())) @ wabs.T
    bound = 1.01 * act_error + 2**-10 * (np.abs(xs) @ wabs.T) + 1e-6
    assert (np.abs(out.numpy() - reference.numpy()) <= bound).all()


@pytest.mark.parametrize("kind", KINDS, ids=lambda t: t.name)
def test_extreme_blocks(kind: QuantType) -> None:
    """The largest scales, quants and activations (lanes near 2^24; no int16 saturation)."""
    blocks = make_blocks(kind, 6, 1024, extreme=True)
    x = torch.full((3, 1024), 3.0)
    x[1, ::2] = -3.0
    x[2] = -1.0
    out = QuantLinear(blocks.weight)(x)
    values, magnitude = exact(blocks, x.numpy())
    assert (np.abs(out.numpy().astype(np.float64) - values) <= 4e-6 * magnitude).all()


@pytest.mark.parametrize("kind", KINDS, ids=lambda t: t.name)
def test_bias(kind: QuantType) -> None:
    w = make_blocks(kind, 7, 512, seed=4).weight
    x, bias = torch.randn(5, 512), torch.randn(7)
    assert torch.equal(QuantLinear(w, bias)(x), QuantLinear(w)(x) + bias)


# ---- bit stability ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=lambda t: t.name)
def test_each_token_is_bit_identical_in_any_batch(kind: QuantType, keep_threads: None) -> None:
    w = make_blocks(kind, 67, 768, seed=7).weight
    x = torch.randn(300, 768, generator=torch.Generator().manual_seed(1))
    torch.set_num_threads(2)
    full = cq.qmatmul(w.descriptor, x)
    alone = torch.cat([cq.qmatmul(w.descriptor, x[t : t + 1]) for t in range(0, 300, 37)])
    assert torch.equal(alone, full[0:300:37])
    rng = np.random.default_rng(0)
    for n in range(1, 65, 3):  # any batch size at any position, on 1 or 2 threads
        start = int(rng.integers(0, 300 - n + 1))
        torch.set_num_threads(1 + n % 2)
        part = cq.qmatmul(w.descriptor, x[start : start + n])
        assert torch.equal(part, full[start : start + n])


@pytest.mark.parametrize("kind", KINDS, ids=lambda t: t.name)
def test_every_sub_tile_is_bit_identical(kind: QuantType) -> None:
    """The tile function alone: rows r0.. and tokens t0.. of a 4 x 4 tile, every size,
    give the full tile's values bit for bit, whatever the row strides."""
    cols = 1280
    raw = make_blocks(kind, 4, cols, seed=6).raw
    w = np.zeros((4, raw.shape[1] + 37), dtype=np.uint8)[:, : raw.shape[1]]  # padded rows
    w[...] = raw
    a0 = act(random_x(4, cols, seed=6).numpy())
    a = np.zeros((4, a0.shape[1] + 64), dtype=np.uint8)[:, : a0.shape[1]]
    a[...] = a0
    full = tile(kind, w, a, 4, 4, out_stride=9)
    assert np.isfinite(full).all()
    for r0 in range(4):
        for nrows in range(1, 5 - r0):
            for t0 in range(4):
                for ntok in range(1, 5 - t0):
                    part = tile(kind, w[r0:], a[t0:], nrows, ntok, out_stride=nrows)
                    want = full[t0 : t0 + ntok, r0 : r0 + nrows]
                    assert np.array_equal(part.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("kind", KINDS, ids=lambda t: t.name)
def test_tile_beyond_its_contract(kind: QuantType) -> None:
    """More than 4 rows or tokens are taken four at a time (the same values as the
    matmul's); none writes nothing."""
    blocks = make_blocks(kind, 9, 512, seed=11)
    x = random_x(6, 512, seed=11)
    a = act(x.numpy())
    got = tile(kind, blocks.raw, a, 9, 6, out_stride=9)
    assert torch.equal(torch.from_numpy(got), cq.qmatmul(blocks.weight.descriptor, x))
    assert np.isnan(tile(kind, blocks.raw, a, 0, 6, out_stride=9)).all()
    assert np.isnan(tile(kind, blocks.raw, a, 9, 0, out_stride=9)).all()


# ---- the other instruction sets ---------------------------------------------------


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 builds")
@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("kind", KINDS, ids=lambda t: t.name)
def test_other_instruction_sets_are_bit_identical(
    build: tuple[str, tuple[str, ...]], kind: QuantType
) -> None:
    """AVX2 (with or without AVX-VNNI) and portable C: the same activations, products and
    rows as AVX-512."""
    lib = _build.library_for(*build)
    x = random_x(70, 1024, seed=9)
    assert np.array_equal(act(x.numpy(), lib), act(x.numpy()))
    w = make_blocks(kind, 67, 1024, seed=9).weight
    bias = torch.randn(67)
    assert torch.equal(cq.qmatmul(w.descriptor, x, bias, lib), cq.qmatmul(w.descriptor, x, bias))
    ids = torch.tensor([0, 66, 7])
    assert torch.equal(cq.qget_rows(w.descriptor, ids, lib), cq.qget_rows(w.descriptor, ids))


# ---- dispatch -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=lambda t: t.name)
def test_dispatch_kernel_and_reference(kind: QuantType) -> None:
    w = make_blocks(kind, 5, 512, seed=10).weight
    x = torch.randn(3, 512)
    op = LINEAR_OPS[kind]
    assert op.select(x, w, None).backend.name == f"cpu-{kind.name.lower()}"
    kernel = QuantLinear(w)(x)
    with torch_path():
        assert op.select(x, w, None).backend.name == "torch"
        reference = QuantLinear(w)(x)
    assert torch.equal(reference, x @ w.dequantize().T)
    torch.testing.assert_close(
        kernel, reference, rtol=0.05, atol=0.05 * reference.abs().max().item()
    )
