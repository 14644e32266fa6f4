"""The engine core's inbox: what other threads ask of the step thread.

Callers on any thread append messages; only the step thread takes them, at the
start of each step, in order. Invariant: a message is one of `InboxMessage`'s
types, already validated (by the input processor), so handling it cannot fail on
the caller's input; `collections.deque`'s `append` and `popleft` are atomic, so
no lock is needed.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass

from llmcore.engine.request import EncodeRequest, Request


@dataclass(slots=True, frozen=True)
class AddRequests:
    """The n requests of one caller request (one group), from the input processor."""

    requests: list[Request]


@dataclass(slots=True, frozen=True)
class AddEncode:
    """One input to pool."""

    request: EncodeRequest


@dataclass(slots=True, frozen=True)
class Abort:
    """Abort a caller request (all its completions, or only completion `index`) or
    an encode request by id."""

    request_id: str
    index: int | None = None


InboxMessage = AddRequests | AddEncode | Abort


class Inbox:
    def __init__(self) -> None:
        self._messages: collections.deque[InboxMessage] = collections.deque()

    def __bool__(self) -> bool:
        return bool(self._messages)

    def put(self, message: InboxMessage) -> None:
        """Queue a message for the next step (any thread)."""
        self._messages.append(message)

    def drain(self) -> Iterator[InboxMessage]:
        """Take the queued messages, oldest first, until none is left (the step thread)."""
        while self._messages:
            yield self._messages.popleft()
