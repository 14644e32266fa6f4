# Owns one HTTP/1.1 connection: the read loop around an h11.Connection (request
# head under the idle and header timeouts, admission, body under the body timeout and
# size cap, 100-continue), one Exchange task per request, read-ahead while it runs,
# and keep-alive or close afterwards. Invariant: only this connection's own task
# reads the socket; h11 sees one request at a time (pipelined bytes wait in its
# buffer for start_next_cycle), and a client that leaves cancels its exchange.

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

import anyio
import h11
from anyio.abc import ByteStream, TaskGroup

from transports.http.access_log import log_access
from transports.http.admission import Admission, RequestAdmission, RequestHead
from transports.http.config import HTTPConfig
from transports.http.errors import EarlyResponse, RequestRejected, body_too_large
from transports.http.exchange import Exchange
from transports.http.service import RequestFactory, Service
from transports.http.writer import ClientGone, ResponseWriter, close_stream, response_headers

logger = logging.getLogger("llmcore.http")

RECEIVE_SIZE = 64 * 1024
READ_AHEAD_LIMIT = 64 * 1024  # bytes buffered for the next cycle while a response runs
LINGER = 1.0  # seconds to drain a closing client so it can read our last response
_RECEIVE_ERRORS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class _Next(enum.Enum):
    KEEP_ALIVE = enum.auto()  # start the next request cycle
    CLOSE = enum.auto()  # close after letting the client read our last response
    ABORT = enum.auto()  # close now: the client left, timed out, or the stream broke


