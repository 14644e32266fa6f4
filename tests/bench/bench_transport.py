"""Transport overhead: llmcore's h11 HTTP server beside uvicorn, both in front of the
same real `OpenAIService` over an engine that emits tokens instantly
(`InstantFakeEngine`, a test double), so the figures are the cost of the service's
SSE path plus the transport, with no model in the way.

Each server runs in its own subprocess (access logs off, a free port); this process
is the client: raw asyncio sockets, one keep-alive connection per worker. Phases per
server: 64 concurrent streaming `/v1/completions` requests (max_tokens 256) repeated
for a fixed duration, giving SSE data events/s (every `data:` event received, [DONE]
included, over the phase's wall time) and request latency; then 64 concurrent
non-streaming requests for a fixed duration, giving latency and requests/s. The
server's CPU time per streamed event (from /proc) is shown beside the rates, since
client and servers share the machine's cores.

uvicorn serves the service through `ServiceASGIApp`, a minimal ASGI adapter defined
here; uvicorn is a benchmark-only dependency (`pip install uvicorn`).

    python tests/bench/bench_transport.py [--concurrency 64] [--max-tokens 256]
        [--duration 10] [--nonstream-duration 5] [--uvicorn-http auto|h11|httptools]
        [--engine-yields]

With --engine-yields the fake engine gives the event loop one turn before each token,
as a consumer of a real engine's output queue does; without it a uvicorn handler can
write a whole stream in one pass of the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

import llmcore
from llmcore.default_model import default_chat_model_path
from tests.bench.serving_client import percentile
from tests.bench.serving_servers import log_problems

MODEL_NAME = "instant-fake"
MAX_MODEL_LEN = 1 << 20
TOKEN_TEXT = " hello"
PROMPT = "Tell me a long story about a river, a city and a machine."
READY = re.compile(rb"^PORT (\d+)$")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- the test double -------------------------------------------------------------------


class InstantFakeEngine:
    """A test double of llmcore's `Engine` protocol that runs no model: `generate`
    yields `params.max_tokens` deltas (16 when None) at once, each one
    `CompletionOutput` carrying one token (`token_id`, whose text is `text`), the last
    with finish_reason "length" and `finished=True`. It never awaits, so everything
    measured behind it is the service's and the transport's work. Only `n=1` is
    produced (choice index 0); `abort` ends a running request at its next delta with
    finish_reason "abort". With `yield_per_token` it gives the event loop one turn
    before each delta (`asyncio.sleep(0)`), as a consumer of a real engine's output
    queue does."""

    def __init__(self, token_id: int, text: str, *, yield_per_token: bool = False) -> None:
        self.token_id = token_id
        self.text = text
        self.yield_per_token = yield_per_token
        self._running: set[str] = set()
        self._aborted: set[str] = set()

    async def generate(
        self,
        prompt_token_ids: Sequence[int],
        params: llmcore.SamplingParams,
        request_id: str,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> AsyncIterator[llmcore.RequestOutput]:
        if request_id in self._running:
            raise llmcore.InvalidRequestError(f"request id {request_id!r} is already running")
        prompt = list(prompt_token_ids)
        count = params.max_tokens if params.max_tokens is not None else 16
        self._running.add(request_id)
        try:
            for step in range(count):
                if self.yield_per_token:
                    await asyncio.sleep(0)
                if request_id in self._aborted:
                    aborted = llmcore.CompletionOutput(0, "", [], finish_reason="abort")
                    yield llmcore.RequestOutput(request_id, prompt, [aborted], finished=True)
                    return
                last = step == count - 1
                output = llmcore.CompletionOutput(
                    0, self.text, [self.token_id], finish_reason="length" if last else None
                )
                yield llmcore.RequestOutput(request_id, prompt, [output], finished=last)
        finally:
            self._running.discard(request_id)
            self._aborted.discard(request_id)

    def abort(self, request_id: str) -> None:
        if request_id in self._running:
            self._aborted.add(request_id)

    async def check_health(self) -> None:
        return None

    def statistics(self) -> llmcore.EngineStatistics:
        return llmcore.EngineStatistics(0, 0, 0, 0, 0.0, 0, 0, 0, 0, 0, 0)

    async def aclose(self) -> None:
        return None


def build_service(yield_per_token: bool) -> llmcore.OpenAIService:
    path = default_chat_model_path()
    tokenizer = llmcore.load_tokenizer(path)
    template = llmcore.ChatTemplate.resolve(path, gguf_template=tokenizer.chat_template)
    token_id = tokenizer.encode(TOKEN_TEXT, add_special_tokens=False)[0]
    text = tokenizer.decode([token_id])
    engine = InstantFakeEngine(token_id, text, yield_per_token=yield_per_token)
    model = llmcore.ServedModel(MODEL_NAME, engine, tokenizer, template, MAX_MODEL_LEN)
    return llmcore.OpenAIService([model])


# ---- the ASGI adapter (for uvicorn) ----------------------------------------------------

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class ServiceASGIApp:
    """The OpenAI service as an ASGI 3 application: reads the whole body, builds a
    `ServiceRequest` (request id: a new uuid4 hex, as llmcore's transport makes),
    and sends a `ServiceResponse` in one message or a `ServiceStream`'s chunks as
    `http.response.body` messages with `more_body=True`, closing the stream (which
    aborts the engine request) on every path."""

    def __init__(self, service: llmcore.OpenAIService) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        request = llmcore.ServiceRequest(
            scope["method"], scope["path"], headers, body, uuid.uuid4().hex
        )
        answer = await self.service.handle(request)
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
        content_type = [(b"content-type", answer.content_type.encode("latin-1"))]
        if isinstance(answer, llmcore.ServiceStream):
            try:
                start = {"status": answer.status, "headers": content_type + _SSE_HEADERS + extra}
                await send({"type": "http.response.start", **start})
                async for chunk in answer.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                await answer.aclose()
            return
        length = [(b"content-length", str(len(answer.body)).encode())]
        start = {"status": answer.status, "headers": content_type + length + extra}
        await send({"type": "http.response.start", **start})
        await send({"type": "http.response.body", "body": answer.body})


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


# ---- the server subprocesses -----------------------------------------------------------


def announce(port: int) -> None:
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()


async def serve_llmcore(service: llmcore.OpenAIService) -> None:
    import anyio

    from transports.http import HTTPConfig, HTTPServer

    server = HTTPServer(service, HTTPConfig(host="127.0.0.1", port=0, access_log=False))
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            await server.start(tg)
            assert server.port is not None
            announce(server.port)
            async for _ in signals:
                await server.shutdown(1.0)
                break


def serve_uvicorn(service: llmcore.OpenAIService, http: str) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)  # connections wait in the backlog until uvicorn accepts them
    config = uvicorn.Config(
        ServiceASGIApp(service),
        log_level="warning",
        access_log=False,
        lifespan="off",
        http=http,
        loop="asyncio",
        backlog=1024,
    )
    server = uvicorn.Server(config)
    announce(sock.getsockname()[1])
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it shut down on
        pass


def child_main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    service = build_service(args.engine_yields)
    if args.serve == "llmcore":
        import anyio

        anyio.run(serve_llmcore, service, backend="asyncio")
    else:
        serve_uvicorn(service, args.uvicorn_http)


@dataclass(slots=True)
class Child:
    kind: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def start_child(kind: str, args: argparse.Namespace) -> Child:
    log_path = Path(tempfile.mkstemp(prefix=f"bench-transport-{kind}-", suffix=".log")[1])
    command = [sys.executable, __file__, "--serve", kind, "--uvicorn-http", args.uvicorn_http]
    if args.engine_yields:
        command.append("--engine-yields")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_path.open("wb"))
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    match = READY.match(line)
    if match is None:
        process.kill()
        raise RuntimeError(f"the {kind} server did not start ({line!r}): see {log_path}")
    return Child(kind, process, int(match.group(1)), log_path)


def stop_child(child: Child) -> int:
    child.process.send_signal(signal.SIGINT)
    try:
        return child.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        child.process.kill()
        return child.process.wait()


# ---- the client ------------------------------------------------------------------------


class HTTPError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass

    async def post(self, path: str, body: bytes) -> AsyncIterator[bytes]:
        """Send a POST and yield the response body's pieces (chunks, or the whole)."""
        head = (
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        lowered = raw.lower()
        if b"transfer-encoding: chunked" in lowered:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    break
                yield (await self.reader.readexactly(size + 2))[:-2]
        else:
            length = int(re.search(rb"content-length: *(\d+)", lowered).group(1))  # type: ignore[union-attr]
            piece = await self.reader.readexactly(length)
            if status != 200:
                raise HTTPError(f"HTTP {status}: {piece[:300]!r}")
            yield piece
        if status != 200:
            raise HTTPError(f"HTTP {status}")


@dataclass(slots=True)
class Phase:
    latencies: list[float] = field(default_factory=list)
    events: int = 0
    wall: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    bad: list[str] = field(default_factory=list)  # requests whose answer was not as expected


def completion_body(max_tokens: int, stream: bool) -> bytes:
    request = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": max_tokens, "stream": stream}
    return json.dumps(request).encode()


async def stream_once(conn: Connection, body: bytes, max_tokens: int, phase: Phase) -> None:
    start = time.perf_counter()
    events, tail = 0, b""
    async for piece in conn.post("/v1/completions", body):
        tail += piece
        found = tail.count(b"\n\n")
        if found:
            events += found
            tail = tail[tail.rindex(b"\n\n") + 2 :]
    phase.latencies.append(time.perf_counter() - start)
    phase.events += events
    if events != max_tokens + 1:  # one per token, then [DONE]
        phase.bad.append(f"{events} events")


async def complete_once(conn: Connection, body: bytes, max_tokens: int, phase: Phase) -> None:
    start = time.perf_counter()
    data = b"".join([piece async for piece in conn.post("/v1/completions", body)])
    phase.latencies.append(time.perf_counter() - start)
    answer = json.loads(data)
    if answer["usage"]["completion_tokens"] != max_tokens:
        phase.bad.append(f"usage {answer['usage']}")


Once = Callable[[Connection, bytes, int, Phase], Awaitable[None]]


async def run_phase(
    child: Child, once: Once, body: bytes, concurrency: int, max_tokens: int, duration: float
) -> Phase:
    phase = Phase()
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        conn = await Connection.open(child.port)
        try:
            while time.perf_counter() < deadline:
                await once(conn, body, max_tokens, phase)
        finally:
            await conn.close()

    cpu0, client0, start = child.cpu_seconds(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.wall = time.perf_counter() - start
    phase.server_cpu = child.cpu_seconds() - cpu0
    phase.client_cpu = time.process_time() - client0
    return phase


@dataclass(slots=True)
class ServerResult:
    kind: str
    label: str
    streaming: Phase
    plain: Phase
    exit_code: int
    problems: list[str]


async def bench_server(child: Child, args: argparse.Namespace) -> tuple[Phase, Phase]:
    stream_body = completion_body(args.max_tokens, True)
    plain_body = completion_body(args.max_tokens, False)
    c, n = args.concurrency, args.max_tokens
    await run_phase(child, stream_once, stream_body, c, n, 0.5)  # warm-up
    streaming = await run_phase(child, stream_once, stream_body, c, n, args.duration)
    await run_phase(child, complete_once, plain_body, c, n, 0.2)  # warm-up
    plain = await run_phase(child, complete_once, plain_body, c, n, args.nonstream_duration)
    return streaming, plain


def uvicorn_label(http: str) -> str:
    import importlib.metadata
    import importlib.util

    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn {importlib.metadata.version('uvicorn')} ({http}, asyncio loop) + ASGI adapter"


# ---- statistics and the table ----------------------------------------------------------


def row(result: ServerResult, reference: ServerResult) -> str:
    s, p = result.streaming, result.plain
    rate, ref_rate = s.events / s.wall, reference.streaming.events / reference.streaming.wall
    cpu_per_event = s.server_cpu / s.events * 1e6 if s.events else float("nan")
    return (
        f"| {result.label} | {rate:,.0f} | {rate / ref_rate:.2f}x "
        f"| {percentile(s.latencies, 50) * 1000:.0f} / {percentile(s.latencies, 99) * 1000:.0f} "
        f"| {cpu_per_event:.0f} | {s.server_cpu / s.wall:.0%} / {s.client_cpu / s.wall:.0%} "
        f"| {percentile(p.latencies, 50) * 1000:.1f} / {percentile(p.latencies, 99) * 1000:.1f} "
        f"| {len(p.latencies) / p.wall:,.0f} |"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--duration", type=float, default=10.0, help="streaming phase seconds")
    parser.add_argument("--nonstream-duration", type=float, default=5.0)
    parser.add_argument("--uvicorn-http", default="auto", choices=["auto", "h11", "httptools"])
    parser.add_argument(
        "--engine-yields",
        action="store_true",
        help="the fake engine gives the event loop a turn before each token",
    )
    parser.add_argument("--serve", choices=["llmcore", "uvicorn"], help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.serve:
        child_main(args)
        return
    print(
        f"machine: {os.cpu_count()} cpus ({platform.machine()}), python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )
    print("command: python " + shlex.join(sys.argv))
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    t_begin = time.perf_counter()
    results = []
    for kind in ("llmcore", "uvicorn"):
        child = start_child(kind, args)
        try:
            streaming, plain = asyncio.run(bench_server(child, args))
        finally:
            code = stop_child(child)
        label = "llmcore h11 transport" if kind == "llmcore" else uvicorn_label(args.uvicorn_http)
        results.append(
            ServerResult(kind, label, streaming, plain, code, log_problems(child.log_path))
        )
    llm, uvi = results

    print(
        f"engine: InstantFakeEngine (no model{', yields per token' if args.engine_yields else ''}) "
        f"behind OpenAIService; {args.concurrency} "
        f"concurrent keep-alive connections; /v1/completions, max_tokens {args.max_tokens}; "
        f"streaming {args.duration:.0f} s, non-streaming {args.nonstream_duration:.0f} s per server"
    )
    print()
    print(
        "| server | SSE events/s | vs uvicorn | stream latency p50 / p99 (ms) "
        "| server CPU µs/event | CPU server / client | non-stream latency p50 / p99 (ms) "
        "| non-stream req/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        print(row(result, uvi))
    print()
    ratio = (llm.streaming.events / llm.streaming.wall) / (
        uvi.streaming.events / uvi.streaming.wall
    )
    print(f"llmcore / uvicorn SSE events/s: {ratio:.2f}x (goal >= 1.5x)")
    print(
        f"total {time.perf_counter() - t_begin:.1f} s; load average after: "
        "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    )
    for result in results:
        s, p = result.streaming, result.plain
        print(
            f"{result.kind}: {len(s.latencies)} streams ({s.events} events) in {s.wall:.1f} s, "
            f"{len(p.latencies)} non-streaming in {p.wall:.1f} s; exit code {result.exit_code}; "
            f"{len(result.problems)} warning/error log lines"
        )
        for bad in (s.bad + p.bad)[:5]:
            print(f"    unexpected answer: {bad}")
        for line in result.problems[:10]:
            print(f"    {line}")


if __name__ == "__main__":
    main()
