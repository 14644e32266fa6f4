"""What a JSON Schema constraint costs through the server: 32 concurrent chat
requests constrained by a mid-sized schema (an order: a patterned id, an enum, a
bounded number, an array of 1-3 objects), against the same 32 prompts unconstrained
with exactly the same output lengths (each unconstrained request gets `min_tokens` =
`max_tokens` = the length its constrained twin generated, and `ignore_eos`).

The server runs in this process (the same service and HTTP transport as
`python -m llmcore.http`, SmolLM2-135M-Instruct at float32), so that the engine's
structured-output statistics can be read around each run: mask time per engine step
(worker time computing the token masks, which overlaps the forward pass) and the part
of it a step had to wait for. The client is the `openai` package's async client, in
the same event loop. Greedy; one warm-up round of each kind first (it compiles the
schema); then --repeats rounds of each, alternating, and the median is reported.

    python tests/bench/bench_structured.py [--requests 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from llmcore.cli.serve import build_parser
from llmcore.cli.service import LoadedService, build_service
from llmcore.default_model import default_chat_model_path
from llmcore.structured_outputs.manager import StructuredOutputStatistics
from tests.llmcore.openai.structured_schemas import SCHEMAS

SERVER_FLAGS = ["--dtype", "float32", "--kv-cache-memory", "1GiB", "--max-model-len", "2048"]
SCHEMA = dict((name, schema) for name, _, schema in SCHEMAS)["order"]
MAX_TOKENS = 400


@dataclass
class Round:
    seconds: float
    tokens: list[int]
    steps: int
    masks: StructuredOutputStatistics

    @property
    def tokens_per_second(self) -> float:
        return sum(self.tokens) / self.seconds


def prompts(count: int) -> list[str]:
    return [f"Describe order number {1000 + 37 * i} as JSON." for i in range(count)]


async def run_round(
    client: Any, loaded: LoadedService, texts: list[str], lengths: list[int] | None
) -> Round:
    """One round of concurrent requests: constrained when `lengths` is None, else
    unconstrained with those exact output lengths."""
    engine: Any = loaded.engines.engines[0]
    steps0, masks0 = engine.statistics().num_steps, engine.core.structured.statistics()

    async def one(i: int, prompt: str) -> int:
        extra: dict[str, Any]
        if lengths is None:
            extra = {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "order", "schema": SCHEMA},
                }
            }
            max_tokens = MAX_TOKENS
        else:
            extra, max_tokens = {"min_tokens": lengths[i], "ignore_eos": True}, lengths[i]
        reply = await client.chat.completions.create(
            model=loaded.names[0], messages=[{"role": "user", "content": prompt}],
            temperature=0, max_tokens=max_tokens, extra_body=extra,
        )  # fmt: skip
        return int(reply.usage.completion_tokens)

    start = time.perf_counter()
    tokens = await asyncio.gather(*(one(i, p) for i, p in enumerate(texts)))
    seconds = time.perf_counter() - start
    masks1 = engine.core.structured.statistics()
    delta = StructuredOutputStatistics(
        masks1.num_compiled - masks0.num_compiled,
        masks1.num_mask_rows - masks0.num_mask_rows,
        masks1.mask_seconds - masks0.mask_seconds,
        masks1.mask_wait_seconds - masks0.mask_wait_seconds,
    )
    return Round(seconds, list(tokens), engine.statistics().num_steps - steps0, delta)


async def bench(args: argparse.Namespace, loaded: LoadedService) -> tuple[list[Round], list[Round]]:
    import openai

    from transports.http import HTTPConfig, HTTPServer

    texts = prompts(args.requests)
    async with HTTPServer(loaded.service, HTTPConfig(host="127.0.0.1", port=0)) as server:
        url = f"http://127.0.0.1:{server.port}/v1"
        async with openai.AsyncOpenAI(base_url=url, api_key="-", max_retries=0,
                                      timeout=3600) as client:  # fmt: skip
            warm = await run_round(client, loaded, texts, None)
            lengths = warm.tokens
            await run_round(client, loaded, texts, lengths)
            constrained, free = [], []
            for _ in range(args.repeats):
                constrained.append(await run_round(client, loaded, texts, None))
                free.append(await run_round(client, loaded, texts, lengths))
    for r in constrained:
        if r.tokens != lengths:
            print("WARNING: a constrained round generated other lengths than the warm-up")
    await loaded.aclose()
    return constrained, free


def median_round(rounds: list[Round]) -> Round:
    return sorted(rounds, key=lambda r: r.seconds)[len(rounds) // 2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=32, help="concurrent requests")
    parser.add_argument("--repeats", type=int, default=3, help="median of these rounds")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    machine = f"{os.cpu_count()} cpus ({platform.machine()})"
    versions = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    print(f"{machine}, python {platform.python_version()}, {versions}; {load} before")
    print(f"python {shlex.join(sys.argv)}; in-process llmcore serve {shlex.join(SERVER_FLAGS)}")
    flags = [str(default_chat_model_path()), *SERVER_FLAGS]
    loaded = build_service(build_parser().parse_args(flags))
    constrained, free = asyncio.run(bench(args, loaded))
    c, f = median_round(constrained), median_round(free)
    tokens = sum(c.tokens)
    lengths = f"min {min(c.tokens)}, max {max(c.tokens)}"
    print(f"{args.requests} requests, {tokens} output tokens per round ({lengths}), "
          f"median of {args.repeats} rounds")  # fmt: skip
    print()
    print("| run | wall s | output tok/s | engine steps |")
    print("|---|---|---|---|")
    for name, r in (("JSON Schema", c), ("unconstrained, same lengths", f)):
        print(f"| {name} | {r.seconds:.2f} | {r.tokens_per_second:.1f} | {r.steps} |")
    print()
    ratio = c.tokens_per_second / f.tokens_per_second
    print(f"constrained / unconstrained throughput: {ratio:.3f}")
    m = c.masks
    per_step = 1e3 * m.mask_seconds / max(c.steps, 1)
    waited = 1e3 * m.mask_wait_seconds / max(c.steps, 1)
    per_row = 1e6 * m.mask_seconds / max(m.num_mask_rows, 1)
    print(
        f"masks: {per_step:.3f} ms per step computed ({per_row:.1f} us per row, "
        f"{m.num_mask_rows / max(c.steps, 1):.1f} rows per step), {waited:.3f} ms per step "
        f"waited for; step time {1e3 * c.seconds / max(c.steps, 1):.1f} ms"
    )
    all_ratios = [
        a.tokens_per_second / b.tokens_per_second for a, b in zip(constrained, free, strict=True)
    ]
    print("ratio per round: " + ", ".join(f"{x:.3f}" for x in all_ratios)
          + f" (median {statistics.median(all_ratios):.3f})")  # fmt: skip
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
