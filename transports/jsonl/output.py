"""The output side: `FdWriter` writes lines to a file descriptor, and
`OutputQueue` is the reorder buffer in front of it plus the task that drains it.
Invariants: each line reaches the descriptor in one write call of the whole line
(newline included) with nothing buffered in this process, so a reader or a killed
process sees only complete lines (short of a kernel-level short write); in ordered
mode lines are written strictly in sequence order; every queued line is written,
even after the work feeding the queue was cancelled, until `close()` is drained.
"""

from __future__ import annotations

import enum
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio

logger = logging.getLogger("llmcore.jsonl")


class LineWriter(Protocol):
    async def write_lines(self, lines: Sequence[bytes]) -> None:
        """Write each line (newline included) with one write, in order."""
        ...


class FdWriter:
    """Writes to a file descriptor (which it does not close) from a worker thread, so
    a slow pipe reader never blocks the event loop."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def write_lines(self, lines: Sequence[bytes]) -> None:
        await anyio.to_thread.run_sync(self._write_all, list(lines))

    def _write_all(self, lines: list[bytes]) -> None:
        for line in lines:
            view = memoryview(line)
            while view:  # one write; more only if the kernel took part of it
                view = view[os.write(self._fd, view) :]


class Outcome(enum.Enum):
    OK = "ok"  # executed, 2xx
    ERROR_RESPONSE = "error_response"  # executed, another status
    INVALID_LINE = "invalid_line"  # not executed: an error line


@dataclass(frozen=True, slots=True)
class OutputLine:
    data: bytes  # the encoded line, newline included
    outcome: Outcome
    completion_tokens: int = 0


class OutputQueue:
    """`put(seq, line)` as lines finish, in any order; `run()` (a task) writes them,
    in sequence order when `ordered`, else as they come; `on_written(lines)` is
    called after each write; `close()` lets `run()` return once all is written."""

    def __init__(
        self,
        writer: LineWriter,
        *,
        ordered: bool,
        on_written: Callable[[Sequence[OutputLine]], None],
    ) -> None:
        self._writer = writer
        self._ordered = ordered
        self._on_written = on_written
        self._send, self._receive = anyio.create_memory_object_stream[list[OutputLine]](math.inf)
        self._waiting: dict[int, OutputLine] = {}  # finished, not yet writable in order
        self._next = 0
        self.failure: OSError | None = None  # the write that failed; later lines are dropped

    @property
    def waiting(self) -> int:
        """Finished lines held back until the lines before them finish."""
        return len(self._waiting)

    def put(self, seq: int, line: OutputLine) -> None:
        """Sequence numbers start at 0 and are each put once."""
        if not self._ordered:
            self._send.send_nowait([line])
            return
        self._waiting[seq] = line
        ready = []
        while self._next in self._waiting:
            ready.append(self._waiting.pop(self._next))
            self._next += 1
        if ready:
            self._send.send_nowait(ready)

    def close(self) -> None:
        self._send.close()

    async def run(self, on_failure: Callable[[OSError], None]) -> None:
        async with self._receive:
            async for batch in self._receive:
                batch += self._ready_now()
                if self.failure is None:
                    with anyio.CancelScope(shield=True):  # finish the write, count it
                        await self._write(batch, on_failure)

    def _ready_now(self) -> list[OutputLine]:
        more: list[OutputLine] = []
        while True:
            try:
                more += self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                return more

    async def _write(self, batch: list[OutputLine], on_failure: Callable[[OSError], None]) -> None:
        try:
            await self._writer.write_lines([line.data for line in batch])
        except OSError as exc:
            logger.error("cannot write the batch output: %s", exc)
            self.failure = exc
            on_failure(exc)
            return
        self._on_written(batch)
