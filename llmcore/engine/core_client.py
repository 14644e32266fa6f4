"""`ProcessEngine`: llmcore's `Engine` with the engine core in its own process.

The API process (transports, the OpenAI service, templates, tokenization,
detokenization and stop strings) keeps this object; the model, KV cache,
scheduler and sampling run in a child (`python -m llmcore.engine.core_process`, a fresh
interpreter: nothing holding torch threads is forked) connected by a Unix socket
pair carrying msgspec frames (llmcore/engine/ipc.py). One reader task demultiplexes
each step's outputs into per-request asyncio queues, as `AsyncEngine` does. The
core sends token ids only; the reader detokenizes each completion here
(`CompletionText`, as the in-process core does) and, where a stop string ends one,
finishes it here and tells the core to abort it (the core may run it a step or two
more; those late tokens are dropped), as vLLM's front end does. So the core's
step loop, on the critical path of a GPU, spends nothing on text.

Several API processes can share one core (`--api-server-count`): the one that
starts it (`load(clients=N)`) hands each other one a socket of its own, on which
that process `attach`es; the core sends each only its own requests' outputs, and
their engine ids differ by a per-connection tag.

Invariants: if the core process dies (or its step loop fails) every waiting
request gets an `EngineDeadError` as soon as the socket reaches EOF, new requests
are refused, `check_health()` raises; `aclose()` asks the core to exit, waits for
it (terminating, then killing, one that does not) and reaps it, so no child
outlives the engine (an attached engine's `aclose()` closes its connection
only). The asyncio side binds to the event loop of its first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from llmcore.engine import ipc
from llmcore.engine.async_engine import IterationTokens
from llmcore.engine.completion_text import CompletionText
from llmcore.engine.core import EngineStatistics
from llmcore.engine.core_launch import (
    handshake,
    how_it_ended,
    kill_process,
    launch_core,
    stop_process,
)
from llmcore.engine.output_queues import OutputQueues, check_stream_interval
from llmcore.engine.protocol import EngineInfo
from llmcore.errors import EngineDeadError
from llmcore.outputs import CompletionOutput, Logprob, RequestOutput
from llmcore.pooling import PoolingOutput, PoolingParams
from llmcore.sampling_params import SamplingParams
from llmcore.tokenization.tokenizer import Tokenizer

log = logging.getLogger("llmcore.engine")

SHUTDOWN_TIMEOUT_S = 10.0  # for the core to exit after Shutdown, before SIGTERM
HEALTH_TIMEOUT_S = 10.0  # for the core to answer a health question
READ_LIMIT = 4 << 20  # bytes the connection buffers before it waits for the reader


@dataclass(slots=True, eq=False)
class _InFlight:
    """A request in flight: what every output delta carries (its prompt ids and
    prompt logprobs, sent once each) and, for a generate request, its
    completions' text and which of them have ended."""

    token_ids: list[int]
    params: SamplingParams | None = None  # None: an encode request
    logprobs: list[Logprob | None] | None = None
    texts: dict[int, CompletionText] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)


