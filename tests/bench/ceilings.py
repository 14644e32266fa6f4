"""What this machine can do at best, measured through torch, for setting serving
figures against: streaming-read memory bandwidth, and the best GEMM rate in fp32,
bf16 and int8 at one LLM-like shape (M x K x N = 512 x 2048 x 2048 by default).

- bandwidth: `sum()` over a float32 tensor far larger than the caches (1 GiB by
  default), bytes read / best time. It is what torch's threads (2 here) can pull,
  not the DIMMs' rating.
- fp32: the better of MKL (`torch.mm`) and oneDNN (`torch.ops.mkldnn._linear_pointwise`,
  what llmcore's float32 matmuls use).
- bf16: `torch.mm` on bfloat16 tensors, which torch hands to oneDNN's brgemm matmul
  (`ONEDNN_VERBOSE=1` shows `brg_matmul:avx512_core_bf16` on Zen 4).
- int8: `torch._int_mm` (int8 x int8 -> int32), which torch 2.13 runs on the CPU
  through oneDNN's s8s8s32 GEMM (`ONEDNN_VERBOSE=1` shows `gemm_api`), in GOPS.

Each figure is the best of `repeats` timed calls after one warm-up call.

    python tests/bench/ceilings.py [--repeats 5] [--shape 512,2048,2048] [--gib 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from ops.linear import onednn_available


@dataclass(slots=True)
class Ceilings:
    bandwidth: float  # bytes/s, streaming read
    fp32: dict[str, float]  # library -> FLOP/s
    bf16: float  # FLOP/s
    int8: float | None  # OP/s; None where torch._int_mm is missing on the CPU
    shape: tuple[int, int, int]  # M, K, N
    gib: float  # size of the bandwidth tensor

    @property
    def best_fp32(self) -> float:
        return max(self.fp32.values())

    def lines(self) -> list[str]:
        m, k, n = self.shape
        rows = [
            "| ceiling | value | how |",
            "|---|---:|---|",
            f"| streaming-read bandwidth | {self.bandwidth / 1e9:.1f} GB/s "
            f"| `x.sum()` over a float32 tensor of {self.gib:g} GiB |",
        ]
        for name, rate in self.fp32.items():
            rows.append(f"| fp32 GEMM {m}x{k}x{n} | {rate / 1e9:.1f} GFLOP/s | {name} |")
        rows.append(
            f"| bf16 GEMM {m}x{k}x{n} | {self.bf16 / 1e9:.1f} GFLOP/s "
            "| `torch.mm` on bfloat16 (oneDNN brgemm) |"
        )
        int8 = "n/a" if self.int8 is None else f"{self.int8 / 1e9:.1f} GOPS"
        rows.append(f"| int8 GEMM {m}x{k}x{n} | {int8} | `torch._int_mm` (oneDNN s8s8s32) |")
        return rows


def best_seconds(call: Callable[[], object], repeats: int) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    x = torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32)
    seconds = best_seconds(lambda: x.sum(), repeats)
    return x.numel() * 4 / seconds


def fp32_rates(m: int, k: int, n: int, repeats: int) -> dict[str, float]:
    a, w = torch.randn(m, k), torch.randn(n, k)  # w as a linear layer holds it
    wt = w.t().contiguous()
    calls: dict[str, Callable[[], object]] = {"MKL `torch.mm`": lambda: torch.mm(a, wt)}
    if onednn_available():
        calls["oneDNN `mkldnn._linear_pointwise`"] = lambda: torch.ops.mkldnn._linear_pointwise(
            a, w, None, "none", [], ""
        )
    return {name: 2 * m * k * n / best_seconds(call, repeats) for name, call in calls.items()}


def bf16_rate(m: int, k: int, n: int, repeats: int) -> float:
    a, b = torch.randn(m, k).bfloat16(), torch.randn(k, n).bfloat16()
    return 2 * m * k * n / best_seconds(lambda: torch.mm(a, b), repeats)


def int8_rate(m: int, k: int, n: int, repeats: int) -> float | None:
    if not hasattr(torch, "_int_mm"):
        return None
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), dtype=torch.int8)
    try:
        torch._int_mm(a, b)
    except (RuntimeError, NotImplementedError):
        return None
    return 2 * m * k * n / best_seconds(lambda: torch._int_mm(a, b), repeats)


def measure(
    shape: tuple[int, int, int] = (512, 2048, 2048), gib: float = 1.0, repeats: int = 5
) -> Ceilings:
    m, k, n = shape
    return Ceilings(
        bandwidth=bandwidth(gib, repeats),
        fp32=fp32_rates(m, k, n, repeats),
        bf16=bf16_rate(m, k, n, repeats),
        int8=int8_rate(m, k, n, repeats),
        shape=shape,
        gib=gib,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="best of this many calls")
    parser.add_argument("--shape", default="512,2048,2048", help="GEMM M,K,N")
    parser.add_argument("--gib", type=float, default=1.0, help="size of the bandwidth tensor")
    args = parser.parse_args()
    m, k, n = (int(x) for x in args.shape.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\n".join(measure((m, k, n), args.gib, args.repeats).lines()))


if __name__ == "__main__":
    main()
