"""The server: listening, the accept loops, the connection limit, the Unix-socket
peer check, TLS handshakes, and graceful shutdown. Invariants: at most
max_connections connections are served at once (one more is answered 503 with
Retry-After and closed); a Unix-socket peer whose uid is not allowed is answered 403
and closed without its request being read, and uses no connection slot; once
shutdown starts nothing new is accepted, idle connections close at once, in-flight
requests get the grace period, and then everything left is cancelled (closing
its streams) before shutdown returns.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import ssl
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType

import anyio
import h11
from anyio.abc import ByteStream, SocketListener, TaskGroup, TaskStatus

from transports.http.admission import RequestAdmission
from transports.http.config import HTTPConfig
from transports.http.connection import HTTPConnection
from transports.http.errors import error_json
from transports.http.framing import complete_response, response_headers
from transports.http.listeners import Listeners, open_listeners
from transports.http.peers import PeerCredentials, PeerVerdict, check_peer
from transports.http.tls import server_ssl_context, tls_handshake
from transports.http.writer import close_stream
from transports.service import RequestFactory, Service, TransportRequest

logger = logging.getLogger("llmcore.http")

ACCEPT_RETRY_DELAY = 0.1  # after an accept error such as EMFILE
REJECT_DEADLINE = 2.0  # whole life of a connection refused at the limit
REJECT_LINGER = 0.5
MAX_REJECTING = 64  # beyond this many refusals in progress, close without a word


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    connections: int  # open, TLS handshakes included
    idle_connections: int
    rejected_connections: int  # refused at the connection limit since start
    draining: bool
    forbidden_connections: int = 0  # Unix-socket peers refused by uds_allowed_uids


class HTTPServer:
    """The h11 HTTP/1.1 server. `await server.start(task_group)` listens and serves in
    that group until `await server.shutdown(grace_period)`; or `async with server:`."""

    def __init__(
        self,
        service: Service,
        config: HTTPConfig | None = None,
        *,
        request_factory: RequestFactory = TransportRequest,
        listeners: Listeners | None = None,
    ) -> None:
        """`listeners`: sockets already bound by `open_listeners(config)` (bind first,
        then load the model, so a taken address fails fast); by default `start` binds."""
        self._service = service
        self._bound = listeners
        self._config = config or HTTPConfig()
        self._factory = request_factory
        self._admission = RequestAdmission(self._config)
        self._ssl_context: ssl.SSLContext | None = server_ssl_context(self._config)
        self._listeners: Listeners | None = None
        self._tg: TaskGroup | None = None
        self._accept_scope = anyio.CancelScope()
        self._connections: set[HTTPConnection] = set()
        self._open = 0
        self._rejecting = 0
        self._rejected = 0
        self._forbidden = 0
        self._draining = False
        self._drained = anyio.Event()
        self._stopped = anyio.Event()
        self._exit_stack: AsyncExitStack | None = None

    # -- public -----------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """Where clients reach the server (empty before start)."""
        return list(self._listeners.urls) if self._listeners else []

    @property
    def port(self) -> int | None:
        """The bound TCP port (the real one when the config asked for port 0)."""
        return self._listeners.port if self._listeners else None

    @property
    def draining(self) -> bool:
        return self._draining

    def statistics(self) -> ServerStatistics:
        idle = sum(1 for conn in self._connections if conn.idle)
        return ServerStatistics(self._open, idle, self._rejected, self._draining, self._forbidden)

    async def start(self, task_group: TaskGroup) -> list[str]:
        """Bind and start serving in `task_group`; returns the URLs once listening."""
        if self._listeners is not None:
            raise RuntimeError("HTTPServer.start() was already called")
        urls: list[str] = await task_group.start(self._run)
        return urls

    async def shutdown(self, grace_period: float = 0.0) -> None:
        """Stop accepting, close idle connections, give in-flight requests
        `grace_period` seconds, cancel the rest, and return when all are closed."""
        if self._tg is None:
            return
        if not self._draining:
            self._draining = True
            self._accept_scope.cancel()
            for conn in list(self._connections):
                if conn.idle:
                    conn.cancel()
            self._note_drained()
            try:
                with anyio.move_on_after(grace_period):
                    await self._drained.wait()
            finally:
                self._tg.cancel_scope.cancel()
        await self._stopped.wait()

    async def __aenter__(self) -> HTTPServer:
        stack = AsyncExitStack()
        task_group = await stack.enter_async_context(anyio.create_task_group())
        try:
            await self.start(task_group)
        except BaseException:
            await stack.aclose()
            raise
        self._exit_stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        await self.shutdown(0.0)
        assert self._exit_stack is not None
        return await self._exit_stack.__aexit__(exc_type, exc, traceback)

    # -- serving ----------------------------------------------------------------------

    async def _run(self, *, task_status: TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED) -> None:
        listeners = self._bound or await open_listeners(self._config)
        self._listeners, self._bound = listeners, None
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._accept_all, listeners)
                task_status.started(listeners.urls)
        finally:
            await listeners.aclose()
            self._stopped.set()

    async def _accept_all(self, listeners: Listeners) -> None:
        try:
            with self._accept_scope:
                async with anyio.create_task_group() as tg:
                    for listener in listeners.sockets:
                        tg.start_soon(self._accept_loop, listener)
        finally:
            await listeners.aclose()  # from now on connecting is refused

    async def _accept_loop(self, listener: SocketListener) -> None:
        assert self._tg is not None
        limit = self._config.max_connections
        while True:
            try:
                stream = await listener.accept()
            except anyio.ClosedResourceError:
                return
            except OSError as exc:  # e.g. out of file descriptors: wait, don't die
                logger.warning("accepting a connection failed: %s", exc)
                await anyio.sleep(ACCEPT_RETRY_DELAY)
                continue
            verdict = check_peer(stream, self._config.uds_allowed_uids)
            if verdict.refusal is not None:
                self._tg.start_soon(self._forbid, stream, verdict)
            elif limit is not None and self._open >= limit:
                self._tg.start_soon(self._reject, stream)
            else:
                self._open += 1
                self._tg.start_soon(self._serve_connection, stream, verdict.peer)

    async def _serve_connection(self, raw: ByteStream, peer: PeerCredentials | None) -> None:
        if peer is not None:
            logger.debug("uds connection from %s", peer)
        try:
            stream = await self._secure(raw)
            if stream is not None:
                await self._run_connection(stream, None if peer is None else peer.uid)
        except Exception:  # one connection's failure must not stop the server
            logger.exception("connection failed")
        finally:
            self._open -= 1

    async def _run_connection(self, stream: ByteStream, peer_uid: int | None) -> None:
        conn = HTTPConnection(
            stream,
            config=self._config,
            service=self._service,
            request_factory=self._factory,
            admission=self._admission,
            draining=lambda: self._draining,
            peer_uid=peer_uid,
        )
        self._connections.add(conn)
        try:
            await conn.serve()
        finally:
            self._connections.discard(conn)  # lingering while closing is not in flight
            self._note_drained()
            await conn.aclose()

    async def _secure(self, raw: ByteStream) -> ByteStream | None:
        if self._ssl_context is None:
            return raw
        return await tls_handshake(raw, self._ssl_context, self._config.tls_handshake_timeout)

    def _note_drained(self) -> None:
        if self._draining and not self._connections:
            self._drained.set()

    # -- refusals: the connection limit and the uid allow-list ---------------------------

    async def _reject(self, raw: ByteStream) -> None:
        """At the connection limit: 503 with Retry-After."""
        self._rejected += 1
        await self._refuse(raw, _service_unavailable(self._config.retry_after))
        logger.debug("refused a connection: %d open", self._open)

    async def _forbid(self, raw: ByteStream, verdict: PeerVerdict) -> None:
        """A Unix-socket peer not on the uid allow-list: 403."""
        assert verdict.refusal is not None
        self._forbidden += 1
        who = verdict.peer or "an unknown peer"
        logger.warning("refused uds connection from %s: %s", who, verdict.refusal)
        await self._refuse(raw, _early_response(403, verdict.refusal))

    async def _refuse(self, raw: ByteStream, response: bytes) -> None:
        """Send `response` and close, without reading the request."""
        if self._rejecting >= MAX_REJECTING:
            await anyio.aclose_forcefully(raw)
            return
        self._rejecting += 1
        try:
            with anyio.move_on_after(REJECT_DEADLINE):
                stream = await self._secure(raw)
                if stream is not None:
                    await stream.send(response)
                    await close_stream(stream, linger=REJECT_LINGER)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            self._rejecting -= 1
            await anyio.aclose_forcefully(raw)


def _service_unavailable(retry_after: int) -> bytes:
    message = "The server is at its connection limit; retry later."
    return _early_response(503, message, [("retry-after", str(retry_after))])


def _early_response(status: int, message: str, extra: Sequence[tuple[str, str]] = ()) -> bytes:
    """The bytes of a complete error response that closes the connection."""
    body = error_json(status, message)
    headers = response_headers("application/json", extra, length=len(body), close=True)
    conn = h11.Connection(h11.SERVER)
    return b"".join(conn.send(event) or b"" for event in complete_response(status, headers, body))


async def serve(
    service: Service,
    config: HTTPConfig,
    *,
    ready: Callable[[list[str]], None] | None = None,
    request_factory: RequestFactory = TransportRequest,
) -> None:
    """Serve until cancelled, calling `ready(urls)` once listening."""
    server = HTTPServer(service, config, request_factory=request_factory)
    async with anyio.create_task_group() as tg:
        urls = await server.start(tg)
        if ready is not None:
            ready(urls)


def run(
    service: Service,
    config: HTTPConfig,
    *,
    ready: Callable[[list[str]], None] | None = None,
    request_factory: RequestFactory = TransportRequest,
) -> None:
    """Run `serve` in a new event loop (uvloop when installed) until cancelled."""
    anyio.run(
        functools.partial(serve, service, config, ready=ready, request_factory=request_factory),
        backend="asyncio",
        backend_options={"use_uvloop": importlib.util.find_spec("uvloop") is not None},
    )
