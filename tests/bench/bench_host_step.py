"""The host side of one step's batch: reading the running requests' block tables
(`KVCacheManager.block_table`: numpy views), `ModelRunner.build_batch` (every eager step:
prefill, mixed, and decode where graphs are off or on the CPU) and the decode
graphs' `_fill` (a replayed step), at 64 and 256 sequences of 161 and 2,048
tokens (11 and 128 blocks of 16). On a GPU this time is on the step's critical
path: the kernels cannot start before their inputs are there.

The references, in the same run: the tables rebuilt from their blocks as lists (as
`block_ids` did before the manager kept them as numpy ids), and the batch built
from those lists with `torch.tensor` (as `build_batch` did before numpy).

Then the host time of a whole step, by phase, per token: the engine core (ids
only, as in its process) stepping 512 requests of 128 tokens, 256 at a time, on
the tiny random model: what runs while the GPU would wait (schedule, batch,
sampling's host side, append) and what overlapped steps build while it runs (the
output deltas). The model's forward pass is listed apart: on a GPU it is the
GPU's time, not the host's.

    python tests/bench/bench_host_step.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from llmcore.decode_graphs import DecodeGraphs
from llmcore.engine.kv_cache_manager import KVCacheManager
from llmcore.model_runner import ModelRunner, SequenceChunk


def lists_reference(runner: ModelRunner, chunks: Sequence[SequenceChunk]) -> list[torch.Tensor]:
    """The batch's tensors built from Python lists (the former `build_batch`; the
    chunks' tables are lists)."""
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
    padded = [list(c.block_table) + [0] * (width - len(c.block_table)) for c in chunks]
    return [
        torch.tensor(ids, dtype=torch.int64),
        torch.tensor(positions, dtype=torch.int64),
        torch.tensor(padded, dtype=torch.int32),
        torch.tensor(slots, dtype=torch.int64),
        torch.tensor(starts, dtype=torch.int32),
        torch.tensor(seq_lens, dtype=torch.int32),
        torch.tensor([s - 1 for s in starts[1:]], dtype=torch.int64),
    ]


@dataclass
class _Request:
    """What `KVCacheManager` reads of a request."""

    request_id: str
    all_token_ids: list[int]
    num_computed_tokens: int = 0
    cache_salt: str | None = None
    block_hashes: list[bytes] = field(default_factory=list)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.all_token_ids)


def tables_of(batch: int, width: int) -> tuple[KVCacheManager, list[str]]:
    """A manager whose `batch` requests hold `width` blocks each."""
    mgr = KVCacheManager(batch * width, 16, enable_prefix_caching=False)
    rids = []
    for i in range(batch):
        r = _Request(f"r{i}", [1] * (width * 16))
        assert mgr.allocate_slots(r, width * 16) is not None
        rids.append(r.request_id)
    return mgr, rids


def rebuilt(mgr: KVCacheManager, rid: str) -> list[int]:
    """A table rebuilt from its blocks (the former `block_ids`)."""
    return [0 if b is None else b.block_id for b in mgr.groups[0].tables[rid]]


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


def step_phases(model: Path) -> dict[str, float]:
    """Microseconds per generated token of each phase of `EngineCore.step`."""
    import collections

    from bench_stream_cpu import prompts, step_to_the_end

    from llmcore import SamplingParams
    from llmcore.engine.async_engine import build_core

    core = build_core(model, max_num_seqs=256, detokenize=False)
    spent: collections.Counter[str] = collections.Counter()

    def timing(owner: object, name: str, phase: str) -> None:
        inner = getattr(owner, name)

        def timed_call(*args: object, **kwargs: object) -> object:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[phase] += time.perf_counter() - t0

        setattr(owner, name, timed_call)

    for owner, name in ((core, "step"), (core, "_launch"), (core.runner, "execute_detailed"),
                        (core.runner, "build_batch"), (core.runner.model, "forward"),
                        (core.runner.model, "compute_logits"), (core.sampler, "sample"),
                        (core, "_finish"), (core.output_processor, "outputs"),
                        (core.scheduler, "schedule")):  # fmt: skip
        timing(owner, name, name)
    params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
    step_to_the_end(core, prompts(4, 512, 0), params, "warm")
    spent.clear()
    count = step_to_the_end(core, prompts(512, 512, 1), params, "r")
    return {phase: seconds / count * 1e6 for phase, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    import bench_gpu

    from llmcore.engine.async_engine import build_core

    bench_gpu.host_bench_start()
    with bench_gpu.tiny_model() as tmp:
        phases = step_phases(tmp)
        core = build_core(tmp, max_num_seqs=256, kv_cache_memory=1 << 30)
    runner = core.runner
    # The graphs' host buffers (no graph is captured: `_fill` is the host side).
    graphs = DecodeGraphs(runner, 256, 128, [runner.num_blocks - 1], backend=None)  # type: ignore[arg-type]
    print(
        "\n| sequences x blocks | tables rebuilt as lists (ms) | `block_table` views (ms) "
        "| ratio | lists + torch.tensor (ms) | build_batch from the views (ms) | ratio "
        "| decode graphs' _fill (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for batch in (64, 256):
        for width in (11, 128):
            mgr, rids = tables_of(batch, width)
            old = timed(lambda m=mgr, r=rids: [rebuilt(m, x) for x in r], args.repeat)
            new = timed(lambda m=mgr, r=rids: [m.block_table(x) for x in r], args.repeat)
            lists = [SequenceChunk([5 + i % 100], width * 16 - 3, rebuilt(mgr, rid))
                     for i, rid in enumerate(rids)]  # fmt: skip
            views = [SequenceChunk([5 + i % 100], width * 16 - 3, mgr.block_table(rid))
                     for i, rid in enumerate(rids)]  # fmt: skip
            size = graphs.bucket(views)
            assert size is not None
            ref = timed(lambda c=lists: lists_reference(runner, c), args.repeat)
            ours = timed(lambda c=views: runner.build_batch(c), args.repeat)
            fill = timed(lambda c=views, n=size: graphs._fill(c, n), args.repeat)
            print(f"| {batch} x {width} | {old:.3f} | {new:.3f} | {old / new:.2f}x | {ref:.3f} "
                  f"| {ours:.3f} | {ref / ours:.2f}x | {fill:.3f} |")  # fmt: skip
    model = phases["forward"] + phases["compute_logits"]
    host = phases["step"] - model
    rows = {
        "schedule": phases["schedule"],
        "launch: the chunks and sampling rows": (
            phases["_launch"] - phases["execute_detailed"] - phases["sample"]
        ),
        "launch: `build_batch`": phases["build_batch"],
        "launch: the runner's other tensors": (
            phases["execute_detailed"] - phases["build_batch"] - model
        ),
        "launch: sampling (host side and the CPU's kernels)": phases["sample"],
        "finish: append, stop checks": phases["_finish"],
        "output deltas (`OutputProcessor.outputs`)": phases["outputs"],
    }
    rows["the rest (inbox, loop)"] = host - sum(rows.values())
    print("\nOne step's host time by phase (tiny model, 256 running, ids only), us per token:")
    print("\n| phase | us/token | share of the host's |\n|---|---:|---:|")
    for phase, us in rows.items():
        print(f"| {phase} | {us:.2f} | {us / host:.0%} |")
    print(f"| all host work | {host:.2f} | 100% |")
    print(f"| (the forward pass and logits: the GPU's, on a GPU) | {model:.2f} | |")


if __name__ == "__main__":
    main()
