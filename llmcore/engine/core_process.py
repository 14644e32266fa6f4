"""The engine-core process: `python -m llmcore.engine.core_process --fd N`, started
by `ProcessEngine` (llmcore/engine/core_client.py) with one end of a socket pair.

It reads `Start`, loads the model and builds an `EngineCore` (answering `Ready`,
or `StartFailed` and exit 1), then runs the core's step loop on its main thread
and sends each step's outputs as one `StepOutputs` frame. A reader thread takes
the API process's messages: requests are validated there (`make_requests`, as
`AsyncEngine` does on the caller's thread; a structured-output request compiles
its grammar on a worker so that aborts and other requests are not held behind it)
and queued in the core's inbox; questions (`Control`) run on the step thread
between two steps, except health, which the reader answers (a long step is not
a failure; a dead step loop ends the process).

Invariants: all torch work runs on the main thread (the reader only builds
requests, as the core allows); frames are written whole under one lock; the
process exits when the API process asks (`Shutdown`), when its socket reaches EOF
or when its parent changes (the API process died), and after a step loop failure
(`Died` sent first). SIGINT is ignored: the API process decides when the core stops.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence

import msgspec

from llmcore.engine import ipc
from llmcore.engine.core import EngineCore, EngineStatistics
from llmcore.engine.gc_freeze import freeze_startup_objects
from llmcore.engine.protocol import EngineInfo
from llmcore.errors import LLMCoreError
from llmcore.outputs import RequestOutput
from llmcore.pooling import PoolingParams
from llmcore.sampling_params import SamplingParams

log = logging.getLogger("llmcore.engine")

PARENT_CHECK_S = 1.0  # how often an idle core checks that its parent is alive
_SAMPLING = msgspec.msgpack.Decoder(SamplingParams)
_POOLING = msgspec.msgpack.Decoder(PoolingParams)


class CoreServer:
    """One `EngineCore` served over one socket (see the module comment)."""

    def __init__(self, core: EngineCore, sock: socket.socket) -> None:
        self.core = core
        self.sock = sock
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._controls: collections.deque[ipc.Control] = collections.deque()
        self._stopping = False
        self._parent = os.getppid()
        self._prompt_logprobs = ipc.PromptLogprobsSent()
        # Structured-output requests compiling their grammar: id -> aborted meanwhile
        self._compiling: dict[str, bool] = {}
        self._compiling_lock = threading.Lock()
        self._compiler = concurrent.futures.ThreadPoolExecutor(1, "llmcore-grammar")

    def send(self, message: msgspec.Struct) -> None:
        frame = ipc.encode_frame(message)
        with self._send_lock:
            self.sock.sendall(frame)

    # ---- the step loop (main thread) -----------------------------------------------------

    def run(self) -> int:
        reader = threading.Thread(target=self._read_loop, name="llmcore-core-reader", daemon=True)
        reader.start()
        try:
            self._step_loop()
            return 0
        except (BrokenPipeError, ConnectionResetError):
            log.warning("the API process closed the connection; the engine core exits")
            return 0
        except BaseException as exc:
            log.error("engine core step loop died", exc_info=exc)
            try:
                self.send(ipc.Died(ipc.wire_error(exc)))
            except OSError:
                pass
            return 1
        finally:
            self._compiler.shutdown(wait=False, cancel_futures=True)
            self.core.structured.close()

    def _step_loop(self) -> None:
        core = self.core
        while not self._stopping:
            while self._controls:
                self._answer(self._controls.popleft())
            self._wake.clear()
            if not core.has_work():
                if self._controls or self._stopping:
                    continue
                if not self._wake.wait(PARENT_CHECK_S) and os.getppid() != self._parent:
                    log.warning("the API process is gone; the engine core exits")
                    self._stopping = True
                continue
            outputs = core.step()
            wire: list[ipc.WireOutput | ipc.WirePooling] = [
                self._prompt_logprobs.wire_output(o)
                if isinstance(o, RequestOutput)
                else ipc.wire_pooling(o)
                for o in outputs
            ]
            self.send(ipc.StepOutputs(wire, core.statistics()))

    def _answer(self, control: ipc.Control) -> None:
        value: bool | EngineStatistics | None = None
        error = None
        try:
            if control.op == "statistics":
                value = self.core.statistics()
            else:
                value = self.core.reset_prefix_cache()
        except Exception as exc:
            error = ipc.wire_error(exc)
        self.send(ipc.Reply(control.call_id, value, error))

    def _wakeup(self) -> None:
        self._wake.set()

    # ---- the reader (its own thread) -----------------------------------------------------

    def _read_loop(self) -> None:
        try:
            while True:
                payload = ipc.recv_frame(self.sock)
                if payload is None:
                    break
                if not self._handle(ipc.TO_CORE.decode(payload)):
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the API process went away
        except Exception as exc:  # a frame we cannot read, or a bug: stop, loudly
            if not self._stopping:
                log.error("engine core: reading from the API process failed", exc_info=exc)
        self._stopping = True
        self._wakeup()

    def _handle(self, message: ipc.ToCore) -> bool:
        """Act on one message; False to stop reading."""
        match message:
            case ipc.Add():
                self._add(message)
            case ipc.AddEncode():
                self._add_encode(message)
            case ipc.Abort(request_id, None):
                with self._compiling_lock:
                    if request_id in self._compiling:
                        self._compiling[request_id] = True
                        return True
                self.core.abort(request_id)
            case ipc.Abort(request_id, index):  # one completion: it has output already
                self.core.abort(request_id, index)
            case ipc.Control(call_id, "health"):  # alive, and reading: answered now
                self.send(ipc.Reply(call_id, True))
                return True
            case ipc.Control():
                self._controls.append(message)
            case ipc.Shutdown():
                return False
            case ipc.Start():
                log.warning("engine core: a second Start message was ignored")
        self._wakeup()
        return True

    def _add(self, message: ipc.Add) -> None:
        try:
            params = _SAMPLING.decode(message.params)
        except msgspec.ValidationError as exc:
            self._reject(message.request_id, exc)
            return
        if params.structured_outputs is None:
            self._make_and_add(message, params)
            return
        with self._compiling_lock:
            self._compiling[message.request_id] = False
        self._compiler.submit(self._compile_and_add, message, params)

    def _compile_and_add(self, message: ipc.Add, params: SamplingParams) -> None:
        try:
            self._make_and_add(message, params)
        finally:
            with self._compiling_lock:
                aborted = self._compiling.pop(message.request_id, False)
            if aborted:
                self.core.abort(message.request_id)
            self._wakeup()

    def _make_and_add(self, message: ipc.Add, params: SamplingParams) -> None:
        try:
            requests = self.core.make_requests(
                message.prompt_token_ids,
                params,
                message.request_id,
                priority=message.priority,
                cache_salt=message.cache_salt,
            )
        except Exception as exc:
            self._reject(message.request_id, exc)
            return
        self.core.add(requests)

    def _add_encode(self, message: ipc.AddEncode) -> None:
        try:
            params = _POOLING.decode(message.params)
            request = self.core.make_encode_request(
                message.prompt_token_ids, params, message.request_id, priority=message.priority
            )
        except Exception as exc:
            self._reject(message.request_id, exc)
            return
        self.core.add_encode(request)

    def _reject(self, request_id: str, exc: Exception) -> None:
        if not isinstance(exc, LLMCoreError | msgspec.ValidationError):
            log.error("engine core: request %s failed validation", request_id, exc_info=exc)
        try:
            self.send(ipc.Rejected(request_id, ipc.wire_error(exc)))
        except OSError:
            pass


def _start(sock: socket.socket) -> EngineCore | None:
    """Read `Start`, build the core and answer `Ready` (None and `StartFailed`
    answered if the model cannot be loaded)."""
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
    return core


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmcore.engine.core_process")
    parser.add_argument("--fd", type=int, required=True, help="the connected socket's fd")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    try:
        core = _start(sock)
        if core is None:
            return 1
        freeze_startup_objects()  # the model, tokenizer and modules: out of the GC's walks
        return CoreServer(core, sock).run()
    except ConnectionError:  # the API process went away during start-up
        return 1
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
