"""`HTTPCycle`: the request cycles of one HTTP/1.1 connection, sans-IO.

Bytes go in (`receive_data`, b"" for end of stream); what the connection's loop
must do next comes out (`next_action`): read more (and under which timeout), send
bytes (100 Continue), answer early (a framed response decided here: a malformed,
refused, oversized, smuggling-shaped or timed-out request), dispatch a complete
request to the service, or close (lingering or not). The response to a dispatched
request is framed here too (`frame`), and `response_done` ends the cycle, after
which `next_action` decides keep-alive. No socket, no clock, no task: the loop
owns those (`transports/http/connection.py`), and this object can be driven by a
test byte by byte.

Invariants: h11 sees one request at a time (pipelined bytes wait in its buffer
until the next cycle); a request whose head is refused never reaches the service
and its body is never read past what is already buffered; a connection is kept
alive only when both sides of h11 are DONE, the client did not ask to close, the
server is not draining, and nothing about the request makes its framing doubtful
(a message with both Content-Length and Transfer-Encoding always closes, RFC 9112
§6.1); after a failed write or the client's end of stream, the connection closes
without lingering.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import h11

from transports.http.admission import Admission, RequestAdmission, RequestHead
from transports.http.config import HTTPConfig
from transports.http.errors import EarlyResponse, body_too_large
from transports.http.framing import complete_response, response_headers

READ_AHEAD_LIMIT = 64 * 1024  # bytes buffered for the next cycle while a response runs
_SUPPORTED_VERSIONS = (b"1.0", b"1.1")


class Wait(enum.Enum):
    """What a read waits for, and so which timeout applies to it."""

    IDLE = "idle"  # the next request's first byte (keep-alive timeout)
    HEAD = "head"  # the rest of a request head (header timeout)
    BODY = "body"  # the rest of a request body (body timeout)


@dataclass(frozen=True, slots=True)
class ReadMore:
    """Read from the peer and `receive_data` what comes (b"" at its end)."""

    wait: Wait


@dataclass(frozen=True, slots=True)
class SendBytes:
    """Write `data` (an interim response), then ask for the next action."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Respond:
    """Write `data`, a complete early answer with `status`, then ask again.
    `head` and `admission` are None when no request head could be read."""

    data: bytes
    status: int
    head: RequestHead | None
    admission: Admission | None


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A complete request for the service; answer it through `frame`, then call
    `response_done`. Meanwhile the loop may read ahead (`read_ahead_room`)."""

    head: RequestHead
    admission: Admission
    body: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection; `linger`: let the client read our last response first."""

    linger: bool


Action = ReadMore | SendBytes | Respond | Dispatch | Close


class _Phase(enum.Enum):
    HEAD = enum.auto()  # reading a request head
    BODY = enum.auto()  # reading the body of an admitted request
    SERVICE = enum.auto()  # the service is answering (after Dispatch)
    ANSWERED = enum.auto()  # an early answer or the service's response was written
    CLOSED = enum.auto()


