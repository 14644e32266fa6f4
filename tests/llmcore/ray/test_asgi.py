"""`llmcore.ray.asgi.OpenAIASGIApp` without Ray: a fake service, and ASGI `receive`
and `send` driven by hand (what Serve's replica does with the proxy's messages)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmcore.openai.interface import ServiceRequest, ServiceResponse, ServiceStream
from llmcore.openai.request_ids import HeaderRequestId
from llmcore.ray.asgi import OpenAIASGIApp

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeStream:
    """SSE chunks; after `block_after` of them it waits forever (a slow engine).
    `closed` is set when the generator is finalized (that aborts the engine request)."""

    def __init__(self, chunks: list[bytes], block_after: int | None = None) -> None:
        self.chunks, self.block_after = chunks, block_after
        self.closed = False
        self.sent = asyncio.Event()

    async def run(self) -> AsyncIterator[bytes]:
        try:
            for i, chunk in enumerate(self.chunks):
                if i == self.block_after:
                    self.sent.set()
                    await asyncio.Event().wait()
                yield chunk
        finally:
            self.closed = True


class FakeService:
    """Records each request; answers with `answer` (a response or a FakeStream)."""

    def __init__(self, answer: ServiceResponse | FakeStream) -> None:
        self.answer = answer
        self.requests: list[ServiceRequest] = []

    async def handle(self, request: ServiceRequest) -> ServiceResponse | ServiceStream:
        self.requests.append(request)
        if isinstance(self.answer, FakeStream):
            return ServiceStream(self.answer.run())
        return self.answer


class Wire:
    """`receive` gives the body in `parts`, then waits until `disconnect()`;
    `send` records the messages (or raises `send_error` once the head is sent)."""

    def __init__(self, parts: list[bytes] | None = None) -> None:
        self.parts = list(parts or [b""])
        self.received = 0
        self.messages: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self.send_error: Exception | None = None

    def disconnect(self) -> None:
        self.gone.set()

    async def receive(self) -> dict[str, Any]:
        if self.received < len(self.parts):
            self.received += 1
            more = self.received < len(self.parts)
            return {
                "type": "http.request",
                "body": self.parts[self.received - 1],
                "more_body": more,
            }
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.send_error is not None and self.messages:
            raise self.send_error
        self.messages.append(message)

    @property
    def head(self) -> dict[str, Any]:
        assert self.messages[0]["type"] == "http.response.start"
        return self.messages[0]

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.head["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m["body"] for m in self.messages[1:])


def http_scope(path: str = "/v1/chat/completions", **extra: Any) -> dict[str, Any]:
    headers = [(b"Content-Type", b"application/json"), *extra.pop("headers", [])]
    return {"type": "http", "method": "POST", "path": path, "headers": headers, **extra}


async def test_a_request_reaches_the_service_as_the_http_transport_sends_it() -> None:
    service = FakeService(ServiceResponse(201, b'{"ok":1}', headers=[("retry-after", "3")]))
    wire = Wire([b'{"model":', b'"m"}'])
    scope = http_scope("/llm/v1/chat/completions", root_path="/llm")
    scope["headers"].append((b"x-request-id", b"client-id-1"))
    await OpenAIASGIApp(service, max_body_size=1000)(scope, wire.receive, wire.send)
    (request,) = service.requests
    assert (request.method, request.path, request.body) == (
        "POST",
        "/v1/chat/completions",
        b'{"model":"m"}',
    )
    assert ("content-type", "application/json") in request.headers  # names lower-cased
    assert request.request_id == "client-id-1"
    assert isinstance(request.request_id, HeaderRequestId)  # the client's: beats the body's
    assert wire.head["status"] == 201
    assert wire.headers[b"content-type"] == b"application/json"
    assert wire.headers[b"content-length"] == b"8"
    assert wire.headers[b"retry-after"] == b"3"
    assert wire.body == b'{"ok":1}'


@pytest.mark.parametrize("offered", [None, "x" * 129, "has space", "naïve"])
async def test_a_missing_or_unusable_request_id_header_gets_a_new_id(offered: str | None) -> None:
    service = FakeService(ServiceResponse(200, b"{}"))
    wire = Wire()
    scope = http_scope("/v1/models", method="GET")
    if offered is not None:
        scope["headers"].append((b"x-request-id", offered.encode("latin-1")))
    await OpenAIASGIApp(service, max_body_size=1000)(scope, wire.receive, wire.send)
    request_id = service.requests[0].request_id
    assert len(request_id) == 32 and not isinstance(request_id, HeaderRequestId)


async def test_paths_outside_the_root_path_are_kept() -> None:
    service = FakeService(ServiceResponse(200, b"{}"))
    for path, root, expected in [("/v1/models", "/llm", "/v1/models"), ("/llm", "/llm", "/")]:
        wire = Wire()
        scope = http_scope(path, root_path=root)
        await OpenAIASGIApp(service, max_body_size=10)(scope, wire.receive, wire.send)
        assert service.requests[-1].path == expected


async def test_a_stream_is_sent_event_by_event_and_closed() -> None:
    stream = FakeStream([b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"])
    wire = Wire([b"{}"])
    await OpenAIASGIApp(FakeService(stream), max_body_size=10)(
        http_scope(), wire.receive, wire.send
    )
    assert wire.head["status"] == 200
    assert wire.headers[b"content-type"] == b"text/event-stream"
    assert wire.headers[b"cache-control"] == b"no-cache"
    assert b"content-length" not in wire.headers
    bodies = [(m["body"], m["more_body"]) for m in wire.messages[1:]]
    assert bodies == [(c, True) for c in stream.chunks] + [(b"", False)]
    assert stream.closed


async def _stream_in_flight(wire: Wire) -> tuple[FakeStream, asyncio.Task[None]]:
    """A request whose stream sent its first event and waits for the engine."""
    stream = FakeStream([b"data: 1\n\n", b"data: 2\n\n"], block_after=1)
    app = OpenAIASGIApp(FakeService(stream), max_body_size=10)
    task = asyncio.create_task(app(http_scope(), wire.receive, wire.send))
    await stream.sent.wait()
    return stream, task


async def test_a_client_disconnect_closes_the_stream() -> None:
    wire = Wire([b"{}"])
    stream, task = await _stream_in_flight(wire)
    wire.disconnect()
    await asyncio.wait_for(task, 5)  # returns quietly: a client going away is no error
    assert stream.closed
    assert [m["body"] for m in wire.messages[1:]] == [b"data: 1\n\n"]


async def test_a_failing_send_closes_the_stream() -> None:
    stream = FakeStream([b"data: 1\n\n", b"data: 2\n\n"])
    wire = Wire([b"{}"])
    wire.send_error = ConnectionResetError()
    await OpenAIASGIApp(FakeService(stream), max_body_size=10)(
        http_scope(), wire.receive, wire.send
    )
    assert stream.closed
    assert len(wire.messages) == 1  # the head only


async def test_cancelling_the_request_closes_the_stream() -> None:
    """Serve's proxy cancels the replica's request when the client goes away."""
    stream, task = await _stream_in_flight(Wire([b"{}"]))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.closed


@pytest.mark.parametrize("declared", [True, False])
async def test_a_body_over_the_limit_is_413_and_never_reaches_the_service(declared: bool) -> None:
    service = FakeService(ServiceResponse(200, b"{}"))
    wire = Wire([b"x" * 6, b"x" * 6, b"never read"])
    scope = http_scope()
    if declared:
        scope["headers"].append((b"content-length", b"22"))
    await OpenAIASGIApp(service, max_body_size=10)(scope, wire.receive, wire.send)
    assert service.requests == []
    assert wire.received == (0 if declared else 2)
    assert wire.head["status"] == 413
    error = json.loads(wire.body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "payload_too_large"
    assert "10 bytes" in error["message"]


async def test_413_on_anthropic_paths_is_in_anthropics_shape() -> None:
    wire = Wire([b"x" * 11])
    app = OpenAIASGIApp(FakeService(ServiceResponse(200, b"{}")), max_body_size=10)
    await app(http_scope("/v1/messages"), wire.receive, wire.send)
    assert wire.head["status"] == 413
    assert json.loads(wire.body)["type"] == "error"


async def test_a_client_gone_while_sending_the_body_is_never_answered() -> None:
    service = FakeService(ServiceResponse(200, b"{}"))
    wire = Wire()
    first = {"type": "http.request", "body": b"{", "more_body": True}
    messages = iter([first, {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    await OpenAIASGIApp(service, max_body_size=10)(http_scope(), receive, wire.send)
    assert service.requests == [] and wire.messages == []


async def test_lifespan_and_websockets() -> None:
    app = OpenAIASGIApp(FakeService(ServiceResponse(200, b"")), max_body_size=10)
    events = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(events)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    sent.clear()
    await app({"type": "websocket", "path": "/"}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1003}]
