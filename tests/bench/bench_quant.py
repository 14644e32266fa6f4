"""Quantized matmul benchmark (ops.quant's C kernels) on SmolLM2-135M's shapes.

Measured in one run on this machine, beside two ceilings of its own:

* the streaming-read bandwidth of memory (a parallel AVX loop summing a 1 GiB
  buffer), against which the decode case (n = 1, memory-bound) is read;
* an int8 dot-product ceiling: a tight loop of independent vpdpbusd (or vpmaddubsw
  without VNNI) on registers, all threads (what the integer units can do at most).

Then, for Q4_1, Q8_0 and I8_ROW weights of SmolLM2's shapes (qkv 576->960, o 576->576,
gate_up 576->3072, down 1536->576, lm_head 576->49152), `llmcore_qmatmul` at n = 1, 8,
32, 64, 512 tokens, timed inside C (a loop over the calls, no Python between them):
GB/s of weight bytes for n = 1 (the matrix hot in cache), integer GOPS
(2 * rows * cols * n / s) for larger n, and float32 GF/s of oneDNN's GEMM (ops.linear)
on the same shape. Last, the decode sweep: the whole model's weights as a decode step
reads them (30 distinct layers of Q4_1 plus the Q8_0 lm_head, 96 MB, n = 1 and a few
batch sizes), in C and through `QuantLinear` from Python.

    python tests/bench/bench_quant.py [--threads 2] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ops.cpu import _build
from ops.cpu import quant as cq
from ops.linear import Linear
from ops.quant import QuantLinear, QuantType, QuantWeight, quantize_int8_rows
from ops.quant_blocks import BLOCK_SIZES

HIDDEN, INTERMEDIATE, VOCAB, LAYERS = 576, 1536, 49152, 30
SHAPES = {  # name: (rows, cols)
    "qkv": (960, HIDDEN),
    "o": (HIDDEN, HIDDEN),
    "gate_up": (2 * INTERMEDIATE, HIDDEN),
    "down": (HIDDEN, INTERMEDIATE),
    "lm_head": (VOCAB, HIDDEN),
}
TOKENS = (1, 8, 32, 64, 512)
TYPES = (QuantType.Q4_1, QuantType.Q8_0, QuantType.I8_ROW)

HELPER = r"""
#include <omp.h>
#include <stdint.h>
#include <time.h>
#include <immintrin.h>

typedef int (*qmatmul_fn)(const void *, const float *, int64_t, int64_t, const float *,
                          float *, int64_t);
typedef struct { const void *w; const float *x; int64_t n, x_stride; float *out;
                 int64_t out_stride; } job;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* Seconds for `reps` passes over the jobs, in order. */
double run_jobs(void *fn, const job *jobs, int64_t njobs, int64_t reps) {
    const double t0 = now();
    for (int64_t r = 0; r < reps; r++)
        for (int64_t j = 0; j < njobs; j++)
            ((qmatmul_fn)fn)(jobs[j].w, jobs[j].x, jobs[j].n, jobs[j].x_stride, 0,
                             jobs[j].out, jobs[j].out_stride);
    return now() - t0;
}

/* Bytes/s of reading `bytes` (a multiple of 256) `reps` times on all threads. */
double read_bandwidth(const uint8_t *buf, int64_t bytes, int64_t reps, int64_t *sink) {
    const double t0 = now();
    int64_t total = 0;
    for (int64_t r = 0; r < reps; r++) {
#pragma omp parallel for reduction(+ : total) schedule(static)
        for (int64_t i = 0; i < bytes; i += 256) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(buf + i));
            a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *)(buf + i + 32)));
            a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *)(buf + i + 64)));
            a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *)(buf + i + 96)));
            a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *)(buf + i + 128)));
            a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *)(buf + i + 160)));
            a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *)(buf + i + 192)));
            a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *)(buf + i + 224)));
            total += _mm256_extract_epi64(a, 0) + _mm256_extract_epi64(a, 3);
        }
    }
    *sink = total;
    return (double)bytes * reps / (now() - t0);
}

/* Integer ops/s (2 per multiply-add) of independent dot-product instructions on
   registers, all threads: the int8 ceiling. */
double int8_peak(int64_t iters) {
    double seconds = 0;
    int threads = 1;
    const double t0 = now();
#pragma omp parallel
    {
#pragma omp single
        threads = omp_get_num_threads();
#if defined(__AVX512VNNI__)
        __m512i acc[12];
        for (int k = 0; k < 12; k++) acc[k] = _mm512_set1_epi32(k);
        const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
        for (int64_t i = 0; i < iters; i++)
            for (int k = 0; k < 12; k++) {
                acc[k] = _mm512_dpbusd_epi32(acc[k], a, b);
                __asm__ volatile("" : "+v"(acc[k]));
            }
        int32_t s = 0;
        for (int k = 0; k < 12; k++) s += _mm512_reduce_add_epi32(acc[k]);
        __asm__ volatile("" ::"r"(s));
#else
        __m256i acc[12];
        for (int k = 0; k < 12; k++) acc[k] = _mm256_set1_epi32(k);
        const __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-2), one = _mm256_set1_epi16(1);
        for (int64_t i = 0; i < iters; i++)
            for (int k = 0; k < 12; k++) {
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), one);
                acc[k] = _mm256_add_epi32(acc[k], p);
                __asm__ volatile("" : "+v"(acc[k]));
            }
