"""The wire between the API process and an engine-core process: length-prefixed
msgspec msgpack frames over a stream socket, and the messages they carry.

A core serves one or more connections, each an API process's
(`--api-server-count`): the first sends `Start` and owns the core; each gets
`Ready` once the model is loaded, and only the outputs, refusals and replies of
the requests and questions it sent (`Died` goes to all).

API -> core: `Start` (once, first, on the first connection only), `Add`,
`AddEncode`, `Abort`, `Control` (a question answered by a `Reply` with the same
`call_id`: statistics, reset the prefix cache, health) and `Shutdown` (the first
connection only; another just closes). Core -> API: `Ready` or `StartFailed`
(once, first), then `StepOutputs` (everything one step produced for this
connection, and the statistics after it), `Rejected` (a request the core refused,
before any output of it), `Reply`, and `Died` (the step loop failed; the process
exits after it).

Invariants: a frame is a 4-byte big-endian length and that many bytes of one
message; a request's prompt ids cross once (with `Add`), its prompt logprobs once
(the API side attaches both to every later delta, as `AsyncEngine`'s outputs carry
them); errors cross as (class name, message, param) and are rebuilt as the same
`llmcore.errors` class where there is one.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Literal

import msgspec
import torch

from llmcore import errors
from llmcore.engine.core import EngineStatistics
from llmcore.engine.output_processor import TokenDelta
from llmcore.engine.protocol import EngineInfo
from llmcore.outputs import CompletionOutput, Logprob, RequestOutput
from llmcore.pooling import PoolingOutput

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 31  # 2 GiB: anything larger is a corrupt header


class WireError(msgspec.Struct, array_like=True):
    type: str  # the exception's class name
    message: str
    param: str | None = None


# ---- API -> core -------------------------------------------------------------------------


class Start(msgspec.Struct, tag=True, array_like=True):
    model: str | None
    tokenizer: str | None
    dtype: str
    device: str
    quantization: str | None
    engine_options: dict[str, Any]  # EngineConfig's fields
    log_level: int
    detokenize: bool = True  # False: outputs carry token ids only (the API detokenizes)


class Add(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    prompt_token_ids: list[int]
    params: msgspec.Raw  # SamplingParams, decoded by the core (a bad value is a Rejected)
    priority: int = 0
    cache_salt: str | None = None


class AddEncode(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    prompt_token_ids: list[int]
    params: msgspec.Raw  # PoolingParams
    priority: int = 0


class Abort(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    index: int | None = None  # only this completion (the API side found its stop string)


ControlOp = Literal["statistics", "reset_prefix_cache", "health"]


class Control(msgspec.Struct, tag=True, array_like=True):
    call_id: int
    op: ControlOp


class Shutdown(msgspec.Struct, tag=True, array_like=True):
    pass


ToCore = Start | Add | AddEncode | Abort | Control | Shutdown


# ---- core -> API -------------------------------------------------------------------------


class Ready(msgspec.Struct, tag=True, array_like=True):
    info: EngineInfo
    statistics: EngineStatistics
    client: int = 0  # which of the core's connections this is (0: the one that started it)


class StartFailed(msgspec.Struct, tag=True, array_like=True):
    error: WireError


class WireCompletion(msgspec.Struct, array_like=True):
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: str | int | None
    logprobs: list[Logprob] | None
    stop_token: bool = False  # its last token is the stop token that ends it (TokenDelta)


class WireOutput(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    outputs: list[WireCompletion]
    finished: bool
    prompt_logprobs: list[Logprob | None] | None  # only in the first delta that has them
    num_cached_tokens: int


class WirePooling(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    data: bytes  # float32, native byte order (both ends are one machine)
    shape: list[int]


class StepOutputs(msgspec.Struct, tag=True, array_like=True):
    outputs: list[WireOutput | WirePooling]
    statistics: EngineStatistics


class Rejected(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    error: WireError


class Reply(msgspec.Struct, tag=True, array_like=True):
    call_id: int
    value: bool | EngineStatistics | None = None
    error: WireError | None = None


class Died(msgspec.Struct, tag=True, array_like=True):
    error: WireError


ToAPI = Ready | StartFailed | StepOutputs | Rejected | Reply | Died

_ENCODER = msgspec.msgpack.Encoder()


def encode_frame(message: msgspec.Struct) -> bytes:
    """One frame: the length, then the message."""
    payload = _ENCODER.encode(message)
    return HEADER.pack(len(payload)) + payload


def frame_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length >= MAX_FRAME:
        raise ConnectionError(f"corrupt frame header (length {length})")
    return int(length)


def send_frame(sock: socket.socket, message: msgspec.Struct) -> None:
    """Send one frame on a blocking socket."""
    sock.sendall(encode_frame(message))


def recv_frame(sock: socket.socket) -> bytes | None:
    """The payload of the next frame on a blocking socket; None at a clean EOF
    (between frames). A frame cut short raises ConnectionError."""
    header = _recv_exactly(sock, HEADER.size, eof_ok=True)
    if header is None:
        return None
    payload = _recv_exactly(sock, frame_length(header), eof_ok=False)
    assert payload is not None
    return payload


def _recv_exactly(sock: socket.socket, size: int, *, eof_ok: bool) -> bytes | None:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            if eof_ok and got == 0:
                return None
            raise ConnectionError("the other process closed the connection mid-frame")
        got += n
    return bytes(buffer)


# ---- conversions at the boundary ---------------------------------------------------------


def encode_params(params: Any) -> bytes:
    """A request's SamplingParams or PoolingParams as msgpack; a value that cannot
    cross (an object where data is expected) is the client's InvalidRequestError."""
    try:
        return _ENCODER.encode(params)
    except (TypeError, ValueError, OverflowError) as exc:
        raise errors.InvalidRequestError(
            f"parameters that cannot be sent to the engine: {exc}"
        ) from exc


