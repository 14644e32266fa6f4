"""`HTTPConnection`: the I/O loop of one HTTP/1.1 connection around its `HTTPCycle`.

The cycle decides everything about the protocol (what to read, early answers,
100-continue, keep-alive or close); this loop only does what it says: reads under
the timeout it names, writes what it framed, runs an `Exchange` task for each
dispatched request while reading ahead, and logs early answers. Invariants: only
this connection's own task reads the socket; a client that leaves cancels its
exchange; every read is bounded by the timeout of what it waits for (idle,
head, body), and a timeout is the cycle's to answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
from anyio.abc import ByteStream, TaskGroup

from transports.http.access_log import log_access
from transports.http.admission import RequestAdmission
from transports.http.config import HTTPConfig
from transports.http.cycle import (
    Close,
    Dispatch,
    HTTPCycle,
    ReadMore,
    Respond,
    SendBytes,
    Wait,
)
from transports.http.exchange import Exchange
from transports.http.writer import ClientGone, ResponseWriter, close_stream
from transports.service import RequestFactory, Service

logger = logging.getLogger("llmcore.http")

RECEIVE_SIZE = 64 * 1024
LINGER = 1.0  # seconds to drain a closing client so it can read our last response
_RECEIVE_ERRORS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class HTTPConnection:
    """Serves request cycles on one byte stream until it closes; `cancel()` ends it."""

    __slots__ = (
        "_config",
        "_cycle",
        "_deadlines",
        "_draining",
        "_factory",
        "_outcome",
        "_peer_uid",
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
        self._draining = draining
        self._peer_uid = peer_uid  # the Unix-socket peer's, for the access log
        self._cycle = HTTPCycle(config, admission, draining=draining)
        self._writer = ResponseWriter(stream, self._cycle, config.send_timeout)
        self._scope = anyio.CancelScope()
        self._deadlines: dict[Wait, float] = {}  # of the current cycle's waits
        self._outcome = Close(linger=False)
        self.idle = True  # no request in progress: shutdown may close it at once

    def cancel(self) -> None:
        self._scope.cancel()

    async def serve(self) -> None:
        """Serve request cycles until the connection should close (then `aclose()`)."""
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    self._outcome = await self._run(tg)
        finally:
            self.idle = False

    async def aclose(self) -> None:
        """Close the stream; after a response that asked to close, linger first (at
        most LINGER seconds; cancelling the caller cuts it short)."""
        await close_stream(self._stream, linger=LINGER if self._outcome.linger else 0.0)

    async def _run(self, tg: TaskGroup) -> Close:
        cycle = self._cycle
        action = cycle.next_action()
        while not isinstance(action, Close):
            if isinstance(action, ReadMore):
                if not await self._read(action.wait):
                    action = cycle.timed_out()
                    continue
            elif isinstance(action, SendBytes):
                await self._send(action.data)
            elif isinstance(action, Respond):
                await self._respond(action)
            elif isinstance(action, Dispatch):
                await self._dispatch(tg, action)
            action = cycle.next_action()
        return action

    # -- reading --------------------------------------------------------------------

    async def _read(self, wait: Wait) -> bool:
        """Read once into the cycle before `wait`'s deadline; False on timeout."""
        deadline = self._deadlines.get(wait)
        if deadline is None:
            deadline = self._deadlines[wait] = anyio.current_time() + self._timeout(wait)
        self.idle = wait is Wait.IDLE
        try:
            with anyio.CancelScope(deadline=deadline):
                self._cycle.receive_data(await self._receive())
                return True
            return False
        finally:
            self.idle = False

    def _timeout(self, wait: Wait) -> float:
        config = self._config
        if wait is Wait.IDLE:
            return config.keep_alive_timeout
        return config.header_timeout if wait is Wait.HEAD else config.body_timeout

    async def _receive(self) -> bytes:
        try:
            return await self._stream.receive(RECEIVE_SIZE)
        except (*_RECEIVE_ERRORS, OSError):
            return b""

    async def _read_ahead(self, exchange: Exchange) -> None:
        """While `exchange` runs: the end of the stream means the client left (cancel
        it); other bytes are a pipelined request, buffered up to the cycle's room."""
        while self._cycle.read_ahead_room:
            data = await self._receive()
            self._cycle.receive_data(data)
            if not data:
                exchange.cancel("client disconnected")
                return
        await anyio.sleep_forever()

    # -- writing --------------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        try:
            await self._writer.send_bytes(data)
        except ClientGone:
            pass  # the cycle was told (send_failed) and will close

    async def _respond(self, answer: Respond) -> None:
        """An early answer: written, logged, and the cycle ends."""
        started = time.monotonic()
        await self._send(answer.data)
        if self._config.access_log:
            head, admission = answer.head, answer.admission
            method, path = (head.method, head.path) if head else ("-", "-")
            request_id = admission.request_id if admission else "-"
            log_access(method, path, answer.status, started, request_id, uid=self._peer_uid)
        self._new_cycle()

    async def _dispatch(self, tg: TaskGroup, request: Dispatch) -> None:
        exchange = Exchange(
            request.head,
            request.admission,
            self._writer,
            started=time.monotonic(),
            closing=self._draining,
            access_log=self._config.access_log,
            peer_uid=self._peer_uid,
        )
        read_ahead = anyio.CancelScope()

        async def run_exchange() -> None:
            try:
                await exchange.run(self._service, self._factory, request.body)
            finally:
                read_ahead.cancel()

        tg.start_soon(run_exchange)
        with read_ahead:
            await self._read_ahead(exchange)
        await exchange.done.wait()
        self._cycle.response_done(completed=exchange.completed)
        self._new_cycle()

    def _new_cycle(self) -> None:
        self._writer.new_cycle()
        self._deadlines.clear()
