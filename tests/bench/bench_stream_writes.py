"""CPU per streamed write in the HTTP transport (issue 21: the API process's share).

`ResponseWriter.send_stream` on real loopback TCP connections, `--streams` at once
on one event loop, each streaming `--chunks` SSE-sized chunks (an `await` between
chunks, as an engine's deltas come); a child process reads every connection (its
CPU is not counted). The figure is this process's CPU per chunk written, with
streamed writes going straight to the asyncio transport (as served) and through
anyio's `SocketStream.send` (the reference, in the same run), alternating. Both
yield once after a write, so chunks made meanwhile go out together: the writes
per chunk are printed to show that the two batch alike.

    python tests/bench/bench_stream_writes.py [--streams 256] [--chunks 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.transports.http.test_writer import dispatched_cycle
from transports.http import writer as writer_module
from transports.http.writer import ResponseWriter

READER = """
import selectors, socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector()
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
open_ = count
while open_:
    for key, _ in sel.select():
        data = key.fileobj.recv(1 << 16)
        if not data or data.endswith(b"0\\r\\n\\r\\n"):
            sel.unregister(key.fileobj)
            key.fileobj.close()
            open_ -= 1
"""
CHUNK = (
    b'data: {"id":"cmpl-0123456789abcdef","object":"text_completion","created":1,'
    b'"model":"m","choices":[{"index":0,"text":" token","logprobs":null,"finish_reason":null}]}\n\n'
)


WRITES = [0]
_write_watched = ResponseWriter._write_watched


async def _counted(self: ResponseWriter, data: bytes) -> None:
    WRITES[0] += 1
    await _write_watched(self, data)


ResponseWriter._write_watched = _counted  # type: ignore[method-assign]


async def _round(streams: int, chunks: int, direct: bool) -> float:
    """The CPU seconds of this process for one round."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(port), str(streams)])
    accepted: list[anyio.abc.SocketStream] = []
    inner: Any = listener.listeners[0]  # type: ignore[attr-defined]
    while len(accepted) < streams:
        accepted.append(await inner.accept())
    original = writer_module._TransportSend.of
    if not direct:
        writer_module._TransportSend.of = classmethod(lambda cls, stream: None)  # type: ignore[assignment]

    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield CHUNK
            await anyio.sleep(0)

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            writer = ResponseWriter(stream, dispatched_cycle(), send_timeout=30.0)
            await writer.send_stream(200, [(b"content-type", b"text/event-stream")], body())

    try:
        cpu0 = time.process_time()
        async with anyio.create_task_group() as tg:
            for stream in accepted:
                tg.start_soon(serve, stream)
        cpu = time.process_time() - cpu0
    finally:
        writer_module._TransportSend.of = original  # type: ignore[method-assign]
        await listener.aclose()
    assert reader.wait(30) == 0
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cpus ({platform.machine()}), python "
          f"{platform.python_version()}, anyio {version('anyio')}")  # fmt: skip
    print(f"{args.streams} streams x {args.chunks} chunks of {len(CHUNK)} bytes, loopback TCP")
    results: dict[bool, list[float]] = {True: [], False: []}
    writes: dict[bool, int] = {True: 0, False: 0}
    total = args.streams * args.chunks
    for _ in range(args.rounds):
        for direct in (False, True):
            WRITES[0] = 0
            cpu = anyio.run(_round, args.streams, args.chunks, direct)
            results[direct].append(cpu / total * 1e6)
            writes[direct] += WRITES[0]
    print("\n| streamed write | us of CPU per chunk (each round) | median | vs anyio's send "
          "| writes per chunk |")  # fmt: skip
    print("|---|---|---:|---:|---:|")
    ref = sorted(results[False])[len(results[False]) // 2]
    for direct, name in ((False, "anyio `SocketStream.send`"), (True, "straight to the transport")):
        values = results[direct]
        median = sorted(values)[len(values) // 2]
        print(f"| {name} | {' / '.join(f'{v:.2f}' for v in values)} | {median:.2f} | "
              f"{median / ref:.2f}x | {writes[direct] / (total * args.rounds):.2f} |")  # fmt: skip


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    main()
