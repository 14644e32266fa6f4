"""The engine-core process: `python -m llmcore.engine.core_process --fd N`, started
by `ProcessEngine` (llmcore/engine/core_client.py) with one end of a socket pair.

It reads `Start`, loads the model and builds an `EngineCore` (answering `Ready`,
or `StartFailed` and exit 1), then runs the core's step loop on its main thread
and sends each step's outputs as one `StepOutputs` frame per connection. Other
API processes (`--client-fd`, `--api-server-count`) get `Ready` too, and each
connection only the outputs of the requests it sent; one that closes has its
requests aborted, and the core serves on. A reader thread per connection takes
its API process's messages: requests are validated there (`make_requests`, as
`AsyncEngine` does on the caller's thread; a structured-output request compiles
its grammar on a worker so that aborts and other requests are not held behind it)
and queued in the core's inbox; questions (`Control`) run on the step thread
between two steps, except health, which the reader answers (a long step is not
a failure; a dead step loop ends the process).

Invariants: all torch work runs on the main thread (the reader only builds
requests, as the core allows); frames are written whole under their
connection's lock; a request's outputs go only to the connection that sent it;
the process exits when the first API process asks (`Shutdown`), when its socket
reaches EOF or when its parent changes (that API process died), and after a step
loop failure (`Died` sent to every connection first). SIGINT is ignored: the
first API process decides when the core stops.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import logging
import os
import queue
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence

import msgspec

from llmcore.engine import ipc
from llmcore.engine.core import EngineCore, EngineStatistics
from llmcore.engine.gc_freeze import freeze_startup_objects
from llmcore.engine.protocol import EngineInfo
from llmcore.errors import LLMCoreError
from llmcore.outputs import RequestOutput
from llmcore.pooling import PoolingOutput, PoolingParams
from llmcore.sampling_params import SamplingParams

log = logging.getLogger("llmcore.engine")

PARENT_CHECK_S = 1.0  # how often an idle core checks that its parent is alive
# Frames waiting for another API process before it is dropped as not reading (a
# frame per step: tens of seconds of steps)
MAX_QUEUED_FRAMES = 4096
FLUSH_S = 2.0  # for the other API processes' last frames when the core exits
_SAMPLING = msgspec.msgpack.Decoder(SamplingParams)
_POOLING = msgspec.msgpack.Decoder(PoolingParams)


class _Client:
    """One API process's connection: its socket, how its frames are written, and the
    requests it sent that are in flight (by engine id).

    The first connection's frames are written by the thread that sends them, under
    a lock (its process owns the core: if it stops reading, the core waits for it).
    Another's go through a queue to a sender thread of its own, so one that stops
    reading stalls only itself; once MAX_QUEUED_FRAMES wait, it is dropped
    (`on_dead`), as it is when a write fails."""

    def __init__(self, sock: socket.socket, index: int, on_dead: Callable[[_Client], None]) -> None:
        self.sock = sock
        self.index = index  # 0: the API process that started the core
        self.lock = threading.Lock()
        self.requests: set[str] = set()
        self.live = True
        self.outputs: list[ipc.WireOutput | ipc.WirePooling] = []  # this step's
        self._on_dead = on_dead
        self._queue: queue.Queue[bytes | None] | None = None
        self._sender: threading.Thread | None = None
        if index > 0:
            self._queue = queue.Queue(MAX_QUEUED_FRAMES)
            self._sender = threading.Thread(
                target=self._send_loop, name=f"llmcore-core-sender-{index}", daemon=True
            )
            self._sender.start()

    def send(self, message: msgspec.Struct) -> None:
        """Write a frame (the first connection) or queue it; OSError if it cannot
        go (the connection is gone, or its process stopped reading)."""
        frame = ipc.encode_frame(message)
        if self._queue is None:
            with self.lock:
                self.sock.sendall(frame)
            return
        if not self.live:
            raise BrokenPipeError("the connection was dropped")
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            raise BlockingIOError(
                f"API process connection {self.index} stopped reading "
                f"({MAX_QUEUED_FRAMES} frames waiting)"
            ) from None

    def flush(self, timeout: float) -> None:
        """Let the sender write what is queued (at most `timeout` seconds), then end."""
        if self._queue is None or self._sender is None or not self.live:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._sender.join(timeout)

    def close(self) -> None:
        """Stop writing (the sender thread ends) and shut the socket down."""
        self.live = False
        if self._queue is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass  # the sender is blocked in a write: the shutdown below ends it
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send_loop(self) -> None:
        assert self._queue is not None
        while True:
            frame = self._queue.get()
            if frame is None or not self.live:
                return
            try:
                self.sock.sendall(frame)
            except OSError:
                self._on_dead(self)
                return


class CoreServer:
    """One `EngineCore` served over one or more sockets (see the module comment)."""

    def __init__(
        self, core: EngineCore, sock: socket.socket, others: Sequence[socket.socket] = ()
    ) -> None:
        self.core = core
        self.clients = [_Client(s, i, self._drop) for i, s in enumerate([sock, *others])]
        self._owner: dict[str, _Client] = {}  # engine id -> the client that sent it
        self._wake = threading.Event()
        self._controls: collections.deque[tuple[_Client, ipc.Control]] = collections.deque()
        self._stopping = False
        self._parent = os.getppid()
        self._prompt_logprobs = ipc.PromptLogprobsSent()
        # Structured-output requests compiling their grammar: id -> aborted meanwhile
        self._compiling: dict[str, bool] = {}
        self._compiling_lock = threading.Lock()
        self._compiler = concurrent.futures.ThreadPoolExecutor(1, "llmcore-grammar")

    # ---- the step loop (main thread) -----------------------------------------------------

    def run(self) -> int:
        for client in self.clients:
            threading.Thread(
                target=self._read_loop,
                args=(client,),
                name=f"llmcore-core-reader-{client.index}",
                daemon=True,
            ).start()
        try:
            self._step_loop()
            return 0
        except (BrokenPipeError, ConnectionResetError):
            log.warning("the API process closed the connection; the engine core exits")
            return 0
        except BaseException as exc:
            log.error("engine core step loop died", exc_info=exc)
            for client in self.clients:
                try:
                    if client.live:
                        client.send(ipc.Died(ipc.wire_error(exc)))
                except OSError:
                    pass
            return 1
        finally:
            for client in self.clients[1:]:  # what is queued for them (`Died`) goes out
                client.flush(FLUSH_S)
            self._compiler.shutdown(wait=False, cancel_futures=True)
            self.core.structured.close()

    def _step_loop(self) -> None:
        core = self.core
        while not self._stopping:
            while self._controls:
                self._answer(*self._controls.popleft())
            self._wake.clear()
            if not core.has_work():
                if self._controls or self._stopping:
                    continue
                if not self._wake.wait(PARENT_CHECK_S) and os.getppid() != self._parent:
                    log.warning("the API process is gone; the engine core exits")
                    self._stopping = True
                continue
            self._send_step(core.step())

    def _send_step(self, outputs: list[RequestOutput | PoolingOutput]) -> None:
        """Each connection's share of a step's outputs, with the statistics after
        it, as one frame (to every live connection: their statistics stay
        current); a finished request leaves its owner."""
        owners = self._owner
        for out in outputs:
            client = owners.get(out.request_id)
            if client is None or not client.live:
                continue  # aborted by its API process, which reads no more of it
            if isinstance(out, RequestOutput):
                client.outputs.append(self._prompt_logprobs.wire_output(out))
                finished = out.finished
            else:
                client.outputs.append(ipc.wire_pooling(out))
                finished = True
            if finished:
                self._leave(out.request_id)
        statistics = self.core.statistics()
        for client in self.clients:
            if not client.live:
                continue
            wire, client.outputs = client.outputs, []
            try:
                client.send(ipc.StepOutputs(wire, statistics))
            except OSError:
                if client.index == 0:
                    raise
                self._drop(client)

    def _leave(self, request_id: str) -> None:
        client = self._owner.pop(request_id, None)
        if client is not None:
            client.requests.discard(request_id)

    def _answer(self, client: _Client, control: ipc.Control) -> None:
        value: bool | EngineStatistics | None = None
        error = None
        try:
            if control.op == "statistics":
                value = self.core.statistics()
            else:
                value = self.core.reset_prefix_cache()
        except Exception as exc:
            error = ipc.wire_error(exc)
        self._reply(client, ipc.Reply(control.call_id, value, error))

    def _reply(self, client: _Client, message: msgspec.Struct) -> None:
        """A frame to one connection; the first one's failure ends the core, another's
        drops that connection."""
        try:
            client.send(message)
        except OSError:
            if client.index == 0:
                raise
            self._drop(client)

    def _wakeup(self) -> None:
        self._wake.set()

    def _drop(self, client: _Client) -> None:
        """Another API process is gone: abort what it sent, stop writing to it."""
        if not client.live:
            return
        client.live = False  # (before the log: a second caller returns above)
        level = logging.WARNING if client.requests else logging.INFO
        log.log(level, "API process connection %d closed (%d requests in flight aborted)",
                client.index, len(client.requests))  # fmt: skip
        for request_id in list(client.requests):
            self._leave(request_id)
            self._abort(request_id)
        client.close()
        self._wakeup()

    # ---- the readers (a thread each) -----------------------------------------------------

    def _read_loop(self, client: _Client) -> None:
        try:
            while True:
                payload = ipc.recv_frame(client.sock)
                if payload is None:
                    break
                if not self._handle(client, ipc.TO_CORE.decode(payload)):
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the API process went away
        except Exception as exc:  # a frame we cannot read, or a bug: stop, loudly
            if not self._stopping and client.live:
                log.error("engine core: reading from the API process failed", exc_info=exc)
        if client.index == 0:
            self._stopping = True
            self._wakeup()
        else:
            self._drop(client)

    def _handle(self, client: _Client, message: ipc.ToCore) -> bool:
        """Act on one message; False to stop reading."""
        match message:
            case ipc.Add():
                self._own(client, message.request_id)
                self._add(client, message)
            case ipc.AddEncode():
                self._own(client, message.request_id)
                self._add_encode(client, message)
            case ipc.Abort(request_id, None):
                self._leave(request_id)
                self._abort(request_id)
            case ipc.Abort(request_id, index):  # one completion: it has output already
                self.core.abort(request_id, index)
            case ipc.Control(call_id, "health"):  # alive, and reading: answered now
                self._reply(client, ipc.Reply(call_id, True))
                return True
            case ipc.Control():
                self._controls.append((client, message))
            case ipc.Shutdown():
                return client.index != 0  # another API process just closes
            case ipc.Start():
                log.warning("engine core: a second Start message was ignored")
        self._wakeup()
        return True

    def _own(self, client: _Client, request_id: str) -> None:
        self._owner[request_id] = client
        client.requests.add(request_id)

    def _abort(self, request_id: str) -> None:
        """Abort a request, or mark it to be aborted once its grammar is compiled."""
        with self._compiling_lock:
            if request_id in self._compiling:
                self._compiling[request_id] = True
                return
        self.core.abort(request_id)

    def _add(self, client: _Client, message: ipc.Add) -> None:
        try:
            params = _SAMPLING.decode(message.params)
        except msgspec.ValidationError as exc:
            self._reject(client, message.request_id, exc)
            return
        if params.structured_outputs is None:
            self._make_and_add(client, message, params)
            return
        with self._compiling_lock:
            self._compiling[message.request_id] = False
        self._compiler.submit(self._compile_and_add, client, message, params)

    def _compile_and_add(self, client: _Client, message: ipc.Add, params: SamplingParams) -> None:
        try:
            self._make_and_add(client, message, params)
        finally:
            with self._compiling_lock:
                aborted = self._compiling.pop(message.request_id, False)
            if aborted:
                self.core.abort(message.request_id)
            self._wakeup()

    def _make_and_add(self, client: _Client, message: ipc.Add, params: SamplingParams) -> None:
        try:
            requests = self.core.make_requests(
                message.prompt_token_ids,
                params,
                message.request_id,
                priority=message.priority,
                cache_salt=message.cache_salt,
            )
        except Exception as exc:
            self._reject(client, message.request_id, exc)
            return
        self.core.add(requests)

    def _add_encode(self, client: _Client, message: ipc.AddEncode) -> None:
        try:
            params = _POOLING.decode(message.params)
            request = self.core.make_encode_request(
                message.prompt_token_ids, params, message.request_id, priority=message.priority
            )
        except Exception as exc:
            self._reject(client, message.request_id, exc)
            return
        self.core.add_encode(request)

    def _reject(self, client: _Client, request_id: str, exc: Exception) -> None:
        self._leave(request_id)
        if not isinstance(exc, LLMCoreError | msgspec.ValidationError):
            log.error("engine core: request %s failed validation", request_id, exc_info=exc)
        try:
            client.send(ipc.Rejected(request_id, ipc.wire_error(exc)))
        except OSError:
            pass


def _start(sock: socket.socket, others: Sequence[socket.socket] = ()) -> EngineCore | None:
    """Read `Start`, build the core and answer `Ready` on every connection (None and
    `StartFailed` answered if the model cannot be loaded)."""
    from llmcore.engine.async_engine import build_core

    payload = ipc.recv_frame(sock)
    if payload is None:
        return None
    start = ipc.TO_CORE.decode(payload)
    if not isinstance(start, ipc.Start):
        raise ConnectionError(f"expected Start, got {type(start).__name__}")
    logging.basicConfig(
        level=start.log_level,
        format="%(asctime)s %(levelname)s %(name)s [engine core]: %(message)s",
        stream=sys.stderr,
    )
    try:
        core = build_core(
            start.model,
            tokenizer=start.tokenizer,
            dtype=start.dtype,
            device=start.device,
            quantization=start.quantization,
            detokenize=start.detokenize,
            **start.engine_options,
        )
    except Exception as exc:
        ipc.send_frame(sock, ipc.StartFailed(ipc.wire_error(exc)))
        return None
    info = EngineInfo(
        model_path=str(core.loaded.path),
        tokenizer_path=str(start.tokenizer or core.loaded.path),
        task=core.task.value,
        max_model_len=core.max_model_len,
        pid=os.getpid(),
    )
    ipc.send_frame(sock, ipc.Ready(info, core.statistics()))
    for index, other in enumerate(others, 1):
        try:
            ipc.send_frame(other, ipc.Ready(info, core.statistics(), index))
        except OSError:
            pass  # gone already: its reader sees EOF
    return core


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmcore.engine.core_process")
    parser.add_argument("--fd", type=int, required=True, help="the connected socket's fd")
    parser.add_argument(
        "--client-fd", type=int, action="append", default=[],
        help="the socket of another API process (repeatable; --api-server-count)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    others = [socket.socket(fileno=fd) for fd in args.client_fd]
    try:
        core = _start(sock, others)
        if core is None:
            return 1
        freeze_startup_objects()  # the model, tokenizer and modules: out of the GC's walks
        return CoreServer(core, sock, others).run()
    except ConnectionError:  # the API process went away during start-up
        return 1
    finally:
        for s in (sock, *others):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


if __name__ == "__main__":
    sys.exit(main())
