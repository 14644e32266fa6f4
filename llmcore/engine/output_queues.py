"""`OutputQueues`: one asyncio queue per request in flight, the demultiplexer of an
engine's step outputs (`AsyncEngine`'s step loop, `ProcessEngine`'s reader task).

A request runs in the core under an engine id, the caller's id made unique
("id#n"): an aborted request's late outputs (its "abort" delta comes a step later)
then never reach a new request that reuses its id at once.

Invariants: a caller id has at most one queue; outputs handed out carry the
caller's id, and together every token in the order the engine gave them; `stream`
and `result` take the queue away on every way out (finished, failed, cancelled,
closed early) and abort the request (by engine id) unless its last output came;
`fail_all` reaches every waiting request.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from llmcore.errors import InvalidRequestError
from llmcore.outputs import RequestOutput, extend_output
from llmcore.pooling import PoolingOutput

Item = RequestOutput | PoolingOutput | BaseException


@dataclass(slots=True, eq=False)
class _Waiting:
    request_id: str  # the caller's
    engine_id: str
    queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)


class OutputQueues:
    def __init__(
        self, abort: Callable[[str], None], stream_interval: int = 1, tag: str = ""
    ) -> None:
        """`abort(engine_id)` is called for a request left before its end;
        `stream_interval`: a stream's deltas after its first carry at least that
        many new tokens (in some completion), or end it; `tag` goes in every engine
        id ("id#{tag}n"): API processes sharing one core give different tags."""
        self.stream_interval = check_stream_interval(stream_interval)
        self._tag = tag
        self._by_request: dict[str, _Waiting] = {}
        self._by_engine_id: dict[str, _Waiting] = {}
        self._abort = abort
        self._seq = itertools.count()

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._by_request

    def open(self, request_id: str) -> str:
        """Make the request's queue; its engine id. InvalidRequestError if the id
        is in flight."""
        if request_id in self._by_request:
            raise InvalidRequestError(f"request id {request_id!r} is already running")
        waiting = _Waiting(request_id, f"{request_id}#{self._tag}{next(self._seq)}")
        self._by_request[request_id] = self._by_engine_id[waiting.engine_id] = waiting
        return waiting.engine_id

    def engine_id(self, request_id: str) -> str | None:
        """The engine id of a caller's request in flight."""
        waiting = self._by_request.get(request_id)
        return None if waiting is None else waiting.engine_id

    def discard(self, request_id: str) -> None:
        """Forget a request whose outputs were never read."""
        waiting = self._by_request.pop(request_id, None)
        if waiting is not None:
            del self._by_engine_id[waiting.engine_id]

    def put(self, engine_id: str, item: Item) -> None:
        """Deliver an output (given the caller's id) or an error to the request
        `engine_id`; ignored once it has left."""
        waiting = self._by_engine_id.get(engine_id)
        if waiting is None:
            return
        if not isinstance(item, BaseException):
            item.request_id = waiting.request_id
        waiting.queue.put_nowait(item)

    def fail_all(self, error: BaseException) -> None:
        for waiting in self._by_request.values():
            waiting.queue.put_nowait(error)

    async def stream(self, request_id: str) -> AsyncGenerator[RequestOutput, None]:
        """The request's outputs until the finished one (an error item is raised).
        Outputs that came while the reader was busy are handed out as one delta
        (as vLLM's output collector merges them): a reader that falls behind the
        engine catches up in fewer, larger steps. With a `stream_interval` above
        1, a delta after the first also waits until it holds that many tokens."""
        waiting = self._by_request[request_id]
        queue = waiting.queue
        interval = self.stream_interval
        first = True
        finished = False
        held: BaseException | None = None  # an error that came after outputs
        try:
            while not finished:
                item = held if held is not None else await queue.get()
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, RequestOutput)
                while not item.finished:
                    if not queue.empty():
                        later = queue.get_nowait()
                    elif first or interval == 1 or _most_new_tokens(item) >= interval:
                        break
                    else:
                        later = await queue.get()
                    if isinstance(later, BaseException):
                        held = later
                        break
                    assert isinstance(later, RequestOutput)
                    extend_output(item, later)
                first = False
                finished = item.finished
                yield item
        finally:
            self.discard(request_id)
            if not finished:
                self._abort(waiting.engine_id)

    async def result(self, request_id: str) -> PoolingOutput:
        """The request's one output (an encode request's)."""
        waiting = self._by_request[request_id]
        done = False
        try:
            item = await waiting.queue.get()
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, PoolingOutput)
            done = True
            return item
        finally:
            self.discard(request_id)
            if not done:
                self._abort(waiting.engine_id)


def check_stream_interval(value: int) -> int:
    """`value`, if it is a valid `stream_interval` (ValueError otherwise)."""
    if value < 1:
        raise ValueError(f"stream_interval must be at least 1, got {value}")
    return value


def _most_new_tokens(output: RequestOutput) -> int:
    return max((len(c.token_ids) for c in output.outputs), default=0)
