"""Async iterators that own what they iterate, and server-sent events.

Invariants: closing any stream built here (`aclose()`) closes everything beneath
it, down to the engine's own iterator (whose `finally` aborts the request), even
when the stream was never iterated; an SSE stream is a sequence of complete
`data: ...\\n\\n` events ending with `data: [DONE]`, and an error after its start
becomes one `data: {"error": ...}` event before `[DONE]`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, Protocol, TypeVar

import msgspec

from llmcore.openai.errors import error_body

T = TypeVar("T")
_ENCODER = msgspec.json.Encoder()
DONE = b"data: [DONE]\n\n"


class _Closable(Protocol):
    async def aclose(self) -> None: ...


class PrimedStream(AsyncIterator[T]):
    """`first` (already fetched from `rest`), then the rest of `rest`."""

    __slots__ = ("_first", "_has_first", "_rest")

    def __init__(self, first: T, rest: AsyncGenerator[T, None]) -> None:
        self._first: T | None = first
        self._has_first = True
        self._rest = rest

    def __aiter__(self) -> PrimedStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._has_first:
            first, self._first, self._has_first = self._first, None, False
            return first  # type: ignore[return-value]
        return await self._rest.__anext__()

    async def aclose(self) -> None:
        self._has_first, self._first = False, None
        await self._rest.aclose()


async def prime(source: AsyncGenerator[T, None]) -> PrimedStream[T]:
    """Start `source` and fetch its first item, so that errors raised before the first
    output (validation, a dead engine, an overloaded queue) leave from here, before
    a stream is answered. An empty source is an internal error."""
    try:
        first = await source.__anext__()
    except StopAsyncIteration:
        raise RuntimeError("the engine produced no output") from None
    except BaseException:
        await source.aclose()
        raise
    return PrimedStream(first, source)


class ClosingStream(AsyncIterator[T]):
    """The items of `gen`; `aclose()` closes `gen` and then `source` (what `gen`
    reads), so the source is released even if `gen` never started."""

    __slots__ = ("_gen", "_source")

    def __init__(self, gen: AsyncGenerator[T, None], source: _Closable) -> None:
        self._gen = gen
        self._source = source

    def __aiter__(self) -> ClosingStream[T]:
        return self

    async def __anext__(self) -> T:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()
        finally:
            await self._source.aclose()


def sse_event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


async def _sse_events(chunks: ClosingStream[Any]) -> AsyncGenerator[bytes, None]:
    async with aclosing(chunks) as items:
        try:
            async for chunk in items:
                yield sse_event(_ENCODER.encode(chunk))
        except Exception as exc:  # after the stream started: an error event, then [DONE]
            yield sse_event(error_body(exc)[1])
    yield DONE


def sse_stream(chunks: ClosingStream[Any]) -> ClosingStream[bytes]:
    """`chunks` (Structs) as SSE events; closing the result closes `chunks`."""
    return ClosingStream(_sse_events(chunks), chunks)
