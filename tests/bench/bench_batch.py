"""Batch throughput of `python -m llmcore.jsonl` beside the offline engine
(`llmcore.LLM(...).chat`) on the same work, in the same run.

The work: 256 chat requests with distinct ~30-token user messages, `max_tokens` 64
with `ignore_eos` (every request generates exactly 64 tokens), temperature 0, on
SmolLM2-135M-Instruct at float32 with the same engine settings on both sides
(2 GiB of KV cache, 256 sequences at most, 2048 new tokens per step). The batch
side is a `python -m llmcore.jsonl` subprocess reading a batch file; its time is
the batch's own elapsed time from its summary line (from the first line read to
the last line written: model loading excluded, as on the offline side). The
offline side is `LLM.chat` on all the conversations at once, in this process, after
the subprocess has exited (so the two never share the cores). Each side runs
--repeats times, alternating; the table shows the best of each.

    python tests/bench/bench_batch.py [--requests 256] [--max-tokens 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

import llmcore

ENGINE: dict[str, Any] = {
    "kv_cache_memory": 2 << 30,
    "max_num_seqs": 256,
    "max_num_batched_tokens": 2048,
}
ENGINE_FLAGS = ["--kv-cache-memory", "2GiB", "--max-num-seqs", "256",
                "--max-num-batched-tokens", "2048", "--dtype", "float32"]  # fmt: skip
TOPICS = ("a lighthouse keeper", "a lost letter", "the first snow",
          "a clockmaker's apprentice", "a river that ran backwards", "a robot gardener",
          "an old map", "a night train")  # fmt: skip
SUMMARY = re.compile(r"llmcore batch: (\d+) lines, (\d+) ok, .* in ([\d.]+) s")


def conversations(n: int) -> list[list[dict[str, str]]]:
    return [
        [
            {
                "role": "user",
                "content": f"Request {i}: write a short story about "
                f"{TOPICS[i % len(TOPICS)]}, in about five sentences, "
                f"and give it a title with the number {i}.",
            }
        ]
        for i in range(n)
    ]


def write_batch(path: Path, convs: list[list[dict[str, str]]], max_tokens: int) -> None:
    with path.open("w") as f:
        for i, messages in enumerate(convs):
            body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True}  # fmt: skip
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}  # fmt: skip
            f.write(json.dumps(line) + "\n")


def run_batch(batch: Path, out: Path, max_concurrency: int) -> tuple[float, int]:
    """(elapsed seconds of the batch, generated tokens)."""
    command = [sys.executable, "-m", "llmcore.jsonl", *ENGINE_FLAGS, "-i", str(batch),
               "-o", str(out), "--max-concurrency", str(max_concurrency),
               "--progress-interval", "3600"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    match = SUMMARY.search(done.stderr)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"the batch failed ({done.returncode}):\n{done.stderr}")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    if int(match.group(2)) != len(records):
        raise RuntimeError(f"not every line succeeded:\n{done.stderr}")
    tokens = sum(r["response"]["body"]["usage"]["completion_tokens"] for r in records)
    return float(match.group(3)), tokens


def run_offline(convs: list[list[dict[str, str]]], max_tokens: int) -> tuple[float, int]:
    llm = llmcore.LLM(dtype="float32", **ENGINE)
    params = llmcore.SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.chat(convs, params)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(o.outputs[0].token_ids) for o in outputs)


def table(batch: tuple[float, int], offline: tuple[float, int], args: Any) -> str:
    rate_b, rate_o = batch[1] / batch[0], offline[1] / offline[0]
    rows = [
        "| path | wall time (s) | generated tokens | output tokens/s | vs offline |",
        "|---|---:|---:|---:|---:|",
        f"| `python -m llmcore.jsonl` (max-concurrency {args.max_concurrency}) "
        f"| {batch[0]:.2f} | {batch[1]} | {rate_b:.0f} | {rate_b / rate_o:.2f} |",
        f"| `LLM.chat` (offline) | {offline[0]:.2f} | {offline[1]} | {rate_o:.0f} | 1.00 |",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-concurrency", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    convs = conversations(args.requests)
    batches, offlines = [], []
    with tempfile.TemporaryDirectory() as tmp:
        batch_file = Path(tmp) / "batch.jsonl"
        write_batch(batch_file, convs, args.max_tokens)
        for _ in range(args.repeats):
            batches.append(run_batch(batch_file, Path(tmp) / "out.jsonl", args.max_concurrency))
            offlines.append(run_offline(convs, args.max_tokens))
    print(f"{args.requests} chat requests, max_tokens {args.max_tokens} (ignore_eos), "
          f"temperature 0, SmolLM2-135M-Instruct float32; best of {args.repeats}; "
          f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)\n")  # fmt: skip
    print(table(min(batches), min(offlines), args))
    print("\nall runs (s): batch " + ", ".join(f"{b[0]:.2f}" for b in batches)
          + "; offline " + ", ".join(f"{o[0]:.2f}" for o in offlines))  # fmt: skip


if __name__ == "__main__":
    main()
