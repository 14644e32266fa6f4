"""Fixtures of the OpenAI service tests: one event loop, engine and service per test
module (on SmolLM2-135M-Instruct), and a small client that calls
`service.handle(ServiceRequest(...))` with JSON bodies and parses SSE streams."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import llmcore
from llmcore.chat_template import ChatTemplate
from llmcore.engine.async_engine import AsyncEngine, build_core
from llmcore.engine.config import EngineConfig
from llmcore.engine.core import EngineCore
from llmcore.openai import (
    OpenAIService,
    ServedModel,
    ServiceRequest,
    ServiceResponse,
    ServiceStream,
    default_name,
)
from llmcore.tokenization.tokenizer import Tokenizer

T = TypeVar("T")
_ids = itertools.count()


@pytest.fixture(scope="session")
def tokenizer(smollm2: llmcore.LoadedModel) -> Tokenizer:
    return llmcore.load_tokenizer(smollm2.path)


@pytest.fixture(scope="session")
def template(smollm2: llmcore.LoadedModel, tokenizer: Tokenizer) -> ChatTemplate:
    found = ChatTemplate.resolve(smollm2.path, gguf_template=tokenizer.chat_template)
    assert found is not None
    return found


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer, loop: asyncio.AbstractEventLoop
) -> Iterator[AsyncEngine]:
    engine = AsyncEngine(EngineCore(smollm2, tokenizer, EngineConfig(kv_cache_memory=128 << 20)))
    yield engine
    loop.run_until_complete(engine.aclose())


def served(
    engine: Any, tokenizer: Tokenizer, template: ChatTemplate | None, **overrides: Any
) -> ServedModel:
    fields: dict[str, Any] = {
        "name": default_name(None),
        "engine": engine,
        "tokenizer": tokenizer,
        "chat_template": template,
        "max_model_len": engine.core.max_model_len,
    }
    fields.update(overrides)
    return ServedModel(**fields)


class Client:
    """Calls a service the way a transport does; answers parsed from JSON / SSE."""

    def __init__(self, service: OpenAIService, loop: asyncio.AbstractEventLoop) -> None:
        self.service = service
        self.loop = loop

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str | None = "application/json",
        raw: bytes | None = None,
    ) -> ServiceResponse | ServiceStream:
        data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
        headers = [("content-type", content_type)] if content_type else []
        request = ServiceRequest(method, path, headers, data, f"test-{next(_ids)}")
        return self.run(self.service.handle(request))

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        """A non-streaming call: (status, parsed JSON body or None if empty)."""
        answer = self.request(method, path, body, **kw)
        assert isinstance(answer, ServiceResponse), answer
        return answer.status, json.loads(answer.body) if answer.body else None

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.call("POST", path, body)

    def ok(self, path: str, body: Any) -> Any:
        status, data = self.post(path, body)
        assert status == 200, data
        return data

    def stream(self, path: str, body: Any) -> list[Any]:
        """A streamed call run to the end: the parsed events, "[DONE]" last."""
        answer = self.request("POST", path, {**body, "stream": True})
        assert isinstance(answer, ServiceStream), answer.body  # type: ignore[union-attr]
        assert (answer.status, answer.content_type) == (200, "text/event-stream")
        return self.run(read_events(answer))

    def open_stream(self, path: str, body: Any) -> ServiceStream:
        answer = self.request("POST", path, {**body, "stream": True})
        assert isinstance(answer, ServiceStream), answer.body  # type: ignore[union-attr]
        return answer

    def read(self, stream: ServiceStream) -> list[Any]:
        return self.run(read_events(stream))


async def read_events(stream: ServiceStream) -> list[Any]:
    events: list[Any] = []
    async for chunk in stream.chunks:
        assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n"), chunk
        data = chunk[len(b"data: ") : -2]
        events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    assert events and events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    return events


@pytest.fixture(scope="module")
def service(engine: AsyncEngine, tokenizer: Tokenizer, template: ChatTemplate) -> OpenAIService:
    return OpenAIService([served(engine, tokenizer, template)])


@pytest.fixture(scope="module")
def client(service: OpenAIService, loop: asyncio.AbstractEventLoop) -> Client:
    return Client(service, loop)


@pytest.fixture(scope="module")
def make_client(loop: asyncio.AbstractEventLoop) -> Callable[[OpenAIService], Client]:
    return lambda service: Client(service, loop)


@pytest.fixture(scope="module")
def make_served(tokenizer: Tokenizer, template: ChatTemplate) -> Callable[..., ServedModel]:
    """`make_served(engine, **field_overrides)`: a ServedModel of SmolLM2."""
    return lambda engine, **overrides: served(engine, tokenizer, template, **overrides)


@pytest.fixture(scope="module")
def minilm_engine(minilm_dir: Path, loop: asyncio.AbstractEventLoop) -> Iterator[AsyncEngine]:
    engine = AsyncEngine(build_core(minilm_dir))
    yield engine
    loop.run_until_complete(engine.aclose())


@pytest.fixture(scope="module")
def both(
    engine: AsyncEngine,
    minilm_engine: AsyncEngine,
    make_served: Callable[..., ServedModel],
    make_client: Callable[[OpenAIService], Client],
) -> Client:
    """SmolLM2 (chat, the default) and all-MiniLM-L6-v2 (embeddings) in one service."""
    core = minilm_engine.core
    embed = ServedModel(
        "all-MiniLM-L6-v2", minilm_engine, core.tokenizer, None, core.max_model_len, task="embed"
    )
    return make_client(OpenAIService([make_served(engine), embed]))
