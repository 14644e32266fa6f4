"""How much of the engine core's host work a step loop hides behind the device, on
a simulated device: steps one at a time, overlapped steps, async scheduling.

The engine core is the real one (scheduler, KV cache manager, batch building,
appending, stop checks, output deltas; ids only, as in its own process), stepping
the tiny random model's requests. Only the device is simulated: a stream on a virtual
clock that runs each launched step's kernels as `--step-ms` of work, one step after
the other in launch order, and the sampled ids, which come back (the host sleeping
until then) when their step is done.
So the host's Python runs while the "GPU" works, as it does with a real one, and
the figures say what share of the wall time the device is busy, by step loop,
against its upper bound (1.0: the device never waits for the host).

What it cannot show: CUDA launch costs (a graph replay is one launch), the real
device times, and host syncs a real kernel path might add. `bench_gpu.py` measures
those on a GPU.

    python tests/bench/bench_async_sim.py [--step-ms 1,2,4] [--batch 1,64,256]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from llmcore.engine.sampler import SamplerOutput
from llmcore.model_runner import StepLogits

MODES: dict[str, dict[str, bool]] = {
    "one at a time": {"overlap_steps": False, "async_scheduling": False},
    "overlapped steps": {"overlap_steps": True, "async_scheduling": False},
    "async scheduling": {"async_scheduling": True},
}


class SimulatedDevice:
    """One stream on a virtual clock: a launch starts when the host issues it or
    when the work before it ends, whichever is later, and runs `seconds`. No
    thread: waiting for a step is sleeping until its end time (a thread would
    need the interpreter lock to finish its work, and get it late)."""

    def __init__(self) -> None:
        self.free_at = 0.0
        self.busy = 0.0

    def launch(self, seconds: float) -> float:
        """The launched work's end time (`time.perf_counter`'s clock)."""
        self.free_at = max(time.perf_counter(), self.free_at) + seconds
        self.busy += seconds
        return self.free_at


def wait_until(end: float) -> None:
    while (left := end - time.perf_counter()) > 0:
        time.sleep(left if left > 2e-4 else 0)


class SimulatedSample:
    """`PendingSample` of a simulated step: its ids once its step is done."""

    def __init__(self, n: int, end: float) -> None:
        self.token_ids = torch.full((n,), 7, dtype=torch.long)
        self.logprobs: list[Any] = [None] * n
        self._end = end

    def result(self) -> SamplerOutput:
        wait_until(self._end)
        return SamplerOutput(self.token_ids.tolist(), self.logprobs)


def simulate(core: Any, device: SimulatedDevice, step_s: float) -> None:
    """Replace the core's forward pass and sampling by launches on `device`; the
    batch is still built on the host (`build_batch`), as for an eager step."""
    runner, vocab = core.runner, core.loaded.config.vocab_size
    launched: list[float] = []  # the last step's end

    def execute_detailed(chunks: Any, previous: Any = None) -> StepLogits:
        runner.build_batch(chunks, previous)
        launched[:] = [device.launch(step_s)]
        n = sum(1 for c in chunks if c.sample)
        return StepLogits(torch.zeros(n, vocab), {})

    def sample(logits: torch.Tensor, rows: Any, *args: Any) -> SimulatedSample:
        return SimulatedSample(len(rows), launched[0])

    runner.execute_detailed = execute_detailed
    core.sampler.sample = sample


def run(
    model: Path, mode: dict[str, bool], batch: int, step_s: float, tokens: int
) -> dict[str, float]:
    from bench_stream_cpu import step_to_the_end

    from llmcore import SamplingParams
    from llmcore.engine.async_engine import build_core

    options: dict[str, Any] = {"max_num_seqs": batch, "kv_cache_memory": 256 << 20, **mode}
    core = build_core(model, detokenize=False, **options)
    device = SimulatedDevice()
    simulate(core, device, step_s)
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 500, (32,), generator=gen).tolist() for _ in range(batch)]
    step_to_the_end(core, prompts[:2], params, "warm")
    wait_until(device.free_at)
    gc.collect()  # the last run's engine, before the clock starts
    device.busy = 0.0
    cpu0, t0 = time.process_time(), time.perf_counter()
    steps0 = core.statistics().num_steps
    count = step_to_the_end(core, prompts, params, "r")
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    steps = core.statistics().num_steps - steps0
    assert count == batch * tokens, count
    return {"tok_s": count / wall, "busy": device.busy / wall, "step_ms": wall / steps * 1e3,
            "host_ms": cpu / steps * 1e3}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step-ms", default="0.5,2,4", help="device time of a step, ms")
    parser.add_argument("--batch", default="1,64,256", help="requests running at once")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each; medians shown")
    args = parser.parse_args()
    import bench_gpu

    bench_gpu.host_bench_start()
    with bench_gpu.tiny_model() as tmp:
        print(f"\nmedians of {args.rounds} runs of {args.tokens} tokens a request")
        print("\n| running | device ms/step | step loop | host CPU ms/step | wall ms/step "
              "| tok/s | device busy | ideal tok/s |")  # fmt: skip
        print("|---:|---:|---|---:|---:|---:|---:|---:|")
        for batch in (int(b) for b in args.batch.split(",")):
            for step_ms in (float(s) for s in args.step_ms.split(",")):
                for name, mode in MODES.items():
                    runs = [run(tmp, mode, batch, step_ms / 1e3, args.tokens)
                            for _ in range(args.rounds)]  # fmt: skip
                    r = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
                    ideal = batch / (step_ms / 1e3)
                    print(f"| {batch} | {step_ms:g} | {name} | {r['host_ms']:.2f} "
                          f"| {r['step_ms']:.2f} | {r['tok_s']:.0f} | {r['busy']:.0%} "
                          f"| {ideal:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
