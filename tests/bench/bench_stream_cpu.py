"""Host CPU per streamed token: what serving costs beside the model (issue 21).

On a GPU the host's work per token (scheduling, inputs, sampling's bookkeeping,
detokenization, the OpenAI chunks, SSE, the socket) bounds throughput once the
model's kernels are fast. This measures it on any machine with a tiny random-weight
Llama (hidden 64, 2 layers: the forward pass is cheap, so the host work shows):
`python -m llmcore.http` serves `--concurrency` streaming completions (token-id
prompts, `--max-tokens` each with ignore_eos, twice as many requests as streams),
and the CPU time of the API process and of the engine-core process (or the one
process, with `--engine-process off`) is divided by the tokens streamed; with
`--api-servers 2`, the server runs `--api-server-count 2` (two API processes in
front of the one core process: their CPU is added up). The
reference, in the same run: `LLM.generate` of the same prompts in this process,
its CPU time per token; beside it the engine core's step loop alone, detokenizing
(as in-process) and sending ids only (as in the core process, whose caller
detokenizes), so that the share of detokenization in the core shows. Every
process runs torch on `--threads` threads (default 1: on a shared CPU, idle
intra-op threads spin, and that is not host work).

    python tests/bench/bench_stream_cpu.py [--concurrency 256] [--max-tokens 128]
        [--modes on,off] [--device cpu] [--model FOLDER] [--threads 1]
        [--server-args "--stream-interval 8"] [--api-servers 1,2]

Run it on a quiet machine: the client shares the cores (its CPU is printed too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_client import run_level
from serving_servers import CLK_TCK, free_port, process_tree, start_llmcore, stop_server

PROMPT_TOKENS = 32


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / CLK_TCK


def prompts(count: int, vocab: int, tag: int) -> list[list[int]]:
    """Distinct token-id prompts (no two share a first block)."""
    return [[3 + (i * 7 + j + tag * 13) % (vocab - 3) for j in range(PROMPT_TOKENS)] + [i % 97]
            for i in range(count)]  # fmt: skip


def _is_core(pid: int) -> bool:
    try:
        return b"llmcore.engine.core_process" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def served(model: Path, mode: str, device: str, concurrency: int, tokens: int,
           extra: Sequence[str] = (), api_servers: int = 1) -> dict[str, float]:  # fmt: skip
    log = Path(tempfile.mkstemp(prefix="bench-stream-cpu-", suffix=".log")[1])
    args = [str(model), "--engine-process", mode, "--device", device,
            "--max-num-seqs", str(concurrency), "--disable-log-requests", *extra]  # fmt: skip
    if api_servers > 1:
        args += ["--api-server-count", str(api_servers), "--port", str(free_port())]
    server = start_llmcore(args, log)  # (once every API server serves)
    try:
        vocab = json.loads((model / "config.json").read_text())["vocab_size"]

        def bodies(count: int, tag: int) -> list[bytes]:
            return [json.dumps({"model": server.name, "prompt": p, "max_tokens": tokens,
                                "ignore_eos": True, "stream": True, "temperature": 0,
                                "stream_options": {"include_usage": True}}).encode()
                    for p in prompts(count, vocab, tag)]  # fmt: skip

        asyncio.run(run_level(server.host, server.port, "/v1/completions", bodies(4, 0), 4,
                              server.cpu_seconds))  # fmt: skip
        pids = process_tree(server.process.pid)
        cores = {p for p in pids if _is_core(p)}
        before = {p: _cpu_seconds(p) for p in pids}
        level = asyncio.run(run_level(server.host, server.port, "/v1/completions",
                                      bodies(2 * concurrency, 1), concurrency,
                                      server.cpu_seconds))  # fmt: skip
        after = {p: _cpu_seconds(p) for p in pids}
    finally:
        stop_server(server)
    count = sum(r.completion_tokens or 0 for r in level.requests)
    assert count == 2 * concurrency * tokens, count
    api_s = sum(after[p] - before[p] for p in pids if p not in cores)  # every API server
    engine_s = sum(after[p] - before[p] for p in cores)
    chunks = sum(r.chunks for r in level.requests)
    return {"tokens": count, "wall": level.wall, "api": api_s, "engine": engine_s,
            "client": level.client_cpu, "chunks": chunks}  # fmt: skip


def offline(model: Path, device: str, concurrency: int, tokens: int) -> dict[str, float]:
    from llmcore import LLM, SamplingParams

    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    llm = LLM(model, device=device, max_num_seqs=concurrency)
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    llm.generate(prompts(4, vocab, 0), params)
    batch = prompts(2 * concurrency, vocab, 1)
    cpu0, t0 = time.process_time(), time.perf_counter()
    outs = llm.generate(batch, params)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    count = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"tokens": count, "wall": wall, "cpu": cpu}


def step_to_the_end(core: Any, batch: list[list[int]], params: Any, tag: str) -> int:
    """Add the prompts to an `EngineCore` and step it until it is idle; the tokens
    it generated."""
    for i, prompt in enumerate(batch):
        core.add(core.make_requests(prompt, params, f"{tag}{i}"))
    count = 0
    while core.has_work():
        for out in core.step():
            count += sum(len(c.token_ids) for c in getattr(out, "outputs", ()))
    return count


def core_steps(model: Path, device: str, concurrency: int, tokens: int, detokenize: bool
               ) -> dict[str, float]:  # fmt: skip
    """The engine core's step loop alone, in this process: `detokenize=False` is the
    core process's (ids only: the API process detokenizes and finds stop strings)."""
    from llmcore import SamplingParams
    from llmcore.engine.async_engine import build_core

    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    core = build_core(model, device=device, max_num_seqs=concurrency, detokenize=detokenize)
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    step_to_the_end(core, prompts(4, vocab, 0), params, "warm")
    batch = prompts(2 * concurrency, vocab, 1)
    cpu0, t0 = time.process_time(), time.perf_counter()
    count = step_to_the_end(core, batch, params, "r")
    return {"tokens": count, "wall": time.perf_counter() - t0, "cpu": time.process_time() - cpu0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--modes", default="on,off", help="--engine-process values")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path, help="a model folder (default: tiny, random)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every process")
    parser.add_argument("--server-args", default="", help="more `llmcore serve` flags")
    parser.add_argument("--api-servers", default="1",
                        help="--api-server-count values, one run each (1,2: both)")  # fmt: skip
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the servers inherit it
    torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} cpus ({platform.machine()}), python "
          f"{platform.python_version()}, torch {torch.__version__} ({args.threads} threads); "
          f"device {args.device}")  # fmt: skip
    print(f"{args.concurrency} streams, {2 * args.concurrency} requests of {args.max_tokens} "
          f"tokens (ignore_eos), {PROMPT_TOKENS + 1}-token prompts")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="llmcore-tiny-") as tmp:
        model = args.model
        if model is None:
            import bench_gpu

            model = Path(tmp)
            bench_gpu.build_model("tiny", model, torch.float32)
        ref = offline(model, args.device, args.concurrency, args.max_tokens)
        ref_us = ref["cpu"] / ref["tokens"] * 1e6
        print(
            "\n| path | tok/s | API process us/token | engine process us/token "
            "| total us/token | vs offline | client us/token | tokens per chunk "
            "| API process us/chunk |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| offline `LLM.generate` | {ref['tokens'] / ref['wall']:.0f} | | | "
              f"{ref_us:.1f} | 1.00x | | | |")  # fmt: skip
        for detokenize, name in ((True, "detokenizing"), (False, "ids only, as in its process")):
            r = core_steps(model, args.device, args.concurrency, args.max_tokens, detokenize)
            us = r["cpu"] / r["tokens"] * 1e6
            print(f"| engine core steps, {name} | {r['tokens'] / r['wall']:.0f} | | | "
                  f"{us:.1f} | {us / ref_us:.2f}x | | | |")  # fmt: skip
        counts = [int(c) for c in args.api_servers.split(",")]
        runs = [(m, c) for m in args.modes.split(",") for c in counts if m != "off" or c == 1]
        for mode, count in runs:
            r = served(model, mode, args.device, args.concurrency, args.max_tokens,
                       shlex.split(args.server_args), count)  # fmt: skip
            n = r["tokens"]
            api, engine = r["api"] / n * 1e6, r["engine"] / n * 1e6
            engine_cell = f"{engine:.1f}" if mode != "off" else "(in the API process)"
            name = f"`--engine-process {mode}`" + (f", {count} API servers" if count > 1 else "")
            print(f"| server, {name} | {n / r['wall']:.0f} | {api:.1f} | "
                  f"{engine_cell} | {api + engine:.1f} | {(api + engine) / ref_us:.2f}x | "
                  f"{r['client'] / n * 1e6:.1f} | {n / r['chunks']:.2f} | "
                  f"{r['api'] / r['chunks'] * 1e6:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
