"""The host side of one step's batch: `ModelRunner.build_batch` (every eager step:
prefill, mixed, and decode where graphs are off or on the CPU) and the decode
graphs' `_fill` (a replayed step), at 64 and 256 sequences of 161 and 2,048
tokens (11 and 128 blocks of 16). On a GPU this time is on the step's critical
path: the kernels cannot start before their inputs are there.

The reference, in the same run: the batch built from Python lists with
`torch.tensor`, as `build_batch` did before it was laid out in numpy.

    python tests/bench/bench_host_step.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from llmcore.decode_graphs import DecodeGraphs
from llmcore.model_runner import ModelRunner, SequenceChunk


def lists_reference(runner: ModelRunner, chunks: Sequence[SequenceChunk]) -> list[torch.Tensor]:
    """The batch's tensors built from Python lists (the former `build_batch`)."""
    bs = runner.block_size
    ids: list[int] = []
    positions: list[int] = []
    starts, seq_lens, slots = [0], [], []
    for c in chunks:
        end = c.num_cached + len(c.token_ids)
        ids.extend(c.token_ids)
        positions.extend(range(c.num_cached, end))
        starts.append(len(ids))
        seq_lens.append(end)
        slots.extend(c.block_table[p // bs] * bs + p % bs for p in range(c.num_cached, end))
    width = max(len(c.block_table) for c in chunks)
    padded = [c.block_table + [0] * (width - len(c.block_table)) for c in chunks]
    return [
        torch.tensor(ids, dtype=torch.int64),
        torch.tensor(positions, dtype=torch.int64),
        torch.tensor(padded, dtype=torch.int32),
        torch.tensor(slots, dtype=torch.int64),
        torch.tensor(starts, dtype=torch.int32),
        torch.tensor(seq_lens, dtype=torch.int32),
        torch.tensor([s - 1 for s in starts[1:]], dtype=torch.int64),
    ]


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median milliseconds of `fn` over `repeat` calls (after three warm-ups)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {os.cpu_count()} cpus ({platform.machine()}), python "
          f"{platform.python_version()}, torch {torch.__version__}")  # fmt: skip
    import bench_gpu

    from llmcore.engine.async_engine import build_core

    with tempfile.TemporaryDirectory(prefix="llmcore-tiny-") as tmp:
        bench_gpu.build_model("tiny", Path(tmp), torch.float32)
        core = build_core(tmp, max_num_seqs=256, kv_cache_memory=1 << 30)
    runner = core.runner
    # The graphs' host buffers (no graph is captured: `_fill` is the host side).
    graphs = DecodeGraphs(runner, 256, 128, [runner.num_blocks - 1], backend=None)  # type: ignore[arg-type]
    print("\n| sequences x blocks | lists + torch.tensor (ms) | build_batch (ms) | ratio "
          "| decode graphs' _fill (ms) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for batch in (64, 256):
        for width in (11, 128):
            chunks = [SequenceChunk([5 + i % 100], width * 16 - 3,
                                    list(range(i * width, (i + 1) * width)))
                      for i in range(batch)]  # fmt: skip
            size = graphs.bucket(chunks)
            assert size is not None
            ref = timed(lambda c=chunks: lists_reference(runner, c), args.repeat)
            ours = timed(lambda c=chunks: runner.build_batch(c), args.repeat)
            fill = timed(lambda c=chunks, n=size: graphs._fill(c, n), args.repeat)
            print(f"| {batch} x {width} | {ref:.3f} | {ours:.3f} | {ref / ours:.2f}x "
                  f"| {fill:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
