"""llmcore's server beside llama.cpp's, in one run (issue 19, "CPU speed").

Every contender serves the same GGUF and gets the same requests from the same client
(tests/bench/serving_client.py): streaming `/v1/completions` whose prompt is a list of
token ids (`--prompt-tokens`, 128 by default; the server's `usage.prompt_tokens` must
say so), `max_tokens` 64 with EOS suppressed and temperature 0, at each concurrency of
`--levels` (1, 8, 32). A request that comes back with fewer output tokens stops the
run. One server runs at a time (each is started, driven through every level, measured
and stopped); a round runs every contender once, in an order rotated each round, and
each figure is the median over `--rounds` rounds (3). Every prompt of every round is
distinct from its first token, so no server finds one in its prefix cache.

EOS: llmcore and `llama-server` take `ignore_eos`; llama-cpp-python's server does not,
so its end-of-generation tokens get a logit bias of -1e9 (and its default repeat
penalty of 1.1 is set to 1.0). llama-cpp-python's server also takes no token-id
prompts and streams no usage: it gets the prompts' text (checked to tokenize to the
same ids through its `/extras/tokenize`), and its output tokens are counted as
stream chunks (one per token).

Before the servers: the machine's ceilings (tests/bench/ceilings.py). After: per
contender and level, output tokens/s, TTFT p50, ITL p50 (between content chunks),
E2E p50, the server's CPU and the CPU other processes took meanwhile (% of one core:
on a shared machine, what makes a row *contended*), and the weight bytes a decode
step must stream (the weights the server holds: llama.cpp the GGUF's tensors,
llmcore what its loaded model holds in the variant's dtype) over the ITL p50, that
is decode tokens/s per sequence x concurrency x (weight bytes / concurrency) per
token, against the measured read bandwidth; and each server's resident memory (RSS
of the server process tree after the last level, and its high-water mark).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import llmcore
from tests.bench.ceilings import Ceilings, measure
from tests.bench.serving_client import LevelResult, machine_busy_seconds, percentile, run_level
from tests.bench.serving_servers import (
    Server,
    free_port,
    llama_server_command,
    llamacpp_python_command,
    log_problems,
    start_foreign,
    start_llmcore,
    stop_server,
)

WORDS = (
    "the river city night music code light winter garden stone letter morning ocean "
    "bridge story machine forest a of and to in is was for on with"
).split()
COMPLETIONS = "/v1/completions"
# Tokens llama.cpp ends a generation on, when the vocabulary has them.
EOG_NAMES = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end|>", "</s>", "<end_of_turn>")


@dataclass(slots=True)
class Contender:
    label: str
    start: Callable[[Path], Server]  # log path -> a started server
    weight_bytes: int  # what a decode step streams: the weights the server holds
    weights_how: str
    eos_fields: dict[str, Any]  # request fields that suppress end-of-generation
    text_prompts: bool = False  # send text (llama-cpp-python's server takes no ids)


@dataclass(slots=True)
class Round:
    levels: dict[int, LevelResult]
    rss: int
    peak_rss: int
    startup: float
    exit_code: int
    problems: list[str]


@dataclass(slots=True)
class Results:
    rounds: dict[str, list[Round]] = field(default_factory=dict)  # contender label -> rounds


# ---- prompts ---------------------------------------------------------------------------


def make_prompts(tokenizer: llmcore.Tokenizer, tag: str, n: int, length: int) -> list[list[int]]:
    """`n` prompts of exactly `length` token ids, each distinct from its first token
    and each the encoding of its own decoded text (so a text-only server gets the
    same ids)."""
    rng = random.Random(tag)
    prompts: list[list[int]] = []
    index = 0
    while len(prompts) < n:
        text = f"{tag}.{index}: " + " ".join(rng.choice(WORDS) for _ in range(length))
        index += 1
        ids = tokenizer.encode(text, add_special_tokens=False)[:length]
        if tokenizer.encode(tokenizer.decode(ids), add_special_tokens=False) == ids:
            prompts.append(ids)
    return prompts


def eog_ids(tokenizer: llmcore.Tokenizer) -> list[int]:
    found = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for name in EOG_NAMES:
        ids = tokenizer.encode(name, add_special_tokens=False)
        if len(ids) == 1 and tokenizer.id_to_token(ids[0]) == name:
            found.add(ids[0])
    return sorted(found)


# ---- contenders ------------------------------------------------------------------------


def held_tensor_bytes(root: object) -> dict[str, int]:
    """Bytes of the tensors (and numpy arrays) reachable from `root` through llmcore's,
    plugins' and ops' objects, lists, tuples and dicts, each storage once; by dtype."""
    by_dtype: dict[str, int] = {}
    seen_objects: set[int] = set()
    seen_storages: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen_objects:
            continue
        seen_objects.add(id(obj))
        if isinstance(obj, torch.Tensor | np.ndarray):
            if isinstance(obj, torch.Tensor):
                storage = obj.untyped_storage()
                key, size, dtype = storage.data_ptr(), storage.nbytes(), str(obj.dtype)
            else:
                key, size, dtype = obj.__array_interface__["data"][0], obj.nbytes, str(obj.dtype)
            if size and key not in seen_storages:
                seen_storages.add(key)
                name = dtype.removeprefix("torch.")
                by_dtype[name] = by_dtype.get(name, 0) + size
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple):
            stack.extend(obj)
        elif type(obj).__module__.split(".")[0] in ("llmcore", "plugins", "ops"):
            stack.extend(vars(obj).values() if hasattr(obj, "__dict__") else ())
            for klass in type(obj).__mro__:
                for name in getattr(klass, "__slots__", ()):
                    stack.append(getattr(obj, name, None))
    return by_dtype


def describe_bytes(by_dtype: dict[str, int]) -> str:
    total = sum(by_dtype.values())
    parts = [f"{k} {v / 1e6:.0f}" for k, v in sorted(by_dtype.items(), key=lambda kv: -kv[1])]
    return f"{total / 1e6:.1f} MB ({', '.join(p for p in parts if not p.endswith(' 0'))} MB)"


def llmcore_contender(model: Path, variant: str, kv_cache: str) -> Contender:
    """`python -m llmcore.http MODEL --kv-cache-memory KV VARIANT...`; its weight bytes
    from loading the same model here with the variant's --dtype and --quantization."""
    extra = [] if variant.strip() in ("", "auto") else shlex.split(variant)
    dtype = extra[extra.index("--dtype") + 1] if "--dtype" in extra else "auto"
    quant = extra[extra.index("--quantization") + 1] if "--quantization" in extra else None
    loaded = llmcore.load_model(model, dtype=dtype, quantization=quant)
    by_dtype = held_tensor_bytes(loaded.model)
    del loaded
    args = [str(model), "--kv-cache-memory", kv_cache, *extra]
    return Contender(
        label="llmcore " + shlex.join(extra if "--dtype" in extra else ["--dtype", "auto", *extra]),
        start=lambda log: start_llmcore(args, log),
        weight_bytes=sum(by_dtype.values()),
        weights_how=f"held by the loaded model: {describe_bytes(by_dtype)}",
        eos_fields={"ignore_eos": True},
    )


