"""What every transport knows of the OpenAI service: structural types only.

The real classes live in llmcore (`OpenAIService`, `ServiceRequest`,
`ServiceResponse`, `ServiceStream`) and are never imported here, so a transport
can be tested against a fake service and llmcore can change its internals freely.
Invariant: a transport reads a service's answer by attribute only (`status`,
`body`, `content_type`, `headers`, and `chunks` for a stream), and the request it
hands over is whatever its request factory builds (`TransportRequest` by default,
which has `ServiceRequest`'s attribute names).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class ServiceResponseLike(Protocol):
    """A complete response (the shape of llmcore's ServiceResponse)."""

    @property
    def status(self) -> int: ...
    @property
    def body(self) -> bytes: ...
    @property
    def content_type(self) -> str: ...
    @property
    def headers(self) -> Sequence[tuple[str, str]]: ...


class ServiceStreamLike(Protocol):
    """A streamed (SSE) response: each chunk is one complete event; `chunks.aclose()`
    aborts the engine request (the shape of llmcore's ServiceStream)."""

    @property
    def chunks(self) -> AsyncIterator[bytes]: ...
    @property
    def status(self) -> int: ...
    @property
    def content_type(self) -> str: ...


ServiceAnswer = ServiceResponseLike | ServiceStreamLike


class Service(Protocol):
    """What a transport calls: `handle` never raises (errors come back as responses)."""

    async def handle(self, request: Any) -> ServiceAnswer: ...


RequestFactory = Callable[[str, str, list[tuple[str, str]], bytes, str], Any]
"""(method, path, headers, body, request_id) -> the object passed to `Service.handle`."""


@dataclass(slots=True)
class TransportRequest:
    """The default request object: the attribute names of llmcore's ServiceRequest."""

    method: str
    path: str  # without the query string
    headers: list[tuple[str, str]]  # lower-case names
    body: bytes
    request_id: str


def is_stream(answer: object) -> bool:
    """Whether the service answered with a stream (it has `chunks`)."""
    return hasattr(answer, "chunks")


async def close_unread(answer: object) -> None:
    """Close a stream answer's chunks unread (that aborts its engine request)."""
    aclose = getattr(getattr(answer, "chunks", None), "aclose", None)
    if aclose is not None:
        await aclose()