class HTTPConnection:
    """Serves request cycles on one byte stream until it closes; `cancel()` ends it."""

    __slots__ = (
        "_admission",
        "_config",
        "_draining",
        "_eof",
        "_factory",
        "_h11",
        "_head_deadline",
        "_outcome",
        "_peer_uid",
        "_read_ahead_bytes",
        "_scope",
        "_service",
        "_stream",
        "_writer",
        "idle",
    )

    def __init__(
        self,
        stream: ByteStream,
        *,
        config: HTTPConfig,
        service: Service,
        request_factory: RequestFactory,
        admission: RequestAdmission,
        draining: Callable[[], bool],
        peer_uid: int | None = None,
    ) -> None:
        self._stream = stream
        self._config = config
        self._service = service
        self._factory = request_factory
        self._admission = admission
        self._draining = draining
        self._peer_uid = peer_uid  # the Unix-socket peer's, for the access log
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_size)
        self._writer = ResponseWriter(stream, self._h11, config.send_timeout)
        self._scope = anyio.CancelScope()
        self._eof = False
        self._head_deadline: float | None = None  # None: idle, waiting for a first byte
        self._read_ahead_bytes = 0
        self._outcome = _Next.ABORT
        self.idle = True  # no request in progress: shutdown may close it at once

    def cancel(self) -> None:
        self._scope.cancel()

    async def serve(self) -> None:
        """Serve request cycles until the connection should close (then `aclose()`)."""
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    self._outcome = await self._serve_cycles(tg)
        finally:
            self.idle = False

    async def aclose(self) -> None:
        """Close the stream; after a response that asked to close, linger first (at
        most LINGER seconds; cancelling the caller cuts it short)."""
        linger = LINGER if self._outcome is _Next.CLOSE else 0.0
        await close_stream(self._stream, linger=linger)

    async def _serve_cycles(self, tg: TaskGroup) -> _Next:
        while True:
            outcome = await self._cycle(tg)
            if outcome is not _Next.KEEP_ALIVE:
                return outcome
            self._h11.start_next_cycle()
            self._writer.new_cycle()
            self._read_ahead_bytes = 0
            buffered = bool(self._h11.trailing_data[0])  # part of the next request
            self._head_deadline = self._now() + self._config.header_timeout if buffered else None

    # -- one request cycle ----------------------------------------------------------

    async def _cycle(self, tg: TaskGroup) -> _Next:
        try:
            event = await self._read_head()
        except RequestRejected as rejected:  # malformed or oversized head: no request
            return await self._send_early(None, None, rejected.response, time.monotonic())
        if event is None:
            return _Next.ABORT
        started = time.monotonic()
        head = RequestHead.from_h11(event)
        admission = self._admission.admit(head)
        if admission.refusal is not None:
            return await self._send_early(head, admission, admission.refusal, started)
        try:
            body = await self._read_body()
        except RequestRejected as rejected:
            return await self._send_early(head, admission, rejected.response, started)
        if body is None:
            return _Next.ABORT
        return await self._dispatch(tg, head, admission, body, started)

    async def _dispatch(
        self, tg: TaskGroup, head: RequestHead, admission: Admission, body: bytes, started: float
    ) -> _Next:
        exchange = Exchange(
            head,
            admission,
            self._writer,
            started=started,
            closing=self._draining,
            access_log=self._config.access_log,
            peer_uid=self._peer_uid,
        )
        read_ahead = anyio.CancelScope()

        async def run_exchange() -> None:
            try:
                await exchange.run(self._service, self._factory, body)
            finally:
                read_ahead.cancel()

        tg.start_soon(run_exchange)
        with read_ahead:
            await self._read_ahead(exchange)
        await exchange.done.wait()
        return self._after(exchange)

    def _after(self, exchange: Exchange) -> _Next:
        if self._eof or self._writer.broken or not exchange.completed:
            return _Next.ABORT
        both_done = self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE
        return _Next.KEEP_ALIVE if both_done and not self._draining() else _Next.CLOSE

    # -- reading --------------------------------------------------------------------

    async def _read_head(self) -> h11.Request | None:
        """The next request head, or None when the connection should just close
        (the client left, or a timeout or shutdown ended the wait)."""
        while True:
            event = self._next_event()
            if isinstance(event, h11.Request):
                self.idle = False
                return event
            if event is not h11.NEED_DATA or not await self._receive_head_bytes():
                return None

    async def _receive_head_bytes(self) -> bool:
        if self._head_deadline is not None:
            return await self._receive(self._head_deadline)
        if self._draining():
            return False
        self.idle = True
        received = await self._receive(self._now() + self._config.keep_alive_timeout)
        self.idle = False
        self._head_deadline = self._now() + self._config.header_timeout
        return received

    async def _read_body(self) -> bytes | None:
        """The whole body, or None when the client left or was too slow."""
        deadline = self._now() + self._config.body_timeout
        parts: list[bytes] = []
        size = 0
        while True:
            event = self._next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self._config.max_body_size:
                    raise RequestRejected(body_too_large(self._config.max_body_size))
                parts.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            elif event is not h11.NEED_DATA or not await self._receive_body_bytes(deadline):
                return None

    async def _receive_body_bytes(self, deadline: float) -> bool:
        if self._h11.they_are_waiting_for_100_continue:
            try:
                await self._writer.send_continue()
            except ClientGone:
                return False
        return await self._receive(deadline)

    async def _read_ahead(self, exchange: Exchange) -> None:
        """While `exchange` runs: EOF means the client left (cancel it); other bytes
        are a pipelined request, kept in h11's buffer up to READ_AHEAD_LIMIT."""
        while self._read_ahead_bytes < READ_AHEAD_LIMIT:
            data = await self._receive_raw()
            if not data:
                self._eof = True
                exchange.cancel("client disconnected")
                return
            self._h11.receive_data(data)
            self._read_ahead_bytes += len(data)
        await anyio.sleep_forever()

    async def _receive(self, deadline: float) -> bool:
        """Read once into h11 before `deadline`; False on EOF or timeout."""
        with anyio.CancelScope(deadline=deadline):
            data = await self._receive_raw()
            if not data:
                self._eof = True
                return False
            self._h11.receive_data(data)
            return True
        return False

    async def _receive_raw(self) -> bytes:
        try:
            return await self._stream.receive(RECEIVE_SIZE)
        except (*_RECEIVE_ERRORS, OSError):
            return b""

    def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            return self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            if self._eof:  # the client left mid-request: nobody to answer
                return h11.ConnectionClosed()
            status = exc.error_status_hint
            message = "Request headers too large." if status == 431 else f"Bad request: {exc}"
            raise RequestRejected.error(status, message) from exc

    # -- early answers --------------------------------------------------------------

    async def _send_early(
        self,
        head: RequestHead | None,
        admission: Admission | None,
        response: EarlyResponse,
        started: float,
    ) -> _Next:
        """Answer without the service; keep the connection only if the request's body
        is already complete in the buffer (never read more of it)."""
        keep_alive = not response.close and self._skip_buffered_body() and not self._draining()
        extra = [*response.headers, *(admission.response_headers if admission else ())]
        length = None if response.status == 204 else len(response.body)
        headers = response_headers(
            response.content_type, extra, length=length, close=not keep_alive
        )
        if self._writer.can_respond:
            try:
                await self._writer.send_response(response.status, headers, response.body)
            except ClientGone:
                keep_alive = False
        if self._config.access_log:
            method, path = (head.method, head.path) if head else ("-", "-")
            request_id = admission.request_id if admission else "-"
            log_access(method, path, response.status, started, request_id, uid=self._peer_uid)
        if self._writer.broken:
            return _Next.ABORT
        return _Next.KEEP_ALIVE if keep_alive else _Next.CLOSE

    def _skip_buffered_body(self) -> bool:
        """Consume the rest of the request from h11's buffer without reading the
        socket; True when it ended there."""
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:
                return False
            if isinstance(event, h11.EndOfMessage):
                return True
            if not isinstance(event, h11.Data):
                return False

    @staticmethod
    def _now() -> float:
        return anyio.current_time()
