"""The K-quant kernels of `ops/cpu/kernels/quant_k.c`, compiled alone and called with ctypes.

Covered: Q8_K activation quantization (byte for byte against a numpy transcription of
ggml's quantize_row_q8_K_ref: ties, a negative extreme, all-zero blocks); the
dequantized rows of Q4_K, Q5_K and Q6_K (bit-identical to `gguf.quants.dequantize`);
the dot-product tiles against a float64 reference from the same integers (tight) and
against gguf's dequantized weights times the dequantized activations; extreme blocks
(the largest scales, values and activations); bit stability over every sub-tile of a
4 x 4 tile; and the AVX2 (`-march=x86-64-v3`) and scalar (`-march=x86-64`) builds
against the native one, bit for bit.

The blocks are random and valid: random float16 d and dmin (some subnormal), random
6-bit scales and mins (int8 scales for Q6_K), random quants, packed here from their
integer fields (the packing checked against gguf's dequantization).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize

from ops.cpu import _build

KERNELS = Path(__file__).resolve().parents[2] / "ops" / "cpu" / "kernels"
FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-std=gnu11", "-shared", "-fPIC"]
QK, ACT_BYTES = 256, 320
BLOCK_BYTES = {"q4_k": 144, "q5_k": 176, "q6_k": 210}
GGUF_TYPE = {"q4_k": GT.Q4_K, "q5_k": GT.Q5_K, "q6_k": GT.Q6_K}
KINDS = tuple(BLOCK_BYTES)

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
if CC is None:
    pytest.skip("no C compiler", allow_module_level=True)


class Lib:
    """One build of quant_k.c."""

    def __init__(self, path: Path) -> None:
        self.dll = ctypes.CDLL(str(path))
        p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self.dll.llmcore_qact_q8_k.argtypes = [p, i64, p]
        self.dll.llmcore_qact_q8_k.restype = None
        self.dll.llmcore_qact_q8_k_row_bytes.argtypes = [i64]
        self.dll.llmcore_qact_q8_k_row_bytes.restype = i64
        for kind in KINDS:
            fn = getattr(self.dll, f"llmcore_qtile_{kind}")
            fn.argtypes = [i64, p, i64, c_int, p, i64, c_int, p, i64]
            fn.restype = None
            fn = getattr(self.dll, f"llmcore_qdequant_row_{kind}")
            fn.argtypes = [p, i64, p]
            fn.restype = None

    def act(self, x: np.ndarray) -> np.ndarray:
        """Q8_K rows of float32 rows x [n, cols]: uint8 [n, row_bytes]."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, cols = x.shape
        row_bytes = self.dll.llmcore_qact_q8_k_row_bytes(cols)
        out = np.full((n, row_bytes), 0xAB, dtype=np.uint8)
        for t in range(n):
            self.dll.llmcore_qact_q8_k(x[t].ctypes.data, cols, out[t].ctypes.data)
        return out

    def tile(
        self,
        kind: str,
        w: np.ndarray,
        a: np.ndarray,
        *,
        nrows: int | None = None,
        ntok: int | None = None,
        out_stride: int | None = None,
    ) -> np.ndarray:
        """out[t, r] = <row r of w, activation row t> for uint8 rows w and a (any row strides)."""
        nrows = w.shape[0] if nrows is None else nrows
        ntok = a.shape[0] if ntok is None else ntok
        cols = a.shape[1] // ACT_BYTES * QK
        stride = nrows if out_stride is None else out_stride
        out = np.full((ntok, stride), np.nan, dtype=np.float32)
        getattr(self.dll, f"llmcore_qtile_{kind}")(
            cols,
            w.ctypes.data,
            w.strides[0],
            nrows,
            a.ctypes.data,
            a.strides[0],
            ntok,
            out.ctypes.data,
            stride,
        )
        return out[:, :nrows]

    def dequant(self, kind: str, w: np.ndarray) -> np.ndarray:
        rows = w.shape[0]
        cols = w.shape[1] // BLOCK_BYTES[kind] * QK
        out = np.empty((rows, cols), dtype=np.float32)
        for r in range(rows):
            getattr(self.dll, f"llmcore_qdequant_row_{kind}")(
                w[r].ctypes.data, cols, out[r].ctypes.data
            )
        return out


