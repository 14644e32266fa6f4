# Owns the write side of one connection: h11 events out to the byte stream under a
# send lock, each write bounded by the send timeout, and the closing of the stream.
# Invariant: one writer at a time touches the socket; a write that fails or stalls
# past the timeout marks the writer broken (the client is gone) and every later
# write raises ClientGone, so a slow or vanished client stalls only its own handler.
# A streamed body is pumped: chunks that arrive while a write is in flight go out
# together in the next write, so the socket sees one write per burst, not per event.

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from email.utils import formatdate
from functools import lru_cache
from http import HTTPStatus
from time import time

import anyio
import h11
from anyio.abc import ByteStream

# Framing belongs to the transport: a service cannot set these.
_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, TimeoutError)


class ClientGone(Exception):
    """The client can no longer be written to (it closed, reset, or stopped reading)."""


class ResponseWriter:
    """Sends h11 events for one connection through a lock, with a per-write timeout."""

    __slots__ = ("_h11", "_lock", "_send_timeout", "_stream", "broken", "status")

    def __init__(self, stream: ByteStream, conn: h11.Connection, send_timeout: float) -> None:
        self._stream = stream
        self._h11 = conn
        self._send_timeout = send_timeout
        self._lock = anyio.Lock()
        self.broken = False
        self.status: int | None = None  # the final status sent in this cycle

    def new_cycle(self) -> None:
        self.status = None

    @property
    def can_respond(self) -> bool:
        """Whether a response may still start in this cycle."""
        return not self.broken and self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    async def send_continue(self) -> None:
        await self._send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))

    async def send_response(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """A complete response in one write."""
        self.status = status
        events: list[h11.Event] = [response_head(status, headers)]
        if body:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        await self._send(*events)

    async def send_stream(
        self, status: int, headers: list[tuple[bytes, bytes]], chunks: AsyncIterator[bytes]
    ) -> None:
        """A streamed response: the head, then every chunk of `chunks` as soon as it
        is available (those ready together in one write), then the end. The writer
        is held for the whole stream. An error of `chunks` propagates after what was
        produced before it is written; the end of the message is then not sent."""
        self.status = status
        async with self._lock:
            if self.broken:
                raise ClientGone
            pump = _Pump(chunks)
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump.run)
                try:
                    first = self._h11.send(response_head(status, headers)) or b""
                    await self._write(first + await pump.take(self._h11))
                    while not pump.finished:
                        await self._write(await pump.take(self._h11))
                finally:
                    tg.cancel_scope.cancel()
            if pump.error is not None:
                raise pump.error
            await self._write(self._h11.send(h11.EndOfMessage()) or b"")

    async def _send(self, *events: h11.Event) -> None:
        async with self._lock:
            if self.broken:
                raise ClientGone
            await self._write(b"".join(self._h11.send(event) or b"" for event in events))

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        try:
            with anyio.fail_after(self._send_timeout):
                await self._stream.send(data)
        except _STREAM_ERRORS as exc:
            self.broken = True
            self._h11.send_failed()
            raise ClientGone from exc


class _Pump:
    """Reads a chunk iterator in its own task into a buffer that the writer empties;
    the reader waits while the buffer holds `high_water` bytes or more."""

    __slots__ = ("_chunks", "_done", "_high_water", "_pending", "_ready", "_room", "_size",
                 "error", "finished")  # fmt: skip

    def __init__(self, chunks: AsyncIterator[bytes], high_water: int = 1 << 16) -> None:
        self._chunks = chunks
        self._high_water = high_water
        self._pending: list[bytes] = []
        self._size = 0
        self._ready = anyio.Event()
        self._room = anyio.Event()
        self._done = False  # the iterator is exhausted or failed
        self.finished = False  # ... and the buffer is empty
        self.error: Exception | None = None

    async def run(self) -> None:
        try:
            async for chunk in self._chunks:
                if not chunk:
                    continue
                self._pending.append(chunk)
                self._size += len(chunk)
                self._ready.set()
                while self._size >= self._high_water:
                    self._room = anyio.Event()
                    await self._room.wait()
        except Exception as exc:  # handed to the writer, which raises it in its task
            self.error = exc
        self._done = True
        self._ready.set()

    async def take(self, conn: h11.Connection) -> bytes:
        """Wait for buffered chunks and return them framed as one h11 Data event
        (b"" once the iterator is done and nothing is left)."""
        await self._ready.wait()
        self._ready = anyio.Event()
        data, self._pending, self._size = b"".join(self._pending), [], 0
        self._room.set()
        if self._done:
            self.finished = True
            self._ready.set()
        return (conn.send(h11.Data(data=data)) or b"") if data else b""


def response_headers(
    content_type: str,
    extra: Iterable[tuple[str, str]],
    *,
    length: int | None,
    close: bool,
) -> list[tuple[bytes, bytes]]:
    """Headers of a response: date, content type and length (None: streamed), the
    service's and transport's extras, and `connection: close` when closing."""
    headers = [(b"date", _http_date(int(time())))]
    if content_type:
        headers.append((b"content-type", content_type.encode("latin-1")))
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    for name, value in extra:
        if name.lower() not in _HOP_BY_HOP:
            headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    if close:
        headers.append((b"connection", b"close"))
    return headers


def response_head(status: int, headers: list[tuple[bytes, bytes]]) -> h11.Response:
    """An h11 Response with the standard reason phrase."""
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    return h11.Response(status_code=status, headers=headers, reason=reason)


@lru_cache(maxsize=2)
def _http_date(second: int) -> bytes:
    return formatdate(second, usegmt=True).encode()


async def close_stream(stream: ByteStream, *, linger: float = 0.0) -> None:
    """Close `stream`. With `linger`, first send EOF and discard what the client still
    sends until it closes (at most `linger` seconds), so that the last response is
    not lost to a TCP reset caused by unread request bytes."""
    try:
        if linger > 0:
            with anyio.move_on_after(linger):
                await _send_eof(stream)
                await _discard_until_eof(stream)
    finally:
        with anyio.CancelScope(shield=True):
            try:
                await stream.aclose()
            except _STREAM_ERRORS:
                pass


async def _send_eof(stream: ByteStream) -> None:
    try:
        await stream.send_eof()
    except (NotImplementedError, *_STREAM_ERRORS):  # TLS streams may not support it
        pass


async def _discard_until_eof(stream: ByteStream) -> None:
    try:
        while True:
            await stream.receive()
    except (anyio.EndOfStream, *_STREAM_ERRORS):
        pass
