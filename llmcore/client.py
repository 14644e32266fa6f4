"""`llmcore.Client` (async) and `llmcore.SyncClient`: the OpenAI client's shape,
in process, over the same `OpenAIService` the HTTP server uses.

`client.chat.completions.create(**kwargs)`, `client.completions.create(**kwargs)`
and `client.embeddings.create(**kwargs)` take the request body's fields as keyword
arguments and return the very Structs the HTTP transport encodes (a response, or an
async iterator of chunks when `stream=True`). The keyword arguments go through the
same JSON decoder as an HTTP body, so validation, defaults and errors are the
server's, byte for byte; errors are raised as `llmcore.errors` exceptions (with
`.status`) instead of returned.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import msgspec

from llmcore.errors import InvalidRequestError
from llmcore.openai import OpenAIService
from llmcore.openai.protocol import (
    CHAT_DECODER,
    COMPLETION_DECODER,
    EMBEDDING_DECODER,
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompletionChunk,
    CompletionResponse,
    EmbeddingResponse,
    RequestDecoder,
)

T = TypeVar("T")
_ENCODER = msgspec.json.Encoder()


def _decode(decoder: RequestDecoder[T], kwargs: dict[str, Any]) -> T:
    try:
        return decoder.decode(_ENCODER.encode(kwargs))
    except (msgspec.ValidationError, msgspec.DecodeError, TypeError) as exc:
        raise InvalidRequestError(str(exc)) from exc


def _request_id(kwargs: dict[str, Any]) -> str:
    return str(kwargs.pop("request_id", None) or uuid.uuid4().hex)


class _ChatCompletions:
    def __init__(self, service: OpenAIService) -> None:
        self._service = service

    async def create(
        self, **kwargs: Any
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionChunk]:
        """POST /v1/chat/completions; `request_id=` sets the response id's suffix."""
        request_id = _request_id(kwargs)
        return await self._service.create_chat_completion(_decode(CHAT_DECODER, kwargs), request_id)


class _Chat:
    def __init__(self, service: OpenAIService) -> None:
        self.completions = _ChatCompletions(service)


class _Completions:
    def __init__(self, service: OpenAIService) -> None:
        self._service = service

    async def create(self, **kwargs: Any) -> CompletionResponse | AsyncIterator[CompletionChunk]:
        """POST /v1/completions; `request_id=` sets the response id's suffix."""
        request_id = _request_id(kwargs)
        return await self._service.create_completion(
            _decode(COMPLETION_DECODER, kwargs), request_id
        )


class _Embeddings:
    def __init__(self, service: OpenAIService) -> None:
        self._service = service

    async def create(self, **kwargs: Any) -> EmbeddingResponse:
        """POST /v1/embeddings; `request_id=` sets the response id's suffix."""
        request_id = _request_id(kwargs)
        return await self._service.create_embedding(_decode(EMBEDDING_DECODER, kwargs), request_id)


class Client:
    """The async in-process client: `await Client.from_pretrained()` or wrap a service."""

    def __init__(self, service: OpenAIService) -> None:
        self.service = service
        self.chat = _Chat(service)
        self.completions = _Completions(service)
        self.embeddings = _Embeddings(service)

    @classmethod
    async def from_pretrained(
        cls, model: str | os.PathLike[str] | None = None, **options: Any
    ) -> Client:
        """Load a model (None: the embedded default) and serve it in process.
        `options` are the server's flags as keyword arguments (`dtype`,
        `kv_cache_memory`, `max_num_seqs`, `served_model_name`, ...)."""
        service = await asyncio.to_thread(_build_service, model, options)
        return cls(service)

    async def aclose(self) -> None:
        for served in self.service.models:
            await served.engine.aclose()


def _build_service(model: str | os.PathLike[str] | None, options: dict[str, Any]) -> OpenAIService:
    from llmcore.cli.serve import build_parser
    from llmcore.cli.service import build_service

    args = build_parser().parse_args([] if model is None else [str(model)])
    for key, value in options.items():
        if not hasattr(args, key):
            raise TypeError(f"unknown option {key!r}")
        setattr(args, key, value)
    return build_service(args).service


class SyncClient:
    """The blocking variant: an event loop runs in a background thread; streams
    come back as ordinary iterators."""

    def __init__(self, model: str | os.PathLike[str] | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = self._run(Client.from_pretrained(model, **options))
        self.chat = _SyncNamespace(self, self._client.chat.completions.create)
        self.completions = _SyncNamespace(self, self._client.completions.create).completions
        self.embeddings = _SyncNamespace(self, self._client.embeddings.create).completions

    @property
    def service(self) -> OpenAIService:
        return self._client.service

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._run(_next(stream))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                self._run(aclose())

    def close(self) -> None:
        self._run(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _next(stream: AsyncIterator[T]) -> T:
    return await stream.__anext__()


class _SyncNamespace:
    """`.completions.create(...)` running an async `create` on the client's loop."""

    def __init__(self, client: SyncClient, create: Any) -> None:
        self.completions = self
        self._client = client
        self._create = create

    def create(self, **kwargs: Any) -> Any:
        result = self._client._run(self._create(**kwargs))
        if kwargs.get("stream"):
            return self._client._iterate(result)
        return result
