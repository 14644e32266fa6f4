"""K-quant matmul benchmark (Q4_K, Q5_K, Q6_K weights through `llmcore_qmatmul`).

A 4096 x 4096 matrix of each type at n = 1, 8 and 32 tokens, timed inside C with
bench_quant.py's helper (a loop over the calls, no Python between them). The matrix
is read cold: each pass multiplies distinct copies of it in turn, TOTAL_BYTES in all
(ten times a 32 MB L3: a cache that resists cyclic thrashing keeps little of it), so
n = 1 reads the weights from memory.
Reported: GB/s of weight bytes, integer GOPS (2 * rows * cols * n / s), and beside
them the machine's streaming-read bandwidth and int8 dot-product ceiling (the same
helper, all threads) that the n = 1 and the large-n figures are read against.

    python tests/bench/bench_quant_k.py [--threads 2] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from ops.cpu import quant as cq
from ops.quant import QuantType, QuantWeight
from tests.bench.bench_quant import Runner, build_helper, ceilings

ROWS = COLS = 4096
TOKENS = (1, 8, 32)
TYPES = (QuantType.Q4_K, QuantType.Q5_K, QuantType.Q6_K)
BLOCK_BYTES = {QuantType.Q4_K: 144, QuantType.Q5_K: 176, QuantType.Q6_K: 210}
F16_FIELDS = {QuantType.Q4_K: (0, 2), QuantType.Q5_K: (0, 2), QuantType.Q6_K: (208,)}
TOTAL_BYTES = 320_000_000  # the distinct copies one pass reads


def random_weights(qtype: QuantType, total_bytes: int) -> list[QuantWeight]:
    """Copies of one random valid matrix (random quants and scales, small positive fp16
    d and dmin), each in memory of its own, total_bytes in all."""
    rng = np.random.default_rng(0)
    n = ROWS * COLS // 256
    raw = rng.integers(0, 256, size=(n, BLOCK_BYTES[qtype]), dtype=np.uint8)
    for offset in F16_FIELDS[qtype]:
        raw[:, offset : offset + 2] = rng.uniform(0, 1e-3, (n, 1)).astype(np.float16).view(np.uint8)
    copies = -(-total_bytes // raw.nbytes)
    return [QuantWeight.from_raw(qtype, raw.copy(), (ROWS, COLS)) for _ in range(copies)]


def bench(runner: Runner, total_bytes: int) -> list[dict[str, object]]:
    rows_out: list[dict[str, object]] = []
    for qtype in TYPES:
        if cq.Support.MATMUL not in cq.support(qtype):
            print(f"{qtype.name}: no kernel in this library")
            continue
        weights = random_weights(qtype, total_bytes)
        for n in TOKENS:
            x, out = torch.randn(n, COLS), torch.empty(n, ROWS)
            s = runner.seconds([(w, x, out) for w in weights], budget=1.0) / len(weights)
            rows_out.append(
                {
                    "type": qtype.name,
                    "n": n,
                    "us": s * 1e6,
                    "GB/s": weights[0].nbytes / s / 1e9,
                    "GOPS": 2 * ROWS * COLS * n / s / 1e9,
                }
            )
        del weights
    return rows_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mb", type=int, default=TOTAL_BYTES // 10**6, help="copies a pass reads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        helper = build_helper(Path(tmp))
        results = ceilings(helper, args.threads, args.repeats)
        rows = bench(Runner(helper, args.repeats), args.mb * 10**6)
    print(f"| type | n | µs | GB/s of weights | GOPS |  ({ROWS} x {COLS}, read cold)")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['type']} | {r['n']} | {r['us']:.0f} | {r['GB/s']:.1f} | {r['GOPS']:.0f} |")
    if args.json:
        results["rows"] = rows
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
