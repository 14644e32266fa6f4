"""Fixtures for the HTTP transport tests: `FakeService`, a test double of llmcore's
OpenAI service, and `RawClient`, a raw-socket HTTP/1.1 client driven by an h11
client connection (so tests can send exactly the bytes they want)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import anyio
import h11
import pytest
from anyio.abc import ByteStream

from transports.http import HTTPConfig, HTTPServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the service test double ------------------------------------------------------------


@dataclass
class FakeResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class FakeStreamResponse:
    chunks: FakeStream
    status: int = 200
    content_type: str = "text/event-stream"


class FakeStream:
    """`count` SSE events, `delay` seconds apart; records when it is aclose()d."""

    def __init__(self, count: int, delay: float, padding: int = 0) -> None:
        self.count = count
        self.delay = delay
        self.padding = padding
        self.sent = 0
        self.closed = anyio.Event()
        self.closed_at: float | None = None

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> bytes:
        if self.closed.is_set() or self.sent >= self.count:
            raise StopAsyncIteration
        if self.delay:
            await anyio.sleep(self.delay)
        self.sent += 1
        pad = f', "pad": "{"x" * self.padding}"' if self.padding else ""
        return f'data: {{"n": {self.sent}{pad}}}\n\n'.encode()

    async def aclose(self) -> None:
        self.closed_at = time.monotonic()
        self.closed.set()


class FakeService:
    """Test double for llmcore's OpenAI service (anything with `async handle`).

    /health, /ping, /version: 200 {"status": "ok"}; /stream: `stream_events` SSE
    events `stream_delay` apart; /slow: sleeps `slow_delay` then echoes (records
    cancellation); /boom: raises (the contract says it never does); any other path:
    a JSON echo of the request."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.streams: list[FakeStream] = []
        self.cancelled: list[str] = []  # request ids whose handle() was cancelled
        self.stream_events = 3
        self.stream_delay = 0.0
        self.stream_padding = 0  # extra bytes per event
        self.slow_delay = 0.5

    async def handle(self, request: Any) -> FakeResponse | FakeStreamResponse:
        self.requests.append(request)
        if request.path in ("/health", "/ping", "/version"):
            return FakeResponse(200, b'{"status": "ok"}')
        if request.path == "/stream":
            stream = FakeStream(self.stream_events, self.stream_delay, self.stream_padding)
            self.streams.append(stream)
            return FakeStreamResponse(stream)
        if request.path == "/boom":
            raise RuntimeError("boom")
        if request.path == "/slow":
            try:
                await anyio.sleep(self.slow_delay)
            except anyio.get_cancelled_exc_class():
                self.cancelled.append(request.request_id)
                raise
        return FakeResponse(200, _echo(request), headers=[("x-service", "fake")])


def _echo(request: Any) -> bytes:
    return json.dumps(
        {
            "method": request.method,
            "path": request.path,
            "body": request.body.decode("latin-1"),
            "request_id": request.request_id,
            "headers": request.headers,
        }
    ).encode()


# -- the raw client -----------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    informational: list[int] = field(default_factory=list)
    data_events: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """HTTP/1.1 over a real socket; h11 parses the responses."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send(data)

    async def send_head(
        self, method: str, path: str, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        request = h11.Request(method=method, target=path, headers=[("host", "test"), *headers])
        await self.stream.send(self.h11.send(request))

    async def send_body(self, *parts: bytes) -> None:
        for part in parts:
            await self.stream.send(self.h11.send(h11.Data(data=part)))
        await self.stream.send(self.h11.send(h11.EndOfMessage()))

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Reply:
        length = [("content-length", str(len(body)))] if body or method == "POST" else []
        await self.send_head(method, path, [*length, *headers])
        await self.send_body(body)
        return await self.read_response()

    def expect_response_to(self, method: str = "GET") -> None:
        """Tell h11 a request went out (one sent with send_raw), to parse its answer."""
        self.h11.send(h11.Request(method=method, target="/", headers=[("host", "test")]))
        self.h11.send(h11.EndOfMessage())

    def next_cycle(self) -> None:
        self.h11.start_next_cycle()

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await self._receive())

    async def read_response(self) -> Reply:
        reply = Reply(0, {}, b"")
        body = bytearray()
        while True:
            event = await self.next_event()
            if isinstance(event, h11.InformationalResponse):
                reply.informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                reply.status = event.status_code
                reply.headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
                reply.data_events += 1
            elif isinstance(event, h11.EndOfMessage):
                reply.body = bytes(body)
                return reply
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def closed_within(self, seconds: float) -> bool:
        """True if the server closes the connection within `seconds` (data is skipped)."""
        with anyio.move_on_after(seconds):
            while await self._receive():
                pass
            return True
        return False

    async def _receive(self) -> bytes:
        try:
            return await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            return b""

    async def aclose(self) -> None:
        await self.stream.aclose()


@asynccontextmanager
async def _connect(server: HTTPServer, **tls: Any) -> AsyncIterator[RawClient]:
    assert server.port is not None
    stream = await anyio.connect_tcp("127.0.0.1", server.port, **tls)
    client = RawClient(stream)
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def _connect_unix(path: str | PathLike[str]) -> AsyncIterator[RawClient]:
    client = RawClient(await anyio.connect_unix(path))
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def connect_unix() -> Callable[..., AbstractAsyncContextManager[RawClient]]:
    """`async with connect_unix(path) as client:`"""
    return _connect_unix


@pytest.fixture
def connect() -> Callable[..., AbstractAsyncContextManager[RawClient]]:
    """`async with connect(server) as client:` (TCP; TLS options are passed through)."""
    return _connect


@pytest.fixture
def fake() -> FakeService:
    return FakeService()


@pytest.fixture
def running(fake: FakeService) -> Callable[..., AbstractAsyncContextManager[HTTPServer]]:
    """`async with running(**config) as server:` serves `fake` on 127.0.0.1, port 0."""

    @asynccontextmanager
    async def run(service: Any = None, **options: Any) -> AsyncIterator[HTTPServer]:
        options.setdefault("port", 0)
        config = HTTPConfig(host="127.0.0.1", **options)
        async with HTTPServer(service or fake, config) as server:
            yield server

    return run