TARGETS = ("native", "x86-64-v3", "x86-64") if platform.machine() == "x86_64" else ("native",)


def _build_path(target: str) -> Path:
    """A cached build of quant_k.c for one target, named by the sources, flags and compiler."""
    assert CC is not None
    digest = hashlib.sha256()
    version = subprocess.run([CC, "--version"], capture_output=True, text=True).stdout
    for part in (KERNELS / "quant_k.c", KERNELS / "vec.h"):
        digest.update(part.read_bytes())
    digest.update(" ".join([*FLAGS, target, version]).encode())
    return _build.cache_dir() / f"test-quant_k-{target}-{digest.hexdigest()[:16]}.so"


@pytest.fixture(scope="module")
def libs() -> dict[str, Lib]:
    """quant_k.c built for each target (in parallel, cached): native, AVX2 and scalar."""
    jobs = {}
    for target in TARGETS:
        path = _build_path(target)
        if path.exists():
            jobs[target] = (path, None)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        cmd = [CC, *FLAGS, f"-march={target}", "-o", str(tmp), str(KERNELS / "quant_k.c")]
        jobs[target] = (path, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True))
    built = {}
    for target, (path, job) in jobs.items():
        if job is not None:
            _, err = job.communicate(timeout=300)
            assert job.returncode == 0, f"{target}: {err}"
            os.replace(path.with_suffix(f".{os.getpid()}.tmp"), path)
        built[target] = Lib(path)
    return built


@pytest.fixture
def lib(libs: dict[str, Lib]) -> Lib:
    return libs["native"]


# ---- random valid blocks, packed here from their integer fields ---------------------


@dataclass
class Blocks:
    """rows x nb blocks of one type: the bytes and the integers they hold."""

    raw: np.ndarray  # uint8 [rows, nb * block bytes]
    d: np.ndarray  # float32 [rows, nb]
    dmin: np.ndarray  # float32 [rows, nb] (zero for Q6_K)
    sc: np.ndarray  # int64 [rows, nb, 16]: the scale of each 16 values
    mn: np.ndarray  # int64 [rows, nb, 8]: the min of each 32 values (Q4_K/Q5_K)
    q: np.ndarray  # int64 [rows, nb, 256]: the unsigned quants
    offset: int  # 32 for Q6_K (its values are q - 32), else 0

    def exact(self) -> np.ndarray:
        """The weights in float64, as the integers say: d * sc * (q - offset) - dmin * mn."""
        sc = np.repeat(self.sc, 16, axis=-1).astype(np.float64)
        mn = np.repeat(self.mn, 32, axis=-1).astype(np.float64)
        d, dmin = self.d.astype(np.float64)[..., None], self.dmin.astype(np.float64)[..., None]
        w = d * sc * (self.q - self.offset) - dmin * mn
        return w.reshape(self.q.shape[0], -1)


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
    kind: str, rows: int, cols: int, rng: np.random.Generator, extreme: bool = False
) -> Blocks:
    nb = cols // QK
    shape = (rows, nb)
    q6 = kind == "q6_k"
    qmax = {"q4_k": 15, "q5_k": 31, "q6_k": 63}[kind]
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
        if kind == "q5_k":
            sub = q.reshape(*shape, 8, 32)
            parts.append(sum((sub[..., j, :] >> 4) << j for j in range(8)))
        parts.append(qs)
    raw = np.concatenate([p.astype(np.uint8) for p in parts], axis=-1)
    assert raw.shape[-1] == BLOCK_BYTES[kind]
    return Blocks(
        raw=raw.reshape(rows, -1),
        d=d.astype(np.float32),
        dmin=dmin.astype(np.float32),
        sc=sc16,
        mn=mn,
        q=q,
        offset=32 if q6 else 0,
    )


# ---- Q8_K references ----------------------------------------------------------------


