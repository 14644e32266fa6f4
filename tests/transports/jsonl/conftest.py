"""Fixtures for the JSON-lines batch transport tests: `FakeService`, a test double of
llmcore's OpenAI service, `MemoryWriter`, an output that records lines and lets a
test wait for them, and `Batch`, which runs a `BatchRunner` over in-memory lines."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from transports.jsonl import BatchRunner, BatchSummary


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


class FakeStream:
    def __init__(self) -> None:
        self.closed = False

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class FakeStreamResponse:
    chunks: FakeStream
    status: int = 200
    content_type: str = "text/event-stream"


class FakeService:
    """Test double of llmcore's OpenAI service (anything with `async handle`).

    Paths: /v1/nothing is not a route (404, no param); /v1/models is GET-only (405);
    any other path answers by the JSON body:
      {"gate": NAME}       waits until `open(NAME)`
      {"sleep": SECONDS}   sleeps first
      {"status": N}        answers N with an OpenAI error (its "param" from "param")
      {"raise": true}      raises (the contract says it never does)
      {"answer_stream": true}  answers with a stream
      else 200: {"echo": body, "path", "request_id", "usage": {"completion_tokens": 3}}
    Records the requests, the most at once, and the cancelled ones."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.cancelled: list[str] = []
        self.streams: list[FakeStream] = []
        self._gates: dict[str, anyio.Event] = {}

    def open(self, name: str) -> None:
        self._gate(name).set()

    def _gate(self, name: str) -> anyio.Event:
        return self._gates.setdefault(name, anyio.Event())

    async def handle(self, request: Any) -> FakeResponse | FakeStreamResponse:
        self.requests.append(request)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(request.request_id)
            raise
        finally:
            self.in_flight -= 1

    async def _answer(self, request: Any) -> FakeResponse | FakeStreamResponse:
        if request.path == "/v1/nothing":
            return _error(404, f"no route POST {request.path}", None)
        if request.path == "/v1/models":
            return _error(405, "method POST is not allowed on /v1/models", None)
        body = json.loads(request.body)
        if "gate" in body:
            await self._gate(body["gate"]).wait()
        if "sleep" in body:
            await anyio.sleep(body["sleep"])
        if "status" in body:
            return _error(body["status"], "bad request", body.get("param"))
        if body.get("raise"):
            raise RuntimeError("boom")
        if body.get("answer_stream"):
            stream = FakeStream()
            self.streams.append(stream)
            return FakeStreamResponse(stream)
        echo = {"echo": body, "path": request.path, "request_id": request.request_id,
                "usage": {"completion_tokens": 3}}  # fmt: skip
        return FakeResponse(200, json.dumps(echo).encode())


def _error(status: int, message: str, param: str | None) -> FakeResponse:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return FakeResponse(status, json.dumps({"error": error}).encode())


@pytest.fixture
def fake() -> FakeService:
    return FakeService()


# -- lines in, lines out ------------------------------------------------------------------


def request_line(
    custom_id: Any,
    body: Any = None,
    *,
    url: Any = "/v1/chat/completions",
    method: Any = "POST",
) -> bytes:
    """One OpenAI batch input line (newline included)."""
    line = {"custom_id": custom_id, "method": method, "url": url,
            "body": {"messages": []} if body is None else body}  # fmt: skip
    return json.dumps(line).encode() + b"\n"


class MemoryWriter:
    """Records written lines; `await wait_for(n)` returns once n lines are written."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.writes: list[int] = []  # lines per write_lines call
        self._changed = anyio.Event()

    async def write_lines(self, lines: Sequence[bytes]) -> None:
        self.lines.extend(lines)
        self.writes.append(len(lines))
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.lines) < count:
            await self._changed.wait()

    @property
    def records(self) -> list[dict[str, Any]]:
        for line in self.lines:
            assert line.endswith(b"\n") and line.count(b"\n") == 1
        return [json.loads(line) for line in self.lines]


class Batch:
    """Runs a BatchRunner over in-memory input lines, fed all at once or one by one."""

    def __init__(self, fake: FakeService) -> None:
        self.fake = fake
        self.writer = MemoryWriter()
        self.send, self.receive = anyio.create_memory_object_stream[bytes](math.inf)
        self.runner: BatchRunner | None = None

    def make_runner(self, **options: Any) -> BatchRunner:
        self.runner = BatchRunner(self.fake, self.writer, **options)
        return self.runner

    async def run(self, lines: Sequence[bytes], **options: Any) -> BatchSummary:
        """Run the whole batch; the input is closed after `lines`."""
        for line in lines:
            self.send.send_nowait(line)
        self.send.close()
        return await self.make_runner(**options).run(self.receive)

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.writer.records


@pytest.fixture
def batch(fake: FakeService) -> Batch:
    return Batch(fake)


@pytest.fixture
def line() -> Any:
    """`line(custom_id, body=None, url=..., method=...)`: one input line."""
    return request_line
