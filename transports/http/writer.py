"""The write side of one connection: framed responses out to the byte stream under
a send lock, each write bounded by the send timeout, and the closing of the stream.

Framing (which bytes an h11 event becomes, and whether it is legal now) is the
connection's `HTTPCycle`'s; this module only moves the bytes. One writer at a time
touches the socket; a write that fails or stalls past the timeout marks the writer
broken (the client is gone) and every later write raises `ClientGone`, so a slow or
vanished client stalls only its own handler. `ClientGone` always reaches the
caller as itself, never wrapped in an exception group. A streamed body is pumped:
chunks that arrive while a write is in flight go out together in the next write, so
the socket sees one write per burst, not per event.

A streamed body's writes are timed by a watchdog task rather than a cancel scope
each: a write notes when it started, and the watchdog, waking four times per
timeout, cancels the stream when one has been in flight too long. Entering and
leaving a timeout scope per write cost more CPU than the write itself at
thousands of streamed tokens a second (an API process serving 256 streams).
For the same reason a streamed write on a plain TCP connection goes to the
asyncio transport beneath anyio's stream (`_TransportSend`): anyio's `send`
yields to the event loop inside a shielded cancel scope after every write that
did not wait (a tenth of such a process's CPU); ours yields with a bare
`asyncio.sleep(0)`, which keeps what the yield is for (chunks made meanwhile go
out in one write) at a quarter less CPU per chunk (tests/bench/bench_stream_writes.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
import h11
from anyio.abc import ByteStream

from transports.http.framing import complete_response, response_head

_STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, TimeoutError)


class ClientGone(Exception):
    """The client can no longer be written to (it closed, reset, or stopped reading)."""


class Framer(Protocol):
    """What frames our events (the connection's `HTTPCycle`)."""

    @property
    def can_respond(self) -> bool: ...
    def frame(self, *events: h11.Event) -> bytes: ...
    def send_failed(self) -> None: ...


class _TransportSend:
    """`send` on anyio's asyncio TCP stream with a bare yield for its trailing
    shielded checkpoint: the same checks (closed, failed, paused), the write, then
    a wait while the transport's buffer is not empty (anyio sets its high-water
    mark to 0), else one `sleep(0)`. A cancellation there comes after the bytes
    were handed to the transport; the stream is being torn down then anyway."""

    __slots__ = ("_protocol", "_transport")

    def __init__(self, transport: asyncio.Transport, protocol: Any) -> None:
        self._transport = transport
        self._protocol = protocol

    @classmethod
    def of(cls, stream: ByteStream) -> _TransportSend | None:
        """The direct send of `stream` where it is anyio's asyncio socket stream over
        a transport (None otherwise: TLS, a Unix socket, another backend)."""
        transport = getattr(stream, "_transport", None)
        protocol = getattr(stream, "_protocol", None)
        event = getattr(protocol, "write_event", None)
        if isinstance(transport, asyncio.Transport) and isinstance(event, asyncio.Event):
            return cls(transport, protocol)
        return None

    async def __call__(self, data: bytes) -> None:
        protocol = self._protocol
        if not protocol.write_event.is_set():
            await protocol.write_event.wait()
        if self._transport.is_closing():
            raise anyio.ClosedResourceError
        if protocol.exception is not None:
            raise anyio.BrokenResourceError from protocol.exception
        self._transport.write(data)
        if protocol.write_event.is_set():
            # Yield once, as anyio does, but without its shielded cancel scope: the
            # chunks other tasks make meanwhile go out together in the next write.
            await asyncio.sleep(0)
            return
        await protocol.write_event.wait()
        if self._transport.is_closing():
            raise anyio.ClosedResourceError
        if protocol.exception is not None:
            raise anyio.BrokenResourceError from protocol.exception


class ResponseWriter:
    """Sends framed events for one connection through a lock, with a per-write timeout."""

    __slots__ = ("_direct", "_framer", "_lock", "_send_timeout", "_stream", "_write_started",
                 "broken", "status")  # fmt: skip

    def __init__(self, stream: ByteStream, framer: Framer, send_timeout: float) -> None:
        self._stream = stream
        self._direct = _TransportSend.of(stream)
        self._framer = framer
        self._send_timeout = send_timeout
        self._lock = anyio.Lock()
        self._write_started: float | None = None  # a streamed write in flight, since
        self.broken = False
        self.status: int | None = None  # the final status sent in this cycle

    def new_cycle(self) -> None:
        self.status = None

    @property
    def can_respond(self) -> bool:
        """Whether a response may still start in this cycle."""
        return not self.broken and self._framer.can_respond

    async def send_bytes(self, data: bytes) -> None:
        """Bytes the cycle framed itself (an interim or early response)."""
        async with self._lock:
            if self.broken:
                raise ClientGone
            await self._write(data)

    async def send_response(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """A complete response in one write."""
        self.status = status
        await self._send(*complete_response(status, headers, body))

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
            pump = _Pump(chunks, self._framer)
            gone: ClientGone | None = None
            stalled = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump.run)
                tg.start_soon(self._watch, tg.cancel_scope, stalled)
                try:
                    first = self._framer.frame(response_head(status, headers))
                    await self._write_watched(first + await pump.take())
                    while not pump.finished:
                        await self._write_watched(await pump.take())
                except ClientGone as exc:  # raised past the group it would come out wrapped
                    gone = exc
                finally:
                    tg.cancel_scope.cancel()
            if stalled.is_set():
                gone = self._broke(TimeoutError("a streamed write stalled"))
            if gone is not None:
                raise gone
            if pump.error is not None:
                raise pump.error
            await self._write(self._framer.frame(h11.EndOfMessage()))

    async def _send(self, *events: h11.Event) -> None:
        async with self._lock:
            if self.broken:
                raise ClientGone
            await self._write(self._framer.frame(*events))

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        try:
            with anyio.fail_after(self._send_timeout):
                await self._stream.send(data)
        except _STREAM_ERRORS as exc:
            raise self._broke(exc) from exc

    async def _write_watched(self, data: bytes) -> None:
        """A write of a streamed body: `_watch` bounds it."""
        if not data:
            return
        self._write_started = anyio.current_time()
        try:
            if self._direct is not None:
                await self._direct(data)
            else:
                await self._stream.send(data)
        except _STREAM_ERRORS as exc:
            raise self._broke(exc) from exc
        finally:
            self._write_started = None

    async def _watch(self, scope: anyio.CancelScope, stalled: anyio.Event) -> None:
        """Cancel `scope` (the stream's) once a write has been in flight longer than
        the send timeout."""
        while True:
            await anyio.sleep(self._send_timeout / 4)
            started = self._write_started
            if started is not None and anyio.current_time() - started > self._send_timeout:
                stalled.set()
                scope.cancel()
                return

    def _broke(self, exc: BaseException) -> ClientGone:
        """Mark the writer broken (the client is gone); the error to raise."""
        self.broken = True
        self._framer.send_failed()
        gone = ClientGone()
        gone.__cause__ = exc
        return gone


class _Pump:
    """Reads a chunk iterator in its own task into a buffer that the writer empties;
    the reader waits while the buffer holds `high_water` bytes or more."""

    __slots__ = ("_chunks", "_done", "_framer", "_high_water", "_pending", "_ready", "_room",
                 "_size", "error", "finished")  # fmt: skip

    def __init__(
        self, chunks: AsyncIterator[bytes], framer: Framer, high_water: int = 1 << 16
    ) -> None:
        self._chunks = chunks
        self._framer = framer
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

    async def take(self) -> bytes:
        """Wait for buffered chunks and return them framed as one h11 Data event
        (b"" once the iterator is done and nothing is left)."""
        await self._ready.wait()
        self._ready = anyio.Event()
        data, self._pending, self._size = b"".join(self._pending), [], 0
        self._room.set()
        if self._done:
            self.finished = True
            self._ready.set()
        return self._framer.frame(h11.Data(data=data)) if data else b""


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