def gguf_bytes(model: Path) -> dict[str, int]:
    import gguf

    by_type: dict[str, int] = {}
    for tensor in gguf.GGUFReader(model).tensors:
        name = tensor.tensor_type.name
        by_type[name] = by_type.get(name, 0) + int(tensor.n_bytes)
    return by_type


def llama_server_contender(binary: str, model: Path, n_ctx: int, slots: int) -> Contender:
    def start(log: Path) -> Server:
        port = free_port()
        return start_foreign(llama_server_command(binary, model, port, n_ctx, slots), port, log)

    by_type = gguf_bytes(model)
    return Contender(
        label=f"llama.cpp llama-server (--parallel {slots})",
        start=start,
        weight_bytes=sum(by_type.values()),
        weights_how=f"the GGUF's tensors: {describe_bytes(by_type)}",
        eos_fields={"ignore_eos": True},
    )


def llamacpp_python_contender(python: str, model: Path, n_ctx: int, eog: list[int]) -> Contender:
    def start(log: Path) -> Server:
        port = free_port()
        return start_foreign(llamacpp_python_command(python, model, port, n_ctx), port, log)

    by_type = gguf_bytes(model)
    return Contender(
        label="llama-cpp-python server (one sequence at a time)",
        start=start,
        weight_bytes=sum(by_type.values()),
        weights_how=f"the GGUF's tensors: {describe_bytes(by_type)}",
        eos_fields={"logit_bias": {str(t): -1e9 for t in eog}, "repeat_penalty": 1.0},
        text_prompts=True,
    )


# ---- one round of one contender --------------------------------------------------------


def request_body(
    server: Server, contender: Contender, prompt: list[int], text: str, max_tokens: int
) -> bytes:
    request = {
        "model": server.name,
        "prompt": text if contender.text_prompts else prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **contender.eos_fields,
    }
    return json.dumps(request).encode()


