"""The write side of a connection (`ResponseWriter`) over a byte stream that fails:
a client that goes away mid-stream is `ClientGone`, as itself, never wrapped."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from transports.http.admission import RequestAdmission
from transports.http.config import HTTPConfig
from transports.http.cycle import Dispatch, HTTPCycle
from transports.http.writer import ClientGone, ResponseWriter

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class BrokenAfter:
    """A byte stream whose `send` fails once `limit` bytes went through."""

    def __init__(self, limit: int, error: Exception) -> None:
        self.limit = limit
        self.error = error
        self.sent = b""

    async def send(self, data: bytes) -> None:
        if len(self.sent) + len(data) > self.limit:
            raise self.error
        self.sent += data


def dispatched_cycle() -> HTTPCycle:
    config = HTTPConfig()
    cycle = HTTPCycle(config, RequestAdmission(config))
    cycle.receive_data(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
    assert isinstance(cycle.next_action(), Dispatch)
    return cycle


async def events(count: int) -> AsyncIterator[bytes]:
    for n in range(count):
        yield b"data: %d\n\n" % n
        await anyio.sleep(0)


@pytest.mark.parametrize(
    "error",
    [anyio.BrokenResourceError(), ConnectionResetError(), TimeoutError()],
    ids=["broken", "reset", "send-timeout"],
)
async def test_a_client_gone_mid_stream_is_client_gone_not_a_group(error: Exception) -> None:
    """Defect 6: ClientGone raised inside the pump's task group came out wrapped in
    an ExceptionGroup, so the exchange logged an internal error."""
    cycle = dispatched_cycle()
    stream = BrokenAfter(200, error)
    writer = ResponseWriter(stream, cycle, send_timeout=5.0)  # type: ignore[arg-type]
    with pytest.raises(ClientGone):
        await writer.send_stream(200, [(b"content-type", b"text/event-stream")], events(1000))
    assert writer.broken and not cycle.can_respond
    assert stream.sent.startswith(b"HTTP/1.1 200 ")
    with pytest.raises(ClientGone):  # and every later write too
        await writer.send_response(200, [], b"{}")


async def test_a_failing_stream_iterator_propagates_its_own_error() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        raise ValueError("engine died")

    cycle = dispatched_cycle()
    stream = BrokenAfter(1 << 20, anyio.BrokenResourceError())
    writer = ResponseWriter(stream, cycle, send_timeout=5.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="engine died"):
        await writer.send_stream(200, [], failing())
    assert b"data: 1" in stream.sent and not writer.broken


# ---- streamed writes straight to the asyncio transport (real TCP connections) -----------


async def _tcp_pair() -> tuple[anyio.abc.SocketStream, anyio.abc.SocketStream, anyio.abc.Listener]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        accepted: list[anyio.abc.SocketStream] = []

        async def accept() -> None:
            accepted.append(await listener.listeners[0].accept())  # type: ignore[attr-defined]

        tg.start_soon(accept)
        client = await anyio.connect_tcp("127.0.0.1", port)
    return accepted[0], client, listener


def _body(raw: bytes) -> bytes:
    """The chunked body of a response (its head dropped)."""
    body = raw.split(b"\r\n\r\n", 1)[1]
    out = b""
    while True:
        size_line, body = body.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return out
        out, body = out + body[:size], body[size + 2 :]


async def test_streamed_writes_on_tcp_go_to_the_transport_and_arrive_whole() -> None:
    """The direct path is taken on anyio's TCP stream (a renamed anyio internal
    fails here rather than silently falling back), and 4 MiB streamed to a client
    that reads slowly (the transport pausing and resuming) arrive in order."""
    server, client, listener = await _tcp_pair()
    async with listener, server, client:
        writer = ResponseWriter(server, dispatched_cycle(), send_timeout=10.0)
        assert writer._direct is not None
        chunks = [b"%06d" % i + b"x" * 1018 for i in range(4096)]

        async def produce() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk
                await anyio.sleep(0)

        received = bytearray()

        async def read_slowly() -> None:
            while not received.endswith(b"0\r\n\r\n"):
                received.extend(await client.receive(8192))
                await anyio.sleep(0.0005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_slowly)
            await writer.send_stream(200, [], produce())
        assert _body(bytes(received)) == b"".join(chunks)


async def test_a_stalled_or_gone_client_on_tcp_is_client_gone() -> None:
    server, client, listener = await _tcp_pair()
    async with listener, server, client:  # a client that never reads: the watchdog
        writer = ResponseWriter(server, dispatched_cycle(), send_timeout=0.5)

        async def endless() -> AsyncIterator[bytes]:
            while True:
                yield b"y" * 65536
                await anyio.sleep(0)

        with anyio.fail_after(10), pytest.raises(ClientGone):
            await writer.send_stream(200, [], endless())
    server, client, listener = await _tcp_pair()
    async with listener, server:  # a client that closed
        writer = ResponseWriter(server, dispatched_cycle(), send_timeout=5.0)
        await client.aclose()
        with anyio.fail_after(10), pytest.raises(ClientGone):
            await writer.send_stream(200, [], endless())
