"""`Exchange`: one admitted request's trip through the service: call `handle`,
write the complete response or the SSE stream (each event written as soon as it is
ready), and log it.

Invariants: a stream's `chunks` iterator is always aclose()d when the exchange
ends, whether it finished, the client went away, or the exchange was cancelled,
so the engine request is aborted promptly; a client that goes away is logged as
such (at info level, in the access log), never as an internal error.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import cast

import anyio

from transports.http.access_log import log_access
from transports.http.admission import Admission, RequestHead
from transports.http.errors import EarlyResponse
from transports.http.framing import response_headers
from transports.http.writer import ClientGone, ResponseWriter
from transports.service import (
    RequestFactory,
    Service,
    ServiceAnswer,
    ServiceResponseLike,
    ServiceStreamLike,
    is_stream,
)

logger = logging.getLogger("llmcore.http")

ACLOSE_TIMEOUT = 5.0  # bound on a stream's aclose() (it should take one engine step)
_SSE_HEADERS = [("cache-control", "no-cache"), ("x-accel-buffering", "no")]


class Exchange:
    """Runs as a task of its connection; `cancel()` stops it, `done` is set when over."""

    __slots__ = (
        "_admission",
        "_closing",
        "_head",
        "_log",
        "_peer_uid",
        "_started",
        "_writer",
        "completed",
        "done",
        "interrupted",
        "scope",
    )

    def __init__(
        self,
        head: RequestHead,
        admission: Admission,
        writer: ResponseWriter,
        *,
        started: float,
        closing: Callable[[], bool],
        access_log: bool,
        peer_uid: int | None = None,
    ) -> None:
        self._head = head
        self._admission = admission
        self._writer = writer
        self._started = started
        self._closing = closing
        self._log = access_log
        self._peer_uid = peer_uid  # logged with the request (Unix sockets)
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.completed = False  # the whole response was written
        self.interrupted: str | None = None

    def cancel(self, reason: str) -> None:
        if self.interrupted is None:
            self.interrupted = reason
        self.scope.cancel()

    async def run(self, service: Service, request_factory: RequestFactory, body: bytes) -> None:
        try:
            with self.scope:
                answer = await self._call(service, request_factory, body)
                if is_stream(answer):
                    await self._write_stream(cast(ServiceStreamLike, answer))
                else:
                    await self._write_response(cast(ServiceResponseLike, answer))
                self.completed = True
        except ClientGone:
            self.interrupted = self.interrupted or "client gone"
        except Exception:
            logger.exception("request %s failed while responding", self._admission.request_id)
            self.interrupted = "internal error"
            await self._fail()
        finally:
            if not self.completed and self.interrupted is None:
                self.interrupted = "cancelled"  # by shutdown
            self.done.set()
            if self._log:
                self._log_access()

    async def _fail(self) -> None:
        """After an unexpected error: a 500 if nothing was sent yet (then close),
        else mark the writer broken so the half-written response is cut off."""
        if self._writer.status is None and self._writer.can_respond:
            body = EarlyResponse.error(500, "Internal error.").body
            extra = self._admission.response_headers
            headers = response_headers("application/json", extra, length=len(body), close=True)
            try:
                await self._writer.send_response(500, headers, body)
                self.completed = True
                return
            except ClientGone:
                pass
        self._writer.broken = True

    async def _call(
        self, service: Service, request_factory: RequestFactory, body: bytes
    ) -> ServiceAnswer:
        head, request_id = self._head, self._admission.request_id
        try:
            request = request_factory(head.method, head.path, head.headers, body, request_id)
            return await service.handle(request)
        except Exception:  # the contract says never; answer 500 rather than drop it
            logger.exception("service failed on request %s", request_id)
            return EarlyResponse.error(500, "Internal error.")

    async def _write_response(self, answer: ServiceResponseLike) -> None:
        status, body = answer.status, bytes(answer.body)
        if status in (204, 304):  # no body by definition
            body = b""
        headers = response_headers(
            answer.content_type,
            [*(answer.headers or ()), *self._admission.response_headers],
            length=None if status in (204, 304) else len(body),
            close=self._closing(),
        )
        await self._writer.send_response(status, headers, body)

    async def _write_stream(self, answer: ServiceStreamLike) -> None:
        chunks = answer.chunks
        try:
            own = getattr(answer, "headers", None) or ()
            extra = [*_SSE_HEADERS, *own, *self._admission.response_headers]
            headers = response_headers(
                answer.content_type, extra, length=None, close=self._closing()
            )
            await self._writer.send_stream(answer.status, headers, chunks)
        finally:
            await _aclose(chunks)

    def _log_access(self) -> None:
        head = self._head
        log_access(
            head.method,
            head.path,
            self._writer.status,
            self._started,
            self._admission.request_id,
            interrupted=self.interrupted,
            uid=self._peer_uid,
        )


async def _aclose(chunks: AsyncIterator[bytes]) -> None:
    """aclose() the stream's iterator even under cancellation, within a bound."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is None:
        return
    with anyio.move_on_after(ACLOSE_TIMEOUT, shield=True):
        try:
            await aclose()
        except Exception:
            logger.exception("closing a response stream failed")
