"""End-to-end serving latency and throughput of `python -m llmcore.http`, beside the
offline engine (`llmcore.LLM`) on the same prompts, in the same run.

Starts a real server subprocess (SmolLM2-135M-Instruct, float32, 1 GiB of KV cache)
and drives it with a small asyncio client over raw HTTP/1.1 (one keep-alive
connection per concurrent worker): streaming chat completions of ~100-token prompts,
`max_tokens` 64 with `ignore_eos` (so every request generates exactly 64 tokens),
temperature 0, at concurrency 1, 8 and 32. Per level: time to first token, inter-token
latency (between content chunks), end-to-end latency, and output tokens/s (generated
tokens / the level's wall time). Then the server is stopped (to free the cores) and
the same engine runs the level-32 prompts offline, all at once, through `LLM.chat`
(the median of --offline-repeats runs, each in a fresh `LLM`); the last column is the
32-concurrent server throughput over the offline one. Below the table: the offline
decode-step time (from a max_tokens=1 run of as many other prompts) to set beside the
server's inter-token latency, and the CPU the server and this client used per level.

Every prompt is distinct from its first user token, so no request finds another
level's prompt in the prefix cache.

    python tests/bench/bench_serving.py [--levels 1,8,32] [--requests-factor 2]
        [--min-requests 4] [--max-tokens 64] [--prompt-tokens 100] [--offline-repeats 2]

Side by side with llama.cpp (issue 19; tests/bench/serving_side_by_side.py says how):
llama.cpp's `llama-server` and/or llama-cpp-python's server, then llmcore's server
in each of --llmcore-variants, one at a time, on the same GGUF, with 128-token-id
completion prompts; the machine's ceilings (tests/bench/ceilings.py) first.

    python tests/bench/bench_serving.py --llama-server PATH [--llamacpp-python PYTHON]
        [--llmcore-variants "auto;--dtype float32;--dtype bfloat16"] [--rounds 3]
        [--levels 1,8,32] [--model FILE.gguf] [--no-ceilings] [--wait-idle SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

import llmcore
from llmcore.default_model import default_chat_model_path
from tests.bench import serving_side_by_side
from tests.bench.serving_client import LevelResult, ms, percentile, run_level
from tests.bench.serving_servers import Server, log_problems, start_llmcore, stop_server

WORDS = (
    "the river city night music code light winter garden stone letter morning ocean "
    "bridge story machine forest a of and to in is was for on with"
).split()
KV_CACHE = "1GiB"
SERVER_ARGS = f"--kv-cache-memory {KV_CACHE} --dtype float32".split()
CHAT_PATH = "/v1/chat/completions"


# ---- prompts ---------------------------------------------------------------------------


def make_prompts(
    tag: str, n: int, target: int, tokenizer: llmcore.Tokenizer, template: llmcore.ChatTemplate
) -> list[str]:
    """`n` user messages whose chat-rendered prompt is about `target` tokens, each
    distinct from its first words."""
    rng = random.Random(tag)
    prompts = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(target)]
        while True:
            text = f"Request {tag}-{i}: continue this story. " + " ".join(words)
            if prompt_length(text, tokenizer, template) <= target or len(words) <= 1:
                break
            words.pop()
        prompts.append(text)
    return prompts


def prompt_length(text: str, tokenizer: llmcore.Tokenizer, template: llmcore.ChatTemplate) -> int:
    rendered = template.render(
        [{"role": "user", "content": text}],
        add_generation_prompt=True,
        bos_token=tokenizer.bos_token or "",
        eos_token=tokenizer.eos_token or "",
    )
    return len(tokenizer.encode(rendered, add_special_tokens=False))


def request_body(server: Server, prompt: str, max_tokens: int) -> bytes:
    return json.dumps(
        {
            "model": server.name,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


def chat_level(
    server: Server, prompts: list[str], concurrency: int, max_tokens: int
) -> LevelResult:
    bodies = [request_body(server, p, max_tokens) for p in prompts]
    return asyncio.run(
        run_level(server.host, server.port, CHAT_PATH, bodies, concurrency, server.cpu_seconds)
    )


def level_row(level: LevelResult, offline_rate: float, last: bool) -> str:
    ttft, itl, e2e = level.ttfts(), level.itls(), level.e2es()
    ratio = f"{level.rate / offline_rate:.2f}x" if last else ""
    return (
        f"| server, concurrency {level.concurrency} ({len(level.requests)} requests) "
        f"| {ms(ttft, 50)} / {ms(ttft, 99)} | {ms(itl, 50)} / {ms(itl, 99)} "
        f"| {ms(e2e, 50)} / {ms(e2e, 99)} | {level.rate:.1f} | {ratio} |"
    )


# ---- offline ---------------------------------------------------------------------------


@dataclass(slots=True)
class Offline:
    seconds: list[float]  # each repeat's whole batch
    tokens: list[int]
    prompt_lengths: list[int]
    prefill: float  # seconds of the same batch shape with max_tokens=1 (other prompts)
    cpu: list[float] = field(default_factory=list)  # CPU seconds of each repeat's run

    @property
    def rate(self) -> float:
        """Median tokens/s over the repeats."""
        return percentile([t / s for t, s in zip(self.tokens, self.seconds, strict=True)], 50)


def run_offline(
    prompts: list[str], prefill_prompts: list[str], max_tokens: int, repeats: int
) -> Offline:
    """`LLM.chat` on all prompts at once, `repeats` times, each in a fresh `LLM` (so no
    repeat finds the prompts in the prefix cache); the first LLM also times a prefill
    of `prefill_prompts` (max_tokens=1) for the decode-step estimate."""
    params = llmcore.SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    result = Offline([], [], [], 0.0)
    for repeat in range(repeats):
        llm = llmcore.LLM(kv_cache_memory=1 << 30, dtype="float32")
        warm = llmcore.SamplingParams(temperature=0, max_tokens=4)
        llm.chat([{"role": "user", "content": "Warm-up: say hello."}], warm)
        if repeat == 0:
            one = llmcore.SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
            start = time.perf_counter()
            llm.chat([[{"role": "user", "content": p}] for p in prefill_prompts], one)
            result.prefill = time.perf_counter() - start
        cpu0, start = time.process_time(), time.perf_counter()
        outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
        result.seconds.append(time.perf_counter() - start)
        result.cpu.append(time.process_time() - cpu0)
        result.tokens.append(sum(len(c.token_ids) for out in outputs for c in out.outputs))
        result.prompt_lengths = [len(out.prompt_token_ids) for out in outputs]
        del llm
        gc.collect()
    return result


# ---- main ------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,8,32", help="comma-separated concurrencies")
    parser.add_argument(
        "--requests-factor",
        type=int,
        default=2,
        help="requests per level = factor x concurrency (at least --min-requests)",
    )
    parser.add_argument("--min-requests", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        help="prompt length: rendered chat (default 100), or token ids side by side (128)",
    )
    parser.add_argument("--offline-repeats", type=int, default=2, help="median of these runs")
    side = parser.add_argument_group(
        "side by side (tests/bench/serving_side_by_side.py; any of the first three selects it)"
    )
    side.add_argument("--llama-server", metavar="PATH", help="llama.cpp's llama-server binary")
    side.add_argument(
        "--llamacpp-python", metavar="PYTHON", help="a python with llama-cpp-python[server]"
    )
    side.add_argument(
        "--side-by-side", action="store_true", help="the completions protocol, llmcore alone"
    )
    side.add_argument(
        "--llmcore-variants",
        default="auto",
        help='";"-separated llmcore flag sets, one server each ("auto": as shipped), e.g. '
        '"auto;--dtype float32;--dtype bfloat16"',
    )
    side.add_argument("--rounds", type=int, default=3, help="figures are medians of these")
    side.add_argument("--model", type=Path, help="a GGUF (default: the embedded SmolLM2)")
    side.add_argument("--no-ceilings", action="store_true", help="skip tests/bench/ceilings.py")
    side.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each server, wait up to this long for 2 s with the machine <10%% busy",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    levels = [int(c) for c in args.levels.split(",")]
    print(
        f"machine: {os.cpu_count()} cpus ({platform.machine()}), python "
        f"{platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    print("command: python " + shlex.join(sys.argv))
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if args.llama_server or args.llamacpp_python or args.side_by_side:
        args.prompt_tokens = args.prompt_tokens or 128
        model = args.model or default_chat_model_path()
        serving_side_by_side.main(args, model, levels, KV_CACHE)
        print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        return
    args.prompt_tokens = args.prompt_tokens or 100
    print("server: python -m llmcore.http --port 0 " + shlex.join(SERVER_ARGS))
    t_begin = time.perf_counter()

    path = default_chat_model_path()
    tokenizer = llmcore.load_tokenizer(path)
    template = llmcore.ChatTemplate.resolve(path, gguf_template=tokenizer.chat_template)
    assert template is not None, "the default model has a chat template"
    counts = {c: max(args.min_requests, args.requests_factor * c) for c in levels}
    prompts = {
        c: make_prompts(f"c{c}", counts[c], args.prompt_tokens, tokenizer, template) for c in levels
    }
    top = max(levels)
    prefill_prompts = make_prompts("prefill", top, args.prompt_tokens, tokenizer, template)

    log_path = Path(tempfile.mkstemp(prefix="bench-serving-", suffix=".log")[1])
    t0 = time.perf_counter()
    server = start_llmcore(SERVER_ARGS, log_path)
    startup = time.perf_counter() - t0
    results: list[LevelResult] = []
    try:
        warm = [f"Warm-up {i}: say hello." for i in range(2)]
        chat_level(server, warm, 2, 4)
        for c in levels:
            results.append(chat_level(server, prompts[c], c, args.max_tokens))
    finally:
        code = stop_server(server)

    offline_prompts = prompts[top][:top]
    t1 = time.perf_counter()
    offline = run_offline(offline_prompts, prefill_prompts, args.max_tokens, args.offline_repeats)
    offline_total = time.perf_counter() - t1
    rate = offline.rate

    print(
        f"model: {server.name} (float32), KV cache {KV_CACHE}, max_tokens "
        f"{args.max_tokens} (ignore_eos), temperature 0, streaming chat completions; "
        f"engine defaults (max_num_seqs 256, max_num_batched_tokens 2048, prefix caching on)"
    )
    served_lengths = sorted({r.prompt_tokens for level in results for r in level.requests})
    print(
        f"prompt tokens (rendered): server {served_lengths[0]}-{served_lengths[-1]}, "
        f"offline {min(offline.prompt_lengths)}-{max(offline.prompt_lengths)}"
    )
    short = [
        (level.concurrency, r.completion_tokens)
        for level in results
        for r in level.requests
        if r.completion_tokens != args.max_tokens
    ]
    short += [(0, t) for t in offline.tokens if t != len(offline_prompts) * args.max_tokens]
    if short:
        print(f"WARNING: requests that did not generate {args.max_tokens} tokens: {short[:8]}")
    print()
    print(
        "| level | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | E2E p50 / p99 (ms) "
        "| output tokens/s | server / offline |"
    )
    print("|---|---|---|---|---|---|")
    for level in results:
        print(level_row(level, rate, level.concurrency == top))
    median_seconds = percentile(offline.seconds, 50)
    print(
        f"| offline `LLM.chat`, {len(offline_prompts)} prompts at once | | | "
        f"{median_seconds * 1000:.0f} (all) | {rate:.1f} | 1.00x |"
    )
    print()
    decode_step = (median_seconds - offline.prefill) / max(1, args.max_tokens - 1)
    print(
        f"offline: {len(offline.seconds)} runs of {', '.join(f'{s:.2f}' for s in offline.seconds)}"
        f" s (median used), CPU {sum(offline.cpu) / sum(offline.seconds):.0%} of one core;"
        f" prefill of {top} other prompts (max_tokens=1) {offline.prefill:.2f} s;"
        f" so a decode step of ~{decode_step * 1000:.0f} ms at batch {top}"
        + (
            " (not meaningful: the prefill took longer than a whole run)"
            if decode_step <= 0
            else ""
        )
    )
    print(
        "CPU during each level, server / client (% of one core): "
        + ", ".join(
            f"c{r.concurrency} {r.server_cpu / r.wall:.0%} / {r.client_cpu / r.wall:.0%}"
            for r in results
        )
    )
    print(
        f"server start-up {startup:.1f} s; levels {sum(r.wall for r in results):.1f} s "
        f"({', '.join(f'{r.wall:.1f}' for r in results)}); offline load + run "
        f"{offline_total:.1f} s; total {time.perf_counter() - t_begin:.1f} s"
    )
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    problems = log_problems(log_path)
    print(f"server exit code {code}; log {log_path}: {len(problems)} warning/error lines")
    for line in problems[:20]:
        print(f"    {line}")


if __name__ == "__main__":
    main()