class HTTPCycle:
    """One connection's request cycles over an `h11.Connection` (server side)."""

    __slots__ = (
        "_admission",
        "_body",
        "_body_size",
        "_close",
        "_config",
        "_continue_sent",
        "_draining",
        "_eof",
        "_h11",
        "_head",
        "_keep_alive",
        "_phase",
        "_read_ahead",
        "_request",
        "_write_failed",
    )

    def __init__(
        self,
        config: HTTPConfig,
        admission: RequestAdmission,
        *,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        """`draining()` says whether the server is shutting down (then no new
        request is read and no connection is kept alive)."""
        self._config = config
        self._admission = admission
        self._draining = draining
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_size)
        self._phase = _Phase.HEAD
        self._eof = False
        self._write_failed = False
        self._close: Close | None = None
        self._new_cycle()

    def _new_cycle(self) -> None:
        self._head: RequestHead | None = None
        self._request: Admission | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._continue_sent = False
        self._keep_alive = False  # decided when the answer is framed
        self._read_ahead = 0

    # -- bytes in ------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; b"" means it ended its side (or the read failed)."""
        if not data:
            self._eof = True
        elif self._phase is _Phase.SERVICE:
            self._read_ahead += len(data)
        self._h11.receive_data(data)

    @property
    def client_gone(self) -> bool:
        """The peer's stream ended: nobody is left to answer."""
        return self._eof

    @property
    def read_ahead_room(self) -> int:
        """While the service answers: how many more bytes of the next request may be
        buffered (a pipelining client waits beyond that)."""
        return max(0, READ_AHEAD_LIMIT - self._read_ahead)

    # -- what to do next ------------------------------------------------------------------

    def next_action(self) -> Action:
        """The next thing the loop must do. Not to be called between `Dispatch` and
        `response_done`."""
        if self._phase is _Phase.SERVICE:
            raise RuntimeError("next_action() while the service answers a request")
        if self._phase is _Phase.ANSWERED:
            self._end_cycle()
        if self._close is not None:
            self._phase = _Phase.CLOSED
            return self._close
        if self._phase is _Phase.HEAD:
            return self._read_head()
        return self._read_body()

    def timed_out(self) -> Action:
        """The wait named by the last `ReadMore` ran out: a request cut off mid-way
        gets 408 (then the connection closes); an idle one closes quietly."""
        if self._phase is _Phase.BODY or (self._phase is _Phase.HEAD and self._started):
            return self._answer(EarlyResponse.error(408, "Request timed out.", close=True))
        return self._closing(linger=False)

    def _end_cycle(self) -> None:
        """After an answer was written: start the next cycle or decide to close."""
        if self._write_failed or self._eof:
            self._close = Close(linger=False)
        elif self._close is None and not (
            self._keep_alive and self._both_done() and not self._draining()
        ):
            self._close = Close(linger=True)
        if self._close is None:
            self._h11.start_next_cycle()
            self._phase = _Phase.HEAD
            self._new_cycle()

    def _closing(self, *, linger: bool) -> Close:
        self._close = Close(linger)
        self._phase = _Phase.CLOSED
        return self._close

    @property
    def _started(self) -> bool:
        """Part of the next request head is buffered."""
        return bool(self._h11.trailing_data[0])

    # -- reading a request ------------------------------------------------------------------

    def _read_head(self) -> Action:
        while True:
            event = self._next_event()
            if isinstance(event, EarlyResponse):
                return self._answer(event)
            if isinstance(event, h11.Request):
                return self._on_head(event)
            if event is h11.NEED_DATA and not self._eof:
                if not self._started and self._draining():
                    return self._closing(linger=False)
                return ReadMore(Wait.HEAD if self._started else Wait.IDLE)
            return self._closing(linger=False)  # the client left between requests

    def _on_head(self, event: h11.Request) -> Action:
        head = RequestHead.from_h11(event, self._config.root_path)
        self._head = head
        self._request = admission = self._admission.admit(head)
        refusal = _framing_refusal(event) or admission.refusal
        if refusal is not None:
            return self._answer(refusal)
        self._phase = _Phase.BODY
        return self._read_body()

    def _read_body(self) -> Action:
        while True:
            event = self._next_event()
            if isinstance(event, EarlyResponse):
                return self._answer(event)
            if isinstance(event, h11.Data):
                self._body_size += len(event.data)
                if self._body_size > self._config.max_body_size:
                    path = self._head.path if self._head is not None else None
                    return self._answer(body_too_large(self._config.max_body_size, path))
                self._body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return self._dispatch()
            elif event is h11.NEED_DATA and not self._eof:
                if self._h11.they_are_waiting_for_100_continue and not self._continue_sent:
                    self._continue_sent = True
                    interim = h11.InformationalResponse(
                        status_code=100, headers=[], reason=b"Continue"
                    )
                    return SendBytes(self.frame(interim))
                return ReadMore(Wait.BODY)
            else:
                return self._closing(linger=False)  # the client left mid-request

    def _dispatch(self) -> Dispatch:
        assert self._head is not None and self._request is not None
        self._phase = _Phase.SERVICE
        body, self._body = b"".join(self._body), []
        return Dispatch(self._head, self._request, body)

    def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED] | EarlyResponse:
        """h11's next event, or the answer to a request it cannot parse."""
        try:
            return self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            if self._eof:  # the client left mid-request: nobody to answer
                return h11.ConnectionClosed()
            status = exc.error_status_hint
            message = "Request headers too large." if status == 431 else f"Bad request: {exc}"
            return EarlyResponse.error(status, message, close=True)

    # -- answers ----------------------------------------------------------------------------

    def _answer(self, response: EarlyResponse) -> Action:
        """Frame an early answer. The connection stays open only if the answer allows
        it and the request's body is already complete in the buffer (the rest of it is
        never read) and h11 agrees both sides are done."""
        keep_alive = (
            not response.close
            and self._head is not None
            and self._skip_buffered_body()
            and self._h11.their_state is h11.DONE
            and not self._draining()
        )
        extra = [*response.headers, *(self._request.response_headers if self._request else ())]
        length = None if response.status == 204 else len(response.body)
        headers = response_headers(
            response.content_type, extra, length=length, close=not keep_alive
        )
        data = b""
        if self.can_respond:
            data = self.frame(*complete_response(response.status, headers, response.body))
        self._keep_alive = keep_alive
        if not keep_alive:
            self._close = Close(linger=True)
        self._phase = _Phase.ANSWERED
        return Respond(data, response.status, self._head, self._request)

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

    # -- the response side ----------------------------------------------------------------

    @property
    def can_respond(self) -> bool:
        """Whether a response may still start in this cycle."""
        return not self._write_failed and self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    def frame(self, *events: h11.Event) -> bytes:
        """The bytes of our `events` (h11 checks they are legal in this state)."""
        return b"".join(self._h11.send(event) or b"" for event in events)

    def send_failed(self) -> None:
        """A write did not reach the client: nothing more is sent; the cycle aborts."""
        self._write_failed = True
        self._h11.send_failed()

    def response_done(self, *, completed: bool) -> None:
        """The service's answer to the dispatched request ended; `completed`: it was
        written whole. The next `next_action` keeps the connection or closes it."""
        if self._phase is not _Phase.SERVICE:
            raise RuntimeError("response_done() without a dispatched request")
        self._keep_alive = completed
        if not completed:
            self._close = Close(linger=False)
        self._phase = _Phase.ANSWERED

    def _both_done(self) -> bool:
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE


def _framing_refusal(request: h11.Request) -> EarlyResponse | None:
    """A request whose version we do not speak (505), or whose length is framed two
    ways (400: a proxy in front may have read it the other way, so a request hidden
    in its body must never be answered; RFC 9112 §6.1)."""
    if request.http_version not in _SUPPORTED_VERSIONS:
        version = request.http_version.decode("ascii", "replace")
        if not version.startswith("1."):
            return EarlyResponse.error(
                505, f"HTTP version {version} is not supported: use HTTP/1.1.", close=True
            )
    names = {name for name, _ in request.headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        return EarlyResponse.error(
            400, "Bad request: both Content-Length and Transfer-Encoding are set.", close=True
        )
    return None
