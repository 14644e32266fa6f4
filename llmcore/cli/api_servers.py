"""Extra HTTP server processes (`--api-server-count N`) in front of the engine
core processes the first server process started.

The first server process starts each model's core for N clients
(`ProcessEngine.load(clients=N)`), then N - 1 more `python -m llmcore.http`
processes with its own arguments, each handed one connection to every core
(`--engine-core-fds`, one fd per model in order) on which it attaches. All listen
on the same port with SO_REUSEPORT, so the kernel spreads connections over them;
each does its own HTTP, templates, tokenization and detokenization, and the cores
see one client per process. (On Ray the extra processes attach to the replicas
instead: llmcore/ray/frontends.py.)

Invariants: the extra processes are started only once every core is ready; the
first process keeps no copy of a connection it handed on; `stop_servers` leaves
none running (SIGTERM, then SIGKILL after the grace); one that exits early is
reaped and logged (`reap_exited`), the others serving on; an extra server whose
parent dies stops itself (llmcore/cli/serve.py watches).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

from llmcore.engine.core_launch import how_it_ended

log = logging.getLogger("llmcore.http")


def start_attached_servers(
    argv: Sequence[str], connections: Sequence[Sequence[socket.socket]]
) -> list[subprocess.Popen[bytes]]:
    """One more server process with `argv` per entry of `connections` (its sockets
    to the cores, one per model in order); the sockets are closed here once
    handed on."""
    processes = []
    try:
        for sockets in connections:
            fds = [s.fileno() for s in sockets]
            command = [
                sys.executable, "-m", "llmcore.http", *argv,
                "--api-server-count", "1", "--engine-core-fds", ",".join(map(str, fds)),
            ]  # fmt: skip
            processes.append(subprocess.Popen(command, pass_fds=fds))
    finally:
        for sockets in connections:
            for s in sockets:
                s.close()
    return processes


async def reap_exited(processes: Sequence[subprocess.Popen[bytes]], every: float = 1.0) -> None:
    """Watch the extra server processes: one that exits early is reaped and logged
    (the others and the first serve on, on the same port; its requests were
    aborted in the cores when its connections closed). Runs until cancelled."""
    import anyio

    watched = list(processes)
    while watched:
        await anyio.sleep(every)
        for process in [p for p in watched if p.poll() is not None]:
            watched.remove(process)
            log.error(
                "API server process %d exited (%s); the other server processes serve on",
                process.pid, how_it_ended(process.returncode),
            )  # fmt: skip


def stop_servers(processes: Sequence[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM each (they drain within `grace`), then SIGKILL what is left."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(grace + 5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
