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
