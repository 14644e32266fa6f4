"""`OutputQueues`: one asyncio queue per request in flight, the demultiplexer of an
engine's step outputs (`AsyncEngine`'s step loop, `ProcessEngine`'s reader task).

Invariants: a request id has at most one queue; `stream` and `result` take the
queue away on every way out (finished, failed, cancelled, closed early) and abort
the request unless its last output came; `fail_all` reaches every waiting request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

from llmcore.errors import InvalidRequestError
from llmcore.outputs import RequestOutput
from llmcore.pooling import PoolingOutput

Item = RequestOutput | PoolingOutput | BaseException


class OutputQueues:
    def __init__(self, abort: Callable[[str], None]) -> None:
        """`abort(request_id)` is called for a request left before its end."""
        self._queues: dict[str, asyncio.Queue[Item]] = {}
        self._abort = abort

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._queues

    def open(self, request_id: str) -> None:
        """Make the request's queue; InvalidRequestError if the id is in flight."""
        if request_id in self._queues:
            raise InvalidRequestError(f"request id {request_id!r} is already running")
        self._queues[request_id] = asyncio.Queue()

    def discard(self, request_id: str) -> None:
        """Forget a request whose outputs were never read."""
        self._queues.pop(request_id, None)

    def put(self, request_id: str, item: Item) -> None:
        """Deliver an output (or an error) to its request; ignored once it has left."""
        queue = self._queues.get(request_id)
        if queue is not None:
            queue.put_nowait(item)

    def fail_all(self, error: BaseException) -> None:
        for queue in self._queues.values():
            queue.put_nowait(error)

    async def stream(self, request_id: str) -> AsyncGenerator[RequestOutput, None]:
        """The request's outputs until the finished one (an error item is raised)."""
        queue = self._queues[request_id]
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, RequestOutput)
                finished = item.finished
                yield item
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                self._abort(request_id)

    async def result(self, request_id: str) -> PoolingOutput:
        """The request's one output (an encode request's)."""
        queue = self._queues[request_id]
        done = False
        try:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, PoolingOutput)
            done = True
            return item
        finally:
            self._queues.pop(request_id, None)
            if not done:
                self._abort(request_id)