def check_level(level: LevelResult, prompts: list[list[int]], max_tokens: int, who: str) -> None:
    """Every request generated `max_tokens` tokens from its whole prompt, or the run
    stops here."""
    for result, prompt in zip(level.requests, prompts, strict=True):
        if result.completion_tokens < 0:  # no usage in the stream: one chunk per token
            result.completion_tokens = result.chunks
        elif result.prompt_tokens != len(prompt):
            raise SystemExit(
                f"{who}, concurrency {level.concurrency}: usage says "
                f"{result.prompt_tokens} prompt tokens, {len(prompt)} were sent"
            )
        if result.completion_tokens != max_tokens:
            raise SystemExit(
                f"{who}, concurrency {level.concurrency}: a request returned "
                f"{result.completion_tokens} output tokens instead of {max_tokens}"
            )


def check_text_prompts(server: Server, prompts: list[list[int]], texts: list[str]) -> None:
    for ids, text in zip(prompts, texts, strict=True):
        answer = server.post_json("/extras/tokenize", {"input": text})
        assert isinstance(answer, dict)
        if answer["tokens"] != ids:
            raise SystemExit(f"the server tokenizes a prompt differently: {text[:60]!r}")


def run_round(
    contender: Contender,
    prompts: dict[int, list[list[int]]],
    warm: list[list[int]],
    tokenizer: llmcore.Tokenizer,
    max_tokens: int,
    log_path: Path,
) -> Round:
    t0 = time.perf_counter()
    server = contender.start(log_path)
    startup = time.perf_counter() - t0
    levels: dict[int, LevelResult] = {}

    def drive(ids: list[list[int]], concurrency: int, tokens: int) -> LevelResult:
        texts = [tokenizer.decode(p) for p in ids]
        if contender.text_prompts:
            check_text_prompts(server, ids, texts)
        bodies = [
            request_body(server, contender, p, t, tokens) for p, t in zip(ids, texts, strict=True)
        ]
        cpu = server.cpu_seconds
        return asyncio.run(
            run_level(server.host, server.port, COMPLETIONS, bodies, concurrency, cpu)
        )

    try:
        drive(warm, len(warm), 8)  # the shapes of the run, once
        for concurrency, ids in prompts.items():
            level = drive(ids, concurrency, max_tokens)
            check_level(level, ids, max_tokens, contender.label)
            levels[concurrency] = level
        rss, peak = server.rss_bytes(), server.peak_rss_bytes()
    finally:
        code = stop_server(server)
    return Round(levels, rss, peak, startup, code, log_problems(log_path))


# ---- the run and its tables ------------------------------------------------------------


def run(
    contenders: list[Contender],
    tokenizer: llmcore.Tokenizer,
    args: argparse.Namespace,
    levels: list[int],
) -> Results:
    results = Results({c.label: [] for c in contenders})
    log_dir = Path(tempfile.mkdtemp(prefix="bench-side-by-side-"))
    print(f"server logs: {log_dir}")
    for number in range(args.rounds):
        prompts = {
            c: make_prompts(
                tokenizer,
                f"r{number}c{c}",
                max(args.min_requests, args.requests_factor * c),
                args.prompt_tokens,
            )
            for c in levels
        }
        warm = make_prompts(tokenizer, f"warm{number}", 2, args.prompt_tokens)
        shift = number % len(contenders)
        for index, contender in enumerate(contenders[shift:] + contenders[:shift]):
            if args.wait_idle > 0:
                waited, busy = wait_idle(args.wait_idle)
                print(f"waited {waited:.0f} s for an idle machine ({busy:.0%} busy)", flush=True)
            log_path = log_dir / f"round{number}-{index}.log"
            one = run_round(contender, prompts, warm, tokenizer, args.max_tokens, log_path)
            results.rounds[contender.label].append(one)
            rates = ", ".join(f"c{c} {lv.rate:.1f}" for c, lv in one.levels.items())
            print(f"round {number + 1}, {contender.label}: tok/s {rates}", flush=True)
    return results