#endif
    }
    seconds = now() - t0;
#if defined(__AVX512VNNI__)
    const double macs = 64.0 * 12 * iters * threads;
#else
    const double macs = 32.0 * 12 * iters * threads;
#endif
    return 2 * macs / seconds;
}
"""


class Job(ctypes.Structure):
    _fields_ = (
        ("w", ctypes.c_void_p),
        ("x", ctypes.c_void_p),
        ("n", ctypes.c_int64),
        ("x_stride", ctypes.c_int64),
        ("out", ctypes.c_void_p),
        ("out_stride", ctypes.c_int64),
    )


def build_helper(workdir: Path) -> ctypes.CDLL:
    cc = _build.compiler()
    assert cc is not None, "no C compiler"
    source = workdir / "bench_helper.c"
    source.write_text(HELPER)
    target = workdir / "bench_helper.so"
    subprocess.run(
        [
            cc,
            "-O2",
            "-march=native",
            "-fopenmp",
            "-shared",
            "-fPIC",
            "-o",
            str(target),
            str(source),
        ],
        check=True,
    )
    helper = ctypes.CDLL(str(target))
    helper.run_jobs.restype = ctypes.c_double
    helper.run_jobs.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    helper.read_bandwidth.restype = ctypes.c_double
    helper.read_bandwidth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    helper.int8_peak.restype = ctypes.c_double
    helper.int8_peak.argtypes = [ctypes.c_int64]
    return helper


def random_weight(qtype: QuantType, rows: int, cols: int, seed: int) -> QuantWeight:
    rng = np.random.default_rng(seed)
    if qtype == QuantType.I8_ROW:
        return quantize_int8_rows(torch.from_numpy(rng.standard_normal((rows, cols), np.float32)))
    block, block_bytes = BLOCK_SIZES[qtype]
    n = rows * cols // block
    raw = rng.integers(0, 256, size=(n, block_bytes), dtype=np.uint8)
    fields = (0, 2) if qtype == QuantType.Q4_1 else (0,)
    for offset in fields:
        raw[:, offset : offset + 2] = rng.uniform(0, 0.01, (n, 1)).astype(np.float16).view(np.uint8)
    return QuantWeight.from_raw(qtype, raw, (rows, cols))


class Runner:
    """Times lists of qmatmul calls inside C."""

    def __init__(self, helper: ctypes.CDLL, repeats: int) -> None:
        lib = _build.library()
        assert lib is not None, "the CPU kernels are not built"
        self.helper = helper
        self.fn = ctypes.cast(lib.llmcore_qmatmul, ctypes.c_void_p).value
        self.repeats = repeats
        self.keep: list[object] = []

    def jobs(
        self, calls: list[tuple[QuantWeight, torch.Tensor, torch.Tensor]]
    ) -> ctypes.Array[Job]:
        array = (Job * len(calls))()
        for job, (w, x, out) in zip(array, calls, strict=True):
            desc = w.descriptor
            job.w, job.x, job.n, job.x_stride = (
                ctypes.addressof(desc),
                x.data_ptr(),
                x.shape[0],
                x.stride(0),
            )
            job.out, job.out_stride = out.data_ptr(), out.stride(0)
            self.keep.append(desc)
        return array

    def seconds(
        self, calls: list[tuple[QuantWeight, torch.Tensor, torch.Tensor]], budget: float = 0.2
    ) -> float:
        """Seconds of one pass over `calls`: the best of many short samples (a shared
        machine interrupts some of them)."""
        array = self.jobs(calls)
        once = self.helper.run_jobs(self.fn, array, len(array), 1)  # warm-up and estimate
        samples = 8 * self.repeats
        reps = max(1, int(budget / samples / max(once, 1e-7)))
        return min(
            self.helper.run_jobs(self.fn, array, len(array), reps) / reps for _ in range(samples)
        )


def onednn_seconds(rows: int, cols: int, n: int, repeats: int) -> float:
    linear = Linear(torch.randn(rows, cols))
    x = torch.randn(n, cols)
    linear(x)
    reps = max(1, int(0.1 / max(1e-6, _time(lambda: linear(x), 1))))
    return min(_time(lambda: linear(x), reps) for _ in range(repeats))


def _time(fn: object, reps: int) -> float:
    assert callable(fn)
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def bench_shapes(runner: Runner, repeats: int) -> list[dict[str, object]]:
    rows_out: list[dict[str, object]] = []
    for name, (rows, cols) in SHAPES.items():
        types = (QuantType.Q8_0, QuantType.I8_ROW) if name == "lm_head" else TYPES
        for qtype in types:
            w = random_weight(qtype, rows, cols, seed=rows + cols)
            for n in TOKENS:
                if name == "lm_head" and n > 64:
                    continue
                x = torch.randn(n, cols)
                out = torch.empty(n, rows)
                s = runner.seconds([(w, x, out)])
                row: dict[str, object] = {"shape": name, "type": qtype.name, "n": n, "us": s * 1e6}
                if n == 1:
                    row["GB/s"] = w.nbytes / s / 1e9
                else:
                    row["GOPS"] = 2 * rows * cols * n / s / 1e9
                    if qtype == QuantType.Q8_0:
                        row["oneDNN_GF/s"] = (
                            2 * rows * cols * n / onednn_seconds(rows, cols, n, repeats) / 1e9
                        )
                rows_out.append(row)
    return rows_out


def decode_model(qtype: QuantType = QuantType.Q4_1) -> list[QuantWeight]:
    weights = []
    for layer in range(LAYERS):
        for i, name in enumerate(("qkv", "o", "gate_up", "down")):
            rows, cols = SHAPES[name]
            weights.append(random_weight(qtype, rows, cols, seed=layer * 10 + i))
    rows, cols = SHAPES["lm_head"]
    weights.append(random_weight(QuantType.Q8_0, rows, cols, seed=999))
    return weights


def bench_sweep(
    runner: Runner, weights: list[QuantWeight], repeats: int
) -> list[dict[str, object]]:
    total = sum(w.nbytes for w in weights)
    rows_out: list[dict[str, object]] = []
    for n in (1, 8, 32, 64):
        calls = [(w, torch.randn(n, w.cols), torch.empty(n, w.rows)) for w in weights]
        s = runner.seconds(calls, budget=0.5)
        linears = [(QuantLinear(w), x) for w, x, _ in calls]

        def forward(linears: list[tuple[QuantLinear, torch.Tensor]] = linears) -> None:
            for lin, x in linears:
                lin(x)

        py = min(_time(forward, 3) for _ in range(repeats))
        rows_out.append(
            {
                "n": n,
                "MB": total / 1e6,
                "C_ms": s * 1e3,
                "GB/s": total / s / 1e9,
                "python_ms": py * 1e3,
            }
        )
    return rows_out


def ceilings(helper: ctypes.CDLL, threads: int, repeats: int) -> dict[str, object]:
    """The machine's streaming-read bandwidth and int8 dot ceiling, printed and returned
    (with the machine, thread count and tiles' instruction set) for the JSON."""
    buf = torch.ones(1 << 30, dtype=torch.uint8)
    sink = ctypes.c_int64()
    read = max(
        helper.read_bandwidth(buf.data_ptr(), buf.numel(), 2, ctypes.byref(sink))
        for _ in range(repeats)
    )
    del buf
    peak = max(helper.int8_peak(20_000_000) for _ in range(repeats))
    print(f"threads {threads}, tiles: {cq.isa()}")
    print(f"streaming read {read / 1e9:.1f} GB/s; int8 dot ceiling {peak / 1e9:.0f} GOPS\n")
    return {
        "machine": platform.processor() or platform.machine(),
        "threads": threads,
        "isa": cq.isa(),
        "read_GB/s": read / 1e9,
        "int8_peak_GOPS": peak / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        helper = build_helper(Path(tmp))
        runner = Runner(helper, args.repeats)
        results = ceilings(helper, args.threads, args.repeats)
        shapes = bench_shapes(runner, args.repeats)
        results["shapes"] = shapes
        print("| shape | type | n | µs | GB/s (n=1) or GOPS | oneDNN f32 GF/s |")
        print("|---|---|---|---|---|---|")
        for r in shapes:
            figure = f"{r['GB/s']:.1f} GB/s" if "GB/s" in r else f"{r['GOPS']:.0f} GOPS"
            dnn = f"{r['oneDNN_GF/s']:.0f}" if "oneDNN_GF/s" in r else ""
            print(f"| {r['shape']} | {r['type']} | {r['n']} | {r['us']:.1f} | {figure} | {dnn} |")
        sweep = bench_sweep(runner, decode_model(), args.repeats)
        results["decode_sweep"] = sweep
        print("\nDecode sweep (30 layers Q4_1 + lm_head Q8_0, distinct weights):")
        print("| n | MB | C ms | GB/s | via QuantLinear ms |")
        print("|---|---|---|---|---|")
        for r in sweep:
            figures = f"{r['MB']:.0f} | {r['C_ms']:.2f} | {r['GB/s']:.1f} | {r['python_ms']:.2f}"
            print(f"| {r['n']} | {figures} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