class ProcessEngine:
    def __init__(
        self,
        process: subprocess.Popen[bytes] | None,
        sock: socket.socket,
        info: EngineInfo,
        tokenizer: Tokenizer,
        statistics: EngineStatistics,
        stream_interval: int = 1,
        client: int = 0,
    ) -> None:
        """Wrap a started core process (use `load`, `from_pretrained` or `attach`):
        `process` is None where another API process owns it; `stream_interval` as
        `EngineConfig`'s; `client`: which of the core's connections `sock` is."""
        self.process = process
        self.info = info
        self.tokenizer = tokenizer
        self.iteration_tokens = IterationTokens()  # tokens per step, for /metrics
        # The ends of the connections of the other API processes `load` was asked
        # for (`clients`), to hand to them (`take_client_sockets`).
        self.client_sockets: list[socket.socket] = []
        self._sock = sock
        self._statistics = statistics
        self._outputs = OutputQueues(self._abort, stream_interval, f"{client}." if client else "")
        self._flights: dict[str, _InFlight] = {}  # by engine id
        self._calls: dict[int, asyncio.Future[bool | EngineStatistics | None]] = {}
        self._call_ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None
        self._dead: EngineDeadError | None = None
        self._lost = False  # the connection is gone (`_dead` follows within a moment)
        self._died_message: str | None = None
        self._closed = False

    # ---- start-up (blocking) -------------------------------------------------------------

    @classmethod
    async def from_pretrained(
        cls, model: str | os.PathLike[str] | None = None, **options: Any
    ) -> ProcessEngine:
        """Start a core process on `model` (None: the embedded default) without
        blocking the event loop; `options` are those of `load`."""
        return await asyncio.to_thread(functools.partial(cls.load, model, **options))

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        tokenizer: str | os.PathLike[str] | None = None,
        dtype: str = "auto",
        device: str = "cpu",
        quantization: str | None = None,
        clients: int = 1,
        **engine_options: Any,
    ) -> ProcessEngine:
        """Start the core process, have it load the model (errors such as a missing
        file are raised here, as `AsyncEngine.load` raises them) and load the same
        tokenizer here. `engine_options` are `EngineConfig`'s fields. `clients`:
        how many API processes the core serves; the other `clients - 1` connect
        with `attach`, each on one of `client_sockets`."""
        if clients < 1:
            raise ValueError(f"clients must be at least 1, got {clients}")
        # checked before a process is started for nothing
        interval = check_stream_interval(engine_options.get("stream_interval", 1))
        start = ipc.Start(
            None if model is None else str(model),
            None if tokenizer is None else str(tokenizer),
            dtype,
            device,
            quantization,
            engine_options,
            logging.getLogger("llmcore").getEffectiveLevel(),
            detokenize=False,
        )
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(clients - 1)]
        process, sock, ready = launch_core(start, clients=[theirs for _, theirs in pairs])
        try:
            from llmcore.tokenization.tokenizer import load_tokenizer

            tok = load_tokenizer(ready.info.tokenizer_path)
        except BaseException:
            kill_process(process)
            sock.close()
            for ours, _ in pairs:
                ours.close()
            raise
        log.info("engine core process %d serves %s", process.pid, ready.info.model_path)
        engine = cls(process, sock, ready.info, tok, ready.statistics, interval)
        engine.client_sockets = [ours for ours, _ in pairs]
        return engine

    @classmethod
    def attach(cls, sock: socket.socket, *, stream_interval: int = 1) -> ProcessEngine:
        """An engine on a core another API process started (`load` with `clients`
        above 1; `sock` is one of its `client_sockets`, handed to this process):
        wait for the core's `Ready` (blocking) and load its tokenizer here. Closing
        it closes the connection only (the core aborts what it sent and serves on)."""
        from llmcore.tokenization.tokenizer import load_tokenizer

        interval = check_stream_interval(stream_interval)
        try:
            ready = handshake(sock)
            tok = load_tokenizer(ready.info.tokenizer_path)
        except BaseException:
            sock.close()
            raise
        log.info("attached to engine core process %d (%s)", ready.info.pid, ready.info.model_path)
        return cls(None, sock, ready.info, tok, ready.statistics, interval, ready.client)

    def take_client_sockets(self) -> list[socket.socket]:
        """The other API processes' connection ends (`load`'s `clients`), once:
        the caller hands them on and closes its copies."""
        sockets, self.client_sockets = self.client_sockets, []
        return sockets

    # ---- the Engine protocol -------------------------------------------------------------

    async def generate(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        request_id: str,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream output deltas of one request; cancelling the iteration aborts it."""
        raw = msgspec.Raw(ipc.encode_params(params))
        prompt = list(prompt_token_ids)
        engine_id = await self._open(request_id, _InFlight(prompt, params))
        try:
            await self._send(ipc.Add(engine_id, prompt, raw, priority, cache_salt))
            async with contextlib.aclosing(self._outputs.stream(request_id)) as outputs:
                async for output in outputs:
                    yield output
        finally:
            self._close(request_id, engine_id)

    async def encode(
        self,
        prompt_token_ids: Sequence[int],
        params: PoolingParams,
        request_id: str,
        *,
        priority: int = 0,
    ) -> PoolingOutput:
        """Pool one input; cancelling the call aborts the request."""
        raw = msgspec.Raw(ipc.encode_params(params))
        prompt = list(prompt_token_ids)
        engine_id = await self._open(request_id, _InFlight(prompt))
        try:
            await self._send(ipc.AddEncode(engine_id, prompt, raw, priority))
            return await self._outputs.result(request_id)
        finally:
            self._close(request_id, engine_id)

    def abort(self, request_id: str) -> None:
        """Abort a request: the core frees its blocks at its next step. Unknown ids
        are ignored."""
        engine_id = self._outputs.engine_id(request_id)
        if engine_id is not None:
            self._abort(engine_id)

    def _abort(self, engine_id: str, index: int | None = None) -> None:
        if not (self._lost or self._closed) and self._writer is not None:
            self._write(ipc.Abort(engine_id, index))

    async def check_health(self) -> None:
        """Raise EngineDeadError if the core process is gone, its step loop failed,
        or it does not answer within HEALTH_TIMEOUT_S (its reader thread answers,
        so a long step does not count as a failure)."""
        self._check_alive()
        if self.process is not None and self.process.poll() is not None:
            await self._die("the engine core process exited")
            self._check_alive()
        try:
            await asyncio.wait_for(self._call("health"), HEALTH_TIMEOUT_S)
        except TimeoutError:
            raise EngineDeadError(
                f"the engine core process did not answer within {HEALTH_TIMEOUT_S:.0f} s"
            ) from None

    def statistics(self) -> EngineStatistics:
        """The core's statistics as of its last step (`fetch_statistics` asks now)."""
        return self._statistics

    async def fetch_statistics(self) -> EngineStatistics:
        """The core's statistics now (between two of its steps)."""
        value = await self._call("statistics")
        assert isinstance(value, EngineStatistics)
        self._statistics = value
        return value

    async def reset_prefix_cache(self) -> bool:
        """Forget the prefix cache; False while requests hold KV blocks."""
        return bool(await self._call("reset_prefix_cache"))

    async def aclose(self) -> None:
        """Fail what is in flight, ask the core to exit, wait for it (then SIGTERM,
        then SIGKILL) and reap it. An attached engine (`attach`) closes its
        connection only."""
        if self._closed:
            return
        self._closed = True
        closed = EngineDeadError("the engine is closed")
        self._fail_all(closed)
        for other in self.take_client_sockets():  # never handed on
            other.close()
        if self.process is not None and self._dead is None:
            try:
                if self._writer is not None:
                    self._write(ipc.Shutdown())
                    await asyncio.wait_for(self._writer.drain(), SHUTDOWN_TIMEOUT_S)
                else:
                    ipc.send_frame(self._sock, ipc.Shutdown())
            except (OSError, RuntimeError, TimeoutError):
                pass  # gone, or not reading: stop_process ends it
        if self.process is not None:
            await asyncio.to_thread(stop_process, self.process, SHUTDOWN_TIMEOUT_S)
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
        self._sock.close()

    # ---- the connection ------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise self._dead
        if self._closed:
            raise EngineDeadError("the engine is closed")
        if self._lost:
            raise EngineDeadError("the engine core process is gone")

    async def _open(self, request_id: str, flight: _InFlight) -> str:
        """Make the request's queue (after checking the engine and the id); its
        engine id (see `OutputQueues`)."""
        self._check_alive()
        await self._connect()
        self._check_alive()
        engine_id = self._outputs.open(request_id)
        self._flights[engine_id] = flight
        return engine_id

    def _close(self, request_id: str, engine_id: str) -> None:
        """The request has left (its queue is gone too, or was never read: the send
        failed)."""
        self._flights.pop(engine_id, None)
        if self._outputs.engine_id(request_id) == engine_id:
            self._outputs.discard(request_id)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._connecting = asyncio.Lock()
        elif self._loop is not loop:
            raise RuntimeError("a ProcessEngine serves the event loop it was first used on")
        assert self._connecting is not None
        async with self._connecting:
            if self._writer is not None:
                return
            reader, writer = await asyncio.open_connection(sock=self._sock, limit=READ_LIMIT)
            self._writer = writer
            self._reader_task = loop.create_task(
                self._read_loop(reader), name=f"llmcore-core-{self.info.pid}"
            )

    def _write(self, message: msgspec.Struct) -> None:
        assert self._writer is not None
        self._writer.write(ipc.encode_frame(message))

    async def _send(self, message: msgspec.Struct) -> None:
        self._check_alive()
        assert self._writer is not None
        self._write(message)
        try:
            await self._writer.drain()
        except OSError as exc:  # the reader sees the same and fails everyone
            raise EngineDeadError(f"the engine core process is gone: {exc!r}") from exc

    async def _call(self, op: ipc.ControlOp) -> bool | EngineStatistics | None:
        """Ask the core a question; its answer (EngineDeadError if it dies first)."""
        self._check_alive()
        await self._connect()
        call_id = next(self._call_ids)
        future: asyncio.Future[bool | EngineStatistics | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._calls[call_id] = future
        try:
            await self._send(ipc.Control(call_id, op))
            return await future
        finally:
            self._calls.pop(call_id, None)

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        reason = "the engine core process closed its connection"
        try:
            while True:
                header = await reader.readexactly(ipc.HEADER.size)
                payload = await reader.readexactly(ipc.frame_length(header))
                self._dispatch(ipc.TO_API.decode(payload))
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except Exception as exc:  # a frame we cannot read: the connection is unusable
            log.error("engine core connection failed", exc_info=exc)
            reason = f"the connection to the engine core failed: {exc!r}"
        if not self._closed:
            await self._die(reason)

    def _dispatch(self, message: ipc.ToAPI) -> None:
        match message:
            case ipc.StepOutputs(outputs, stats):
                self._statistics = stats
                self.iteration_tokens.after_step(stats)
                for out in outputs:
                    self._deliver(out)
            case ipc.Rejected(engine_id, error):
                self._outputs.put(engine_id, ipc.rebuild_error(error))
            case ipc.Reply(call_id, value, error):
                future = self._calls.get(call_id)
                if future is not None and not future.done():
                    if error is not None:
                        future.set_exception(ipc.rebuild_error(error))
                    else:
                        future.set_result(value)
            case ipc.Died(error):
                self._died_message = f"{error.type}: {error.message}"
            case _:
                log.warning("engine core sent an unexpected %s", type(message).__name__)

    def _deliver(self, out: ipc.WireOutput | ipc.WirePooling) -> None:
        flight = self._flights.get(out.request_id)
        if flight is None:
            return  # it has left (aborted here, or finished by a stop string)
        if isinstance(out, ipc.WirePooling):
            self._outputs.put(out.request_id, ipc.pooling_of(out, flight.token_ids))
            return
        assert flight.params is not None
        if out.prompt_logprobs is not None:
            flight.logprobs = out.prompt_logprobs
        completions = []
        for c in out.outputs:
            if c.index not in flight.ended:  # else: late tokens of one a stop string ended
                completions.append(self._detokenized(out.request_id, flight, c))
        finished = out.finished or len(flight.ended) == flight.params.n
        if not completions and not finished:
            return
        if finished:  # nothing more is delivered (the core's late outputs included)
            del self._flights[out.request_id]
        output = RequestOutput(
            request_id=out.request_id,
            prompt_token_ids=flight.token_ids,
            outputs=completions,
            finished=finished,
            prompt_logprobs=flight.logprobs,
            num_cached_tokens=out.num_cached_tokens,
        )
        self._outputs.put(out.request_id, output)

    def _detokenized(
        self, engine_id: str, flight: _InFlight, c: ipc.WireCompletion
    ) -> CompletionOutput:
        """The completion's delta with its text; a stop string found in it ends the
        completion here (tokens after it dropped) and is aborted in the core."""
        assert flight.params is not None
        text = flight.texts.get(c.index)
        if text is None:
            text = flight.texts[c.index] = CompletionText(
                self.tokenizer, flight.token_ids, flight.params
            )
        token_ids, logprobs = c.token_ids, c.logprobs
        finish_reason, stop_reason = c.finish_reason, c.stop_reason
        last = len(token_ids) - 1
        for k, token in enumerate(token_ids):
            final = k == last and finish_reason is not None
            stop = text.add(token, final=final, stop_token=final and c.stop_token)
            if stop is not None:
                token_ids = token_ids[: k + 1]
                logprobs = None if logprobs is None else logprobs[: k + 1]
                if finish_reason is None:
                    self._abort(engine_id, c.index)
                finish_reason, stop_reason = "stop", stop
                break
        finished = finish_reason is not None
        if finished:
            flight.ended.add(c.index)
        return CompletionOutput(
            c.index, text.take(finished), token_ids, finish_reason, stop_reason, logprobs
        )

    async def _die(self, reason: str) -> None:
        """The core is gone: fail everyone (naming its exit status if it is out within
        half a second: EOF comes as it exits), then reap it."""
        if self._dead is not None:
            return
        self._lost = True
        process = self.process
        for _ in range(10 if process is not None else 0):
            if process is not None and process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        if self._dead is not None:  # another caller got here while we waited
            return
        code = None if self.process is None else self.process.returncode
        how = "" if code is None else f" ({how_it_ended(code)})"
        detail = f": its step loop failed ({self._died_message})" if self._died_message else ""
        self._dead = EngineDeadError(f"{reason}{how}{detail}")
        self._fail_all(self._dead)
        log.error("engine core process %d is gone: %s", self.info.pid, self._dead.message)
        if self.process is not None and code is None:  # exiting, or wedged
            await asyncio.to_thread(stop_process, self.process, SHUTDOWN_TIMEOUT_S)

    def _fail_all(self, error: EngineDeadError) -> None:
        self._outputs.fail_all(error)
        for future in self._calls.values():
            if not future.done():
                future.set_exception(error)
