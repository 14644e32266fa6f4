"""The client side of the serving benchmarks: a minimal HTTP/1.1 client over asyncio
streams (one keep-alive connection per concurrent worker) that posts streaming
OpenAI requests and times every content chunk, and the percentiles of the tables.

It speaks to any OpenAI-compatible server (llmcore, llama.cpp's `llama-server`,
llama-cpp-python's server): a chunk counts as a token arrival when it carries chat
`delta.content` or completion `text`; the token counts come from the `usage` of the
last chunk (`stream_options.include_usage`); a server that sends none
(llama-cpp-python's) leaves them at -1 and the caller decides what to count.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from itertools import pairwise

CLK_TCK = os.sysconf("SC_CLK_TCK")


class HTTPError(Exception):
    pass


class StaleConnection(Exception):
    """A kept-alive connection the server had closed: it answered nothing at all.
    (llama-server closes after each streamed response without saying so.)"""


class Connection:
    """One keep-alive HTTP/1.1 connection; `post_sse` yields (arrival time, event)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.closing = False  # the last response said `connection: close`
        self.answered = 0  # responses read on this connection

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
        try:
            status, headers = await self._head()
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if self.answered and not getattr(exc, "partial", b""):
                raise StaleConnection from exc
            raise
        self.answered += 1
        self.closing = headers.get("connection", "").lower() == "close"
        buffer = b""
        async for piece in self._body(headers):
            now = time.perf_counter()
            if status != 200:
                raise HTTPError(f"HTTP {status}: {piece[:300]!r}")
            buffer = (buffer + piece).replace(b"\r\n", b"\n")  # sse-starlette ends lines with CRLF
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                yield now, event
        if buffer.strip():
            yield time.perf_counter(), buffer

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
            while piece := await self.reader.read(1 << 16):
                yield piece


@dataclass(slots=True)
class RequestResult:
    start: float
    token_times: list[float] = field(default_factory=list)  # arrivals of content chunks
    end: float = 0.0
    prompt_tokens: int = -1  # -1: the server sent no usage
    completion_tokens: int = -1
    chunks: int = 0  # choice chunks that did not finish the choice (one per token, mostly)

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.start if self.token_times else None


@dataclass(slots=True)
class LevelResult:
    concurrency: int
    requests: list[RequestResult]
    wall: float
    server_cpu: float  # seconds
    client_cpu: float
    machine_cpu: float = 0.0  # busy CPU seconds of the whole machine (all processes)

    @property
    def others_cpu(self) -> float:
        """CPU seconds that neither the server nor this client used: other jobs on a
        shared machine (what makes a figure *contended*)."""
        return max(0.0, self.machine_cpu - self.server_cpu - self.client_cpu)

    @property
    def tokens(self) -> int:
        return sum(max(0, r.completion_tokens) for r in self.requests)

    @property
    def rate(self) -> float:
        """Output tokens/s: generated tokens over the level's wall time."""
        return self.tokens / self.wall

    def ttfts(self) -> list[float]:
        return [t for r in self.requests if (t := r.ttft) is not None]

    def itls(self) -> list[float]:
        return [b - a for r in self.requests for a, b in pairwise(r.token_times)]

    def e2es(self) -> list[float]:
        return [r.end - r.start for r in self.requests]


async def one_request(conn: Connection, host: str, path: str, body: bytes) -> RequestResult:
    result = RequestResult(time.perf_counter())
    async for now, event in conn.post_sse(host, path, body):
        if not event.startswith(b"data:"):
            continue
        data = event[5:].strip()
        if data == b"[DONE]":
            continue  # the body's end follows
        chunk = json.loads(data)
        if "error" in chunk:
            raise HTTPError(f"error event: {chunk['error']}")
        for choice in chunk.get("choices") or ():
            result.chunks += choice.get("finish_reason") is None
            if choice.get("text") or (choice.get("delta") or {}).get("content"):
                result.token_times.append(now)
        if chunk.get("usage"):
            result.prompt_tokens = chunk["usage"]["prompt_tokens"]
            result.completion_tokens = chunk["usage"]["completion_tokens"]
    result.end = time.perf_counter()
    return result


async def run_level(
    host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    concurrency: int,
    server_cpu_seconds: Callable[[], float],
) -> LevelResult:
    """Post every body (`concurrency` at a time, each worker on its own keep-alive
    connection, opened again where the server closed it after a response) and time
    them; results come back in the order of `bodies`."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(bodies)):
        queue.put_nowait(index)
    results: dict[int, RequestResult] = {}

    async def worker() -> None:
        conn = await Connection.open(host, port)
        try:
            while not queue.empty():
                index = queue.get_nowait()
                if conn.closing:
                    await conn.close()
                    conn = await Connection.open(host, port)
                try:
                    results[index] = await one_request(conn, host, path, bodies[index])
                except StaleConnection:
                    await conn.close()
                    conn = await Connection.open(host, port)
                    results[index] = await one_request(conn, host, path, bodies[index])
        finally:
            await conn.close()

    cpu0, client0, machine0 = server_cpu_seconds(), time.process_time(), machine_busy_seconds()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    server_cpu, client_cpu = server_cpu_seconds() - cpu0, time.process_time() - client0
    machine_cpu = machine_busy_seconds() - machine0
    ordered = [results[i] for i in range(len(bodies))]
    return LevelResult(concurrency, ordered, wall, server_cpu, client_cpu, machine_cpu)


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat: everything but
    idle and iowait); 0 where /proc/stat is missing."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


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