def wait_idle(limit: float, window: float = 2.0, most_busy: float = 0.1) -> tuple[float, float]:
    """Wait until `window` seconds find the machine's cores at most `most_busy` busy,
    or `limit` seconds have passed; returns (seconds waited, the last share busy)."""
    start, cores = time.monotonic(), os.cpu_count() or 1
    while True:
        before = machine_busy_seconds()
        time.sleep(window)
        busy = (machine_busy_seconds() - before) / (window * cores)
        if busy <= most_busy or time.monotonic() - start >= limit:
            return time.monotonic() - start, busy


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_tables(
    contenders: list[Contender], results: Results, ceilings: Ceilings | None, levels: list[int]
) -> None:
    bandwidth = ceilings.bandwidth if ceilings else float("nan")
    print(
        "\n| server | concurrency | output tok/s (median; each round) | TTFT p50 (ms) "
        "| ITL p50 (ms) | E2E p50 (ms) | server CPU | others' CPU "
        "| weights streamed: GB/s, of bandwidth |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for contender in contenders:
        rounds = results.rounds[contender.label]
        for c in levels:
            got = [r.levels[c] for r in rounds]
            rates = [lv.rate for lv in got]
            itl = median([percentile(lv.itls(), 50) for lv in got])
            streamed = contender.weight_bytes / itl
            print(
                f"| {contender.label} | {c} | **{median(rates):.1f}** "
                f"({' / '.join(f'{x:.1f}' for x in rates)}) "
                f"| {median([percentile(lv.ttfts(), 50) for lv in got]) * 1000:.0f} "
                f"| {itl * 1000:.1f} "
                f"| {median([percentile(lv.e2es(), 50) for lv in got]) * 1000:.0f} "
                f"| {median([lv.server_cpu / lv.wall for lv in got]):.0%} "
                f"| {median([lv.others_cpu / lv.wall for lv in got]):.0%} "
                f"| {streamed / 1e9:.1f}, {streamed / bandwidth:.2f} |"
            )
    print(
        "\n| server | weights a decode step streams | RSS after the run (MiB) "
        "| peak RSS (MiB) | start-up (s) |"
    )
    print("|---|---|---:|---:|---:|")
    for contender in contenders:
        rounds = results.rounds[contender.label]
        print(
            f"| {contender.label} | {contender.weights_how} "
            f"| {median([r.rss / 2**20 for r in rounds]):.0f} "
            f"| {max(r.peak_rss for r in rounds) / 2**20:.0f} "
            f"| {median([r.startup for r in rounds]):.1f} |"
        )
    for contender in contenders:
        rounds = results.rounds[contender.label]
        codes = sorted({r.exit_code for r in rounds})
        problems = [line for r in rounds for line in r.problems]
        print(f"{contender.label}: exit codes {codes}, {len(problems)} warning/error log lines")
        for line in problems[:5]:
            print(f"    {line[:200]}")


def versions(args: argparse.Namespace) -> list[str]:
    found = []
    if args.llama_server:
        out = subprocess.run([args.llama_server, "--version"], capture_output=True, text=True)
        found.append(f"{args.llama_server}: " + " ".join((out.stdout + out.stderr).split()))
    if args.llamacpp_python:
        code = "import llama_cpp; print(llama_cpp.__version__)"
        out = subprocess.run([args.llamacpp_python, "-c", code], capture_output=True, text=True)
        found.append(f"llama-cpp-python {out.stdout.strip()} ({args.llamacpp_python})")
    return found


def main(args: argparse.Namespace, model: Path, levels: list[int], kv_cache: str) -> None:
    tokenizer = llmcore.load_tokenizer(model)
    for line in versions(args):
        print(line)
    ceilings = None
    if not args.no_ceilings:
        if args.wait_idle > 0:
            waited, busy = wait_idle(args.wait_idle)
            print(f"waited {waited:.0f} s for an idle machine ({busy:.0%} busy)")
        ceilings = measure()
        print("\n" + "\n".join(ceilings.lines()) + "\n")
    slots = max(levels)
    per_sequence = args.prompt_tokens + args.max_tokens + 64
    contenders = []
    if args.llama_server:
        contenders.append(
            llama_server_contender(args.llama_server, model, slots * per_sequence, slots)
        )
    if args.llamacpp_python:
        contenders.append(
            llamacpp_python_contender(args.llamacpp_python, model, per_sequence, eog_ids(tokenizer))
        )
    for variant in args.llmcore_variants.split(";"):
        contenders.append(llmcore_contender(model, variant, kv_cache))
    print(
        f"model: {model.name}; completions with {args.prompt_tokens} prompt token ids, "
        f"{args.max_tokens} output tokens (EOS suppressed), temperature 0, streaming; "
        f"levels {levels}, requests per level max({args.min_requests}, "
        f"{args.requests_factor} x concurrency); median of {args.rounds} rounds"
    )
    t0 = time.perf_counter()
    results = run(contenders, tokenizer, args, levels)
    print_tables(contenders, results, ceilings, levels)
    print(f"servers: {time.perf_counter() - t0:.0f} s")
