"""Reading the input: `FdSource` turns a file descriptor (a file, stdin, a pipe)
into chunks without blocking the event loop, and `read_lines` splits chunks into
numbered lines. Invariants: a line is yielded as soon as its newline arrives (a
co-process feeding a pipe gets answers before it closes it); line numbers count
every physical line, blank ones included, from 1; a line longer than the limit is
reported (data None) and skipped to its newline without being held in memory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import anyio

CHUNK_SIZE = 1 << 16
BOM = b"\xef\xbb\xbf"


class ChunkSource(Protocol):
    """Bytes in arbitrary chunks; `receive` raises anyio.EndOfStream at the end (a
    MemoryObjectReceiveStream[bytes] or an anyio ByteReceiveStream fits)."""

    async def receive(self) -> bytes: ...


class FdSource:
    """Chunks read from a file descriptor, which it does not close. Pipes, sockets
    and terminals are awaited with the event loop (a read never blocks, and a
    cancelled wait leaves no thread behind); regular files are read in a worker
    thread (they are always readable)."""

    def __init__(self, fd: int, chunk_size: int = CHUNK_SIZE) -> None:
        self._fd = fd
        self._chunk_size = chunk_size
        mode = os.fstat(fd).st_mode
        self._pollable = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)

    async def receive(self) -> bytes:
        if self._pollable:
            await anyio.wait_readable(self._fd)
            data = os.read(self._fd, self._chunk_size)  # readable: returns at once
        else:
            data = await anyio.to_thread.run_sync(os.read, self._fd, self._chunk_size)
        if not data:
            raise anyio.EndOfStream
        return data


@dataclass(frozen=True, slots=True)
class RawLine:
    number: int  # 1-based
    data: bytes | None  # without the line ending; None: longer than the limit


async def read_lines(source: ChunkSource, max_line_bytes: int) -> AsyncIterator[RawLine]:
    """Numbered lines of `source` (a last line without a newline counts; `\\r\\n`
    endings and a UTF-8 byte order mark on line 1 are dropped)."""
    buffer = bytearray()
    number = 0
    too_long = False  # skipping the rest of an over-long line
    while True:
        try:
            chunk = await source.receive()
        except anyio.EndOfStream:
            break
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            number += 1
            if not too_long:
                buffer += chunk[start:end]
                too_long = len(buffer) > max_line_bytes
            yield RawLine(number, None if too_long else _clean(bytes(buffer), number))
            buffer.clear()
            too_long = False
            start = end + 1
        if not too_long:
            buffer += chunk[start:]
            if len(buffer) > max_line_bytes:
                too_long = True
                buffer.clear()
    if buffer or too_long:
        number += 1
        yield RawLine(number, None if too_long else _clean(bytes(buffer), number))


def _clean(line: bytes, number: int) -> bytes:
    if line.endswith(b"\r"):
        line = line[:-1]
    if number == 1 and line.startswith(BOM):
        line = line[len(BOM) :]
    return line
