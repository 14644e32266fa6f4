# Owns the write side of one connection: h11 events out to the byte stream under a
# send lock, each write bounded by the send timeout, and the closing of the stream.
# Invariant: one writer at a time touches the socket; a write that fails or stalls
# past the timeout marks the writer broken (the client is gone) and every later
# write raises ClientGone, so a slow or vanished client stalls only its own handler.

from __future__ import annotations

from collections.abc import Iterable
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

    async def start_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        await self._send(response_head(status, headers))

    async def send_data(self, data: bytes) -> None:
        await self._send(h11.Data(data=data))

    async def end_response(self) -> None:
        await self._send(h11.EndOfMessage())

    async def _send(self, *events: h11.Event) -> None:
        async with self._lock:
            if self.broken:
                raise ClientGone
            data = b"".join(self._h11.send(event) or b"" for event in events)
            try:
                with anyio.fail_after(self._send_timeout):
                    await self._stream.send(data)
            except _STREAM_ERRORS as exc:
                self.broken = True
                self._h11.send_failed()
                raise ClientGone from exc


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
