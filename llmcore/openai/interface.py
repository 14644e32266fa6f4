"""What a transport exchanges with the OpenAI service: `ServiceRequest` in,
`ServiceResponse` or `ServiceStream` out; and `ServedModel`, one model being served.

Invariant: these carry bytes and plain values only: no sockets, no HTTP library
types, so the HTTP transport and the JSON-lines batch transport share them.
A `ServiceStream`'s `chunks` must be closed (`aclose()`) if it is not iterated to
its end: closing aborts the engine request behind it.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from llmcore.chat_template import ChatTemplate
from llmcore.default_model import (
    DEFAULT_CHAT_FILE,
    DEFAULT_CHAT_NAME,
    DEFAULT_EMBEDDING_NAME,
    DEFAULT_EMBEDDING_PACKAGE,
)
from llmcore.engine.protocol import Engine
from llmcore.openai.request_ids import HeaderRequestId
from llmcore.tokenization.tokenizer import Tokenizer


@dataclass(slots=True)
class ServiceRequest:
    method: str  # "GET", "POST", ...
    path: str  # without the query string, e.g. "/v1/chat/completions"
    headers: list[tuple[str, str]]  # names in lower case
    body: bytes
    request_id: str  # decided by the transport (see llmcore.openai.request_ids)

    def __post_init__(self) -> None:
        if self.request_id and self.header("x-request-id") == self.request_id:
            self.request_id = HeaderRequestId(self.request_id)  # the client's: it wins

    def header(self, name: str) -> str | None:
        """The first value of header `name` (lower case), or None."""
        return next((value for key, value in self.headers if key == name), None)


@dataclass(slots=True)
class ServiceResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)  # extra, e.g. retry-after


@dataclass(slots=True)
class ServiceStream:
    """A server-sent-events response. Each item of `chunks` is one complete event,
    `b"data: {...}\\n\\n"`, the last `b"data: [DONE]\\n\\n"`; an error after the
    stream started is sent as one `data: {"error": ...}` event before `[DONE]`
    (the Responses and Anthropic routes: typed `event: NAME\\ndata: {...}\\n\\n`
    events, with no `[DONE]`).
    `chunks.aclose()` (when the client goes away) aborts the engine request."""

    chunks: AsyncIterator[bytes]
    status: int = 200
    content_type: str = "text/event-stream"
    headers: list[tuple[str, str]] = field(default_factory=list)

    async def aclose(self) -> None:
        aclose = getattr(self.chunks, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass(slots=True)
class ServedModel:
    name: str  # the name clients put in `model`
    engine: Engine
    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    max_model_len: int  # at most the engine's; a smaller value caps requests here
    created: int = field(default_factory=lambda: int(time.time()))
    task: str = "generate"  # "generate" (chat, completions) or "embed" (embeddings, ...)


def default_name(path: str | os.PathLike[str] | None) -> str:
    """The served name of a model path: "SmolLM2-135M-Instruct" for the embedded
    default (None or its file), a GGUF file's stem, else the folder's name."""
    if path is None:
        return DEFAULT_CHAT_NAME
    p = Path(path)
    if p.name == DEFAULT_CHAT_FILE:
        return DEFAULT_CHAT_NAME
    if p.name == "model" and p.parent.name == DEFAULT_EMBEDDING_PACKAGE:
        return DEFAULT_EMBEDDING_NAME
    if p.suffix == ".gguf":
        return p.stem
    return p.name or str(path)
