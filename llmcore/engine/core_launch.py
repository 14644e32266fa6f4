"""Starting and stopping an engine-core process (`python -m
llmcore.engine.core_process`): a Unix socket pair, a fresh interpreter holding one
end (and the ends of other API processes' pairs), the `Start`/`Ready` handshake,
and the escalation that ends it.

Invariants: a started process is either handed back ready (with its socket) or
killed and reaped before the error is raised; `stop_process` returns only once the
process is reaped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmcore.engine import ipc
from llmcore.errors import ModelLoadError

CORE_MODULE = "llmcore.engine.core_process"


def launch_core(
    start: ipc.Start, module: str = CORE_MODULE, clients: Sequence[socket.socket] = ()
) -> tuple[subprocess.Popen[bytes], socket.socket, ipc.Ready]:
    """Start a core process, send it `start` and wait for it to be ready (blocking;
    its start-up error is raised here, and the process is gone then). `clients`:
    the core's ends of other API processes' connections (it gets them; they are
    closed here)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = spawn_core(theirs, module, clients)
    finally:
        theirs.close()
        for client in clients:
            client.close()
    try:
        ipc.send_frame(ours, start)
        return process, ours, handshake(ours, process)
    except BaseException:
        kill_process(process)
        ours.close()
        raise


def spawn_core(
    sock: socket.socket, module: str = CORE_MODULE, clients: Sequence[socket.socket] = ()
) -> subprocess.Popen[bytes]:
    """Start `python -m MODULE --fd N [--client-fd M ...]` holding `sock` and
    `clients` (its stdout goes to our stderr: a JSON-lines batch owns stdout). Its
    own session: a terminal's Ctrl-C reaches the API process only, which then shuts
    the core down."""
    root = str(Path(__file__).resolve().parents[2])  # the llmcore we are, first on its path
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": root if not path else os.pathsep.join([root, path])}
    fds = [sock.fileno(), *(c.fileno() for c in clients)]
    command = [sys.executable, "-m", module, "--fd", str(fds[0])]
    for fd in fds[1:]:
        command += ["--client-fd", str(fd)]
    return subprocess.Popen(
        command,
        pass_fds=fds,
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def handshake(sock: socket.socket, process: subprocess.Popen[bytes] | None = None) -> ipc.Ready:
    """The core's answer to `Start` (on another API process's connection, once the
    model is loaded): `Ready`, or its start-up error raised here. `process`: the
    core, where we started it (its exit status goes in the error)."""
    payload = ipc.recv_frame(sock)
    if payload is None:
        how = ""
        if process is not None:
            process.wait()
            how = f" ({how_it_ended(process.returncode)})"
        raise ModelLoadError(
            f"the engine core process exited while starting{how}; its log is above"
        )
    reply = ipc.TO_API.decode(payload)
    if isinstance(reply, ipc.StartFailed):
        raise ipc.rebuild_error(reply.error)
    if not isinstance(reply, ipc.Ready):
        raise ModelLoadError(f"the engine core answered {type(reply).__name__} to Start")
    return reply


def stop_process(process: subprocess.Popen[bytes], grace: float) -> None:
    """Wait `grace` seconds for the process to exit, then SIGTERM it, then SIGKILL it;
    reap it (blocking)."""
    for send in (None, process.terminate, process.kill):
        if send is not None:
            send()
        try:
            process.wait(timeout=grace if send is None else 5.0)
            return
        except subprocess.TimeoutExpired:
            continue
    process.wait()


def kill_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


def how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