def q8k_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's quantize_row_q8_K_ref on one float32 row: (d [nb], q int8 [nb, 256], bsums)."""
    blocks = x.astype(np.float32).reshape(-1, QK)
    d = np.zeros(len(blocks), dtype=np.float32)
    q = np.zeros(blocks.shape, dtype=np.int8)
    for i, b in enumerate(blocks):
        amax, vmax = np.float32(0), np.float32(0)
        for v in b:  # the first value of the largest magnitude, as ggml's loop
            if abs(v) > amax:
                amax, vmax = abs(v), v
        if amax == 0:
            continue
        iscale = np.float32(-127.0) / vmax
        q[i] = np.minimum(np.rint(iscale * b), 127).astype(np.int8)
        d[i] = np.float32(1.0) / iscale
    bsums = q.reshape(len(blocks), 16, 16).astype(np.int64).sum(-1)
    return d, q, bsums


def parse_act(row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Our Q8_K layout: (d, q, bsums) of one activation row (and the sums of 32 checked)."""
    blocks = row.reshape(-1, ACT_BYTES)
    q = blocks[:, :256].view(np.int8)
    bsums = blocks[:, 256:288].copy().view(np.int16).astype(np.int64)
    bsum32 = blocks[:, 288:304].copy().view(np.int16).astype(np.int64)
    np.testing.assert_array_equal(bsum32, bsums.reshape(-1, 8, 2).sum(-1))
    d = blocks[:, 304:308].copy().view(np.float32)[:, 0]
    return d, q, bsums


def activations(rng: np.random.Generator, n: int, cols: int) -> np.ndarray:
    x = (rng.standard_normal((n, cols)) * rng.choice([0.01, 1.0, 30.0], size=(n, 1))).astype(
        np.float32
    )
    return x


def exact_dot(blocks: Blocks, a_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 <W row, activation row> from the integers, and the magnitude sum it bounds."""
    out, mag = [], []
    for a in a_rows:
        d_a, q_a, _ = parse_act(a)
        x = (q_a.astype(np.float64) * d_a.astype(np.float64)[:, None]).reshape(-1)
        w = blocks.exact()
        out.append(w @ x)
        mag.append(np.abs(w) @ np.abs(x))
    return np.array(out), np.array(mag)


# ---- tests ------------------------------------------------------------------------------


def test_act_matches_ggml(lib: Lib) -> None:
    rng = np.random.default_rng(1)
    x = activations(rng, 3, 1024)
    x[0, :256] = 0.0  # an all-zero block
    x[1, 300], x[1, 400] = -5.0, 5.0  # a tie: the first (negative) value wins
    x[2, 512 + 7] = -80.0  # a negative extreme
    x[2, 768:] = 1.0  # every value the extreme
    got = lib.act(x)
    assert got.shape == (3, 4 * ACT_BYTES)
    for t in range(3):
        d, q, bsums = q8k_reference(x[t])
        gd, gq, gb = parse_act(got[t])
        np.testing.assert_array_equal(gd.view(np.uint32), d.view(np.uint32))
        np.testing.assert_array_equal(gq, q)
        np.testing.assert_array_equal(gb, bsums)
        assert not got[t].reshape(-1, ACT_BYTES)[:, 308:].any()  # the padding is zeros
    assert parse_act(got[1])[0][1] > 0  # d = -max / 127 with max = -5


@pytest.mark.parametrize("kind", KINDS)
def test_packing_matches_gguf(kind: str) -> None:
    """The test's own packing: gguf reads back the integers it packed."""
    rng = np.random.default_rng(2)
    blocks = make_blocks(kind, 3, 512, rng)
    ref = dequantize(blocks.raw, GGUF_TYPE[kind]).astype(np.float64)
    np.testing.assert_allclose(ref, blocks.exact(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_dequant_bit_identical_to_gguf(libs: dict[str, Lib], kind: str) -> None:
    rng = np.random.default_rng(3)
    blocks = make_blocks(kind, 5, 1024, rng)
    ref = dequantize(blocks.raw, GGUF_TYPE[kind]).astype(np.float32)
    for target, lib in libs.items():
        got = lib.dequant(kind, blocks.raw)
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), target


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cols", [256, 768, 4096])
def test_tile_against_references(libs: dict[str, Lib], kind: str, cols: int) -> None:
    rng = np.random.default_rng(cols + len(kind))
    blocks = make_blocks(kind, 4, cols, rng)
    x = activations(rng, 4, cols)
    a = libs["native"].act(x)
    exact, mag = exact_dot(blocks, a)
    for target, lib in libs.items():  # every build against the float64 reference
        got = lib.tile(kind, blocks.raw, a)
        assert np.all(np.abs(got.astype(np.float64) - exact) <= 4e-6 * mag + 1e-30), target
    got = libs["native"].tile(kind, blocks.raw, a)
    # dequantize-then-dot: gguf's float32 weights times the dequantized activations
    w32 = dequantize(blocks.raw, GGUF_TYPE[kind]).astype(np.float32)
    for t in range(4):
        d_a, q_a, _ = parse_act(a[t])
        x32 = (q_a.astype(np.float32) * d_a[:, None]).reshape(-1)
        ref = w32.astype(np.float64) @ x32.astype(np.float64)
        np.testing.assert_allclose(got[t], ref, rtol=0, atol=1e-5 * float(mag[t].max()))
    # and against the float activations themselves (the quantization error of Q8_K)
    ref = w32.astype(np.float64) @ x.astype(np.float64).T
    err = np.abs(got - ref.T) / (np.abs(w32) @ np.abs(x.T)).T
    assert err.max() < 2e-2


@pytest.mark.parametrize("kind", KINDS)
def test_tile_extreme_blocks(libs: dict[str, Lib], kind: str) -> None:
    """The largest scales, quants and activations (lanes near 2^24; no int16 saturation)."""
    rng = np.random.default_rng(5)
    blocks = make_blocks(kind, 2, 1024, rng, extreme=True)
    x = np.full((2, 1024), 3.0, dtype=np.float32)
    x[1, ::2] = -3.0
    a = libs["native"].act(x)
    exact, mag = exact_dot(blocks, a)
    for target, lib in libs.items():
        got = lib.tile(kind, blocks.raw, a)
        assert np.all(np.abs(got.astype(np.float64) - exact) <= 4e-6 * mag), target


@pytest.mark.parametrize("kind", KINDS)
def test_tile_bit_stable(lib: Lib, kind: str) -> None:
    """Every sub-tile (rows r0.., tokens t0..) gives the full tile's values bit for bit,
    whatever the strides of the weights, activations and output."""
    rng = np.random.default_rng(6)
    cols = 1280
    blocks = make_blocks(kind, 4, cols, rng)
    # strided rows: weights and activations with padding after each row
    w = np.zeros((4, blocks.raw.shape[1] + 37), dtype=np.uint8)[:, : blocks.raw.shape[1]]
    w[...] = blocks.raw
    a0 = lib.act(activations(rng, 4, cols))
    a = np.zeros((4, a0.shape[1] + 64), dtype=np.uint8)[:, : a0.shape[1]]
    a[...] = a0
    full = lib.tile(kind, w, a, out_stride=9)
    assert np.isfinite(full).all()
    for r0 in range(4):
        for nrows in range(1, 5 - r0):
            for t0 in range(4):
                for ntok in range(1, 5 - t0):
                    part = lib.tile(kind, w[r0:], a[t0:], nrows=nrows, ntok=ntok)
                    want = full[t0 : t0 + ntok, r0 : r0 + nrows]
                    assert np.array_equal(part.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("kind", KINDS)
def test_builds_agree_bit_for_bit(libs: dict[str, Lib], kind: str) -> None:
    """AVX-512, AVX2 and scalar: the same activations and the same dot products."""
    if len(libs) == 1:
        pytest.skip("one build on this machine")
    rng = np.random.default_rng(7)
    cols = 2048
    blocks = make_blocks(kind, 3, cols, rng)
    x = activations(rng, 3, cols)
    acts = {target: lib.act(x) for target, lib in libs.items()}
    outs = {target: lib.tile(kind, blocks.raw, acts["native"]) for target, lib in libs.items()}
    for target in libs:
        assert np.array_equal(acts[target], acts["native"]), target
        assert np.array_equal(outs[target].view(np.uint32), outs["native"].view(np.uint32)), target
