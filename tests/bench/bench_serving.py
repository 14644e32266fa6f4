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
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

import llmcore
from llmcore.default_model import default_chat_model_path

WORDS = (
    "the river city night music code light winter garden stone letter morning ocean "
    "bridge story machine forest a of and to in is was for on with"
).split()
KV_CACHE = "1GiB"
SERVER_ARGS = f"-m llmcore.http --port 0 --kv-cache-memory {KV_CACHE} --dtype float32".split()
# "llmcore serving NAME[, NAME...] at URL": the chat model is named first.
READY = re.compile(r"llmcore serving ([^,\s]+)\S*(?:, \S+)* at (http://\S+)")
STARTUP_TIMEOUT = 300.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- a minimal HTTP/1.1 client over asyncio streams ------------------------------------


class HTTPError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection; `post_sse` yields (arrival time, event)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass

    async def post_sse(
        self, host: str, path: str, body: bytes
    ) -> AsyncIterator[tuple[float, bytes]]:
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"accept: text/event-stream\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status, headers = await self._head()
        buffer = b""
        async for piece in self._body(headers):
            now = time.perf_counter()
            if status != 200:
                raise HTTPError(f"HTTP {status}: {piece[:300]!r}")
            buffer += piece
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                yield now, event

    async def _head(self) -> tuple[int, dict[str, str]]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def _body(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    return
                yield (await self.reader.readexactly(size + 2))[:-2]
        elif "content-length" in headers:
            yield await self.reader.readexactly(int(headers["content-length"]))
        else:
            yield await self.reader.read()


# ---- the server subprocess -------------------------------------------------------------


@dataclass(slots=True)
class Server:
    process: subprocess.Popen[bytes]
    log_path: Path
    name: str
    host: str
    port: int

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (from /proc)."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / CLK_TCK


def start_server(log_path: Path) -> Server:
    command = [sys.executable, *SERVER_ARGS]
    log = log_path.open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        match = READY.search(log_path.read_text(errors="replace"))
        if match:
            host_port = match.group(2).removeprefix("http://")
            host, _, port = host_port.rpartition(":")
            return Server(process, log_path, match.group(1), host, int(port))
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}): see {log_path}")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the server did not start in {STARTUP_TIMEOUT:.0f} s: see {log_path}")


def stop_server(server: Server) -> int:
    server.process.send_signal(signal.SIGINT)
    try:
        return server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        return server.process.wait()


def log_problems(log_path: Path) -> list[str]:
    problems = []
    for line in log_path.read_text(errors="replace").splitlines():
        if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback|Exception", line):
            problems.append(line)
    return problems


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


# ---- one level -------------------------------------------------------------------------


@dataclass(slots=True)
class RequestResult:
    start: float
    token_times: list[float] = field(default_factory=list)  # arrivals of content chunks
    end: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class LevelResult:
    concurrency: int
    requests: list[RequestResult]
    wall: float
    server_cpu: float  # seconds
    client_cpu: float

    @property
    def tokens(self) -> int:
        return sum(r.completion_tokens for r in self.requests)


async def one_request(conn: Connection, server: Server, body: bytes) -> RequestResult:
    result = RequestResult(time.perf_counter())
    async for now, event in conn.post_sse(server.host, "/v1/chat/completions", body):
        if not event.startswith(b"data: "):
            continue
        data = event[6:]
        if data == b"[DONE]":
            continue  # the body's end follows
        chunk = json.loads(data)
        if "error" in chunk:
            raise HTTPError(f"error event: {chunk['error']}")
        for choice in chunk.get("choices", ()):
            if choice.get("delta", {}).get("content"):
                result.token_times.append(now)
        if chunk.get("usage"):
            result.prompt_tokens = chunk["usage"]["prompt_tokens"]
            result.completion_tokens = chunk["usage"]["completion_tokens"]
    result.end = time.perf_counter()
    return result


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


async def run_level(
    server: Server, prompts: list[str], concurrency: int, max_tokens: int
) -> LevelResult:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    results: list[RequestResult] = []

    async def worker() -> None:
        conn = await Connection.open(server.host, server.port)
        try:
            while not queue.empty():
                prompt = queue.get_nowait()
                results.append(
                    await one_request(conn, server, request_body(server, prompt, max_tokens))
                )
        finally:
            await conn.close()

    cpu0, client0, start = server.cpu_seconds(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    server_cpu, client_cpu = server.cpu_seconds() - cpu0, time.process_time() - client0
    return LevelResult(concurrency, results, wall, server_cpu, client_cpu)


# ---- statistics and the table ----------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.0f}"


def level_row(level: LevelResult, offline_rate: float, last: bool) -> str:
    ttft = [r.token_times[0] - r.start for r in level.requests if r.token_times]
    itl = [b - a for r in level.requests for a, b in pairwise(r.token_times)]
    e2e = [r.end - r.start for r in level.requests]
    rate = level.tokens / level.wall
    ratio = f"{rate / offline_rate:.2f}x" if last else ""
    return (
        f"| server, concurrency {level.concurrency} ({len(level.requests)} requests) "
        f"| {ms(ttft, 50)} / {ms(ttft, 99)} | {ms(itl, 50)} / {ms(itl, 99)} "
        f"| {ms(e2e, 50)} / {ms(e2e, 99)} | {rate:.1f} | {ratio} |"
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
    parser.add_argument("--prompt-tokens", type=int, default=100, help="rendered prompt length")
    parser.add_argument("--offline-repeats", type=int, default=2, help="median of these runs")
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
    print("server: python " + shlex.join(SERVER_ARGS))
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
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
    server = start_server(log_path)
    startup = time.perf_counter() - t0
    results: list[LevelResult] = []
    try:
        warm = [f"Warm-up {i}: say hello." for i in range(2)]
        asyncio.run(run_level(server, warm, 2, 4))
        for c in levels:
            results.append(asyncio.run(run_level(server, prompts[c], c, args.max_tokens)))
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
