# Owns the batch transport's view of the OpenAI service: structural types only (the
# real classes live in llmcore and are never imported here). Invariant: the runner
# reads an answer by attribute (`status`, `body`, `content_type`, and `chunks` for a
# stream, which it closes unread), so any object of the right shape works, and the
# request it hands over is whatever the request factory builds.

from __future__ import annotations

from collections.abc import Callable, Sequence
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


class Service(Protocol):
    """What the runner calls: `handle` never raises (errors come back as responses).
    It may answer with a stream (an object with `chunks`) only if asked to stream,
    which the runner never does."""

    async def handle(self, request: Any) -> Any: ...


RequestFactory = Callable[[str, str, list[tuple[str, str]], bytes, str], Any]
"""(method, path, headers, body, request_id) -> the object passed to `Service.handle`."""

JSON_HEADERS: list[tuple[str, str]] = [("content-type", "application/json")]


@dataclass(slots=True)
class BatchRequest:
    """The default request object: the attribute names of llmcore's ServiceRequest."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    request_id: str


def is_stream(answer: object) -> bool:
    """Whether the service answered with a stream (it has `chunks`)."""
    return hasattr(answer, "chunks")


async def close_stream(answer: object) -> None:
    """Close a stream answer's chunks unread (that aborts its engine request)."""
    aclose = getattr(getattr(answer, "chunks", None), "aclose", None)
    if aclose is not None:
        await aclose()
