"""`OpenAIASGIApp`: a minimal ASGI application over llmcore's OpenAI service, the
ingress of the Ray Serve deployment (`llmcore.ray.serve`). It imports no web
framework and no Ray: it reads the request (method, path below the ASGI
`root_path`, lower-case headers, the whole body), builds a `ServiceRequest`, awaits
`service.handle`, and sends the `ServiceResponse` or the `ServiceStream` (each SSE
event sent as soon as it comes).

Invariants: a body over `max_body_size` is answered 413 (in the error shape of the
path's API) without reading the rest of it, and never reaches the service; a
stream's `aclose()` is always called when the exchange ends (finished, the client
gone: `http.disconnect` from `receive` or a failing `send`, or the task cancelled,
which is how Serve's proxy reports a client that went away), so the engine
request behind it is aborted promptly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from llmcore.errors import PayloadTooLargeError
from llmcore.openai.interface import ServiceRequest, ServiceResponse, ServiceStream
from llmcore.openai.request_ids import transport_request_id
from llmcore.openai.service import error_response

log = logging.getLogger("llmcore.ray")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ACLOSE_TIMEOUT = 5.0  # bound on a stream's aclose() (it should take one engine step)
_SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class Service(Protocol):
    """What the adapter calls (`OpenAIService`, or a fake in tests)."""

    async def handle(self, request: ServiceRequest) -> ServiceResponse | ServiceStream: ...


class ClientGone(Exception):
    """The client went away (`http.disconnect`, or `send` failed)."""


class OpenAIASGIApp:
    """The ASGI callable: `await app(scope, receive, send)`."""

    __slots__ = ("max_body_size", "service")

    def __init__(self, service: Service, *, max_body_size: int) -> None:
        self.service = service
        self.max_body_size = max_body_size  # bytes; 413 past it (`--max-body-size`)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "http":
            try:
                await self._http(scope, receive, send)
            except ClientGone:
                log.info("client went away: %s %s", scope.get("method"), scope.get("path"))
        else:  # websocket: not served (the OpenAI API has no websocket route here)
            await send({"type": "websocket.close", "code": 1003})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        path = request_path(scope)
        body = await self._read_body(headers, receive)
        if body is None:
            limit = self.max_body_size
            too_large = PayloadTooLargeError(f"request body too large: the limit is {limit} bytes")
            await send_response(error_response(too_large, path), send)
            return
        request_id = transport_request_id(_header(headers, "x-request-id"))
        request = ServiceRequest(scope["method"], path, headers, body, request_id)
        answer = await self.service.handle(request)
        if isinstance(answer, ServiceStream):
            await send_stream(answer, receive, send)
        else:
            await send_response(answer, send)

    async def _read_body(self, headers: list[tuple[str, str]], receive: Receive) -> bytes | None:
        """The whole body, or None past `max_body_size` (the rest is left unread)."""
        declared = _header(headers, "content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_size:
            return None
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            part = message.get("body", b"")
            size += len(part)
            if size > self.max_body_size:
                return None
            parts.append(part)
            if not message.get("more_body", False):
                return b"".join(parts)


def request_path(scope: Scope) -> str:
    """The path the service routes: below the ASGI `root_path` (Serve's route prefix)
    when the path carries it ("/llm/v1/models" under "/llm" is "/v1/models")."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :] or "/"
    return path


async def send_response(answer: ServiceResponse, send: Send) -> None:
    body = b"" if answer.status in (204, 304) else bytes(answer.body)
    headers = [(b"content-type", answer.content_type.encode("latin-1"))]
    if answer.status not in (204, 304):
        headers.append((b"content-length", str(len(body)).encode("latin-1")))
    headers += _encoded(answer.headers)
    await _send(send, {"type": "http.response.start", "status": answer.status, "headers": headers})
    await _send(send, _body(body, more=False))


async def send_stream(answer: ServiceStream, receive: Receive, send: Send) -> None:
    """Send each event as it comes, while watching `receive` for the client going
    away; aclose() the stream in every case (that aborts its engine request)."""
    try:
        headers = [
            (b"content-type", answer.content_type.encode("latin-1")),
            *_SSE_HEADERS,
            *_encoded(answer.headers),
        ]
        start = {"type": "http.response.start", "status": answer.status, "headers": headers}
        await _send(send, start)
        try:
            async with asyncio.TaskGroup() as tasks:
                watcher = tasks.create_task(_until_disconnect(receive))
                async for chunk in answer.chunks:
                    await _send(send, _body(chunk, more=True))
                await _send(send, _body(b"", more=False))
                watcher.cancel()
        except* ClientGone:
            raise ClientGone from None
    finally:
        await _aclose(answer)


def _body(body: bytes, *, more: bool) -> Message:
    return {"type": "http.response.body", "body": body, "more_body": more}


async def _until_disconnect(receive: Receive) -> None:
    """Raise ClientGone when `receive` says the client went away (after the body,
    ASGI's `receive` answers nothing else)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    raise ClientGone


async def _send(send: Send, message: Message) -> None:
    try:
        await send(message)
    except OSError as exc:  # uvicorn's ClientDisconnected is one
        raise ClientGone from exc


async def _aclose(answer: ServiceStream) -> None:
    """aclose() the stream even when this task is being cancelled, within a bound."""
    try:
        async with asyncio.timeout(ACLOSE_TIMEOUT):
            await asyncio.shield(answer.aclose())
    except TimeoutError:
        log.warning("closing a response stream took over %.0f s", ACLOSE_TIMEOUT)
    except Exception:
        log.exception("closing a response stream failed")


async def _lifespan(receive: Receive, send: Send) -> None:
    """ASGI lifespan: nothing to start or stop (the deployment owns the engines)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((value for key, value in headers if key == name), None)


def _encoded(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