def wire_error(exc: BaseException) -> WireError:
    if isinstance(exc, msgspec.ValidationError):  # a parameter of the wrong type
        return WireError("InvalidRequestError", str(exc))
    message = exc.message if isinstance(exc, errors.LLMCoreError) else str(exc)
    return WireError(type(exc).__name__, message, getattr(exc, "param", None))


_BUILTIN_ERRORS: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "TypeError": TypeError,
    "OSError": OSError,
    "FileNotFoundError": FileNotFoundError,
    "MemoryError": MemoryError,
}


def rebuild_error(error: WireError) -> Exception:
    """The exception the other process raised, as the same class where it is one of
    llmcore's errors (or a common builtin); a RuntimeError naming it otherwise."""
    cls = getattr(errors, error.type, None)
    if isinstance(cls, type) and issubclass(cls, errors.LLMCoreError):
        try:
            return cls(error.message, param=error.param)
        except TypeError:  # a constructor with other arguments
            return errors.LLMCoreError(error.message, param=error.param)
    builtin = _BUILTIN_ERRORS.get(error.type)
    if builtin is not None:
        return builtin(error.message)
    return RuntimeError(f"{error.type}: {error.message}")


class PromptLogprobsSent:
    """Which groups' prompt logprobs have crossed already (the core side)."""

    def __init__(self) -> None:
        self._sent: set[str] = set()

    def forget(self, request_id: str) -> None:
        """The request has left (aborted before its last output)."""
        self._sent.discard(request_id)

    def wire_output(self, out: RequestOutput) -> WireOutput:
        prompt_logprobs = None
        if out.prompt_logprobs is not None and out.request_id not in self._sent:
            prompt_logprobs = out.prompt_logprobs
            self._sent.add(out.request_id)
        if out.finished:
            self._sent.discard(out.request_id)
        completions = [
            WireCompletion(
                c.index,
                c.text,
                c.token_ids,
                c.finish_reason,
                c.stop_reason,
                c.logprobs,
                isinstance(c, TokenDelta) and c.stop_token,
            )
            for c in out.outputs
        ]
        return WireOutput(
            out.request_id, completions, out.finished, prompt_logprobs, out.num_cached_tokens
        )


def wire_pooling(out: PoolingOutput) -> WirePooling:
    data = out.data.detach().to("cpu", torch.float32).contiguous()
    return WirePooling(out.request_id, data.numpy().tobytes(), list(data.shape))


def completion_of(c: WireCompletion) -> CompletionOutput:
    return CompletionOutput(
        index=c.index,
        text=c.text,
        token_ids=c.token_ids,
        finish_reason=c.finish_reason,
        stop_reason=c.stop_reason,
        logprobs=c.logprobs,
    )


def pooling_of(out: WirePooling, prompt_token_ids: list[int]) -> PoolingOutput:
    data = torch.frombuffer(bytearray(out.data), dtype=torch.float32).reshape(out.shape)
    return PoolingOutput(out.request_id, prompt_token_ids, data)


TO_CORE = msgspec.msgpack.Decoder(ToCore)
TO_API = msgspec.msgpack.Decoder(ToAPI)
