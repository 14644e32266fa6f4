"""The in-process client: the openai client's shape over the OpenAI service, giving
the same bytes as the service's HTTP answers for the same seeded requests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest

import llmcore
from llmcore.engine.core import EngineCore
from llmcore.errors import InvalidRequestError, NotFoundError

pytestmark = pytest.mark.slow  # SmolLM2 (the smollm2 fixture, the default models)

NAME = "SmolLM2-135M-Instruct"


def _service(smollm2: llmcore.LoadedModel) -> llmcore.OpenAIService:
    """Prefix caching off: a cache hit computes the prompt in other matmul shapes,
    which moves logprobs in the sixth digit, and this test compares bytes."""
    tokenizer = llmcore.load_tokenizer(smollm2.path)
    config = llmcore.EngineConfig(kv_cache_memory=96 << 20, enable_prefix_caching=False)
    core = EngineCore(smollm2, tokenizer, config)
    template = llmcore.ChatTemplate.resolve(smollm2.path, gguf_template=tokenizer.chat_template)
    served = llmcore.ServedModel(NAME, llmcore.AsyncEngine(core), tokenizer, template,
                                 core.max_model_len)  # fmt: skip
    return llmcore.OpenAIService([served])


def _without_created(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    value.pop("created", None)
    return value  # type: ignore[no-any-return]


CHAT = {"model": NAME, "messages": [{"role": "user", "content": "Name a fruit."}],
        "max_tokens": 12, "temperature": 0.8, "seed": 7, "logprobs": True,
        "top_logprobs": 2}  # fmt: skip
COMPLETION = {"model": NAME, "prompt": "Once upon a time", "max_tokens": 10, "n": 2,
              "temperature": 0.9, "seed": 3, "logprobs": 1}  # fmt: skip


def test_same_bytes_as_the_http_path(smollm2: llmcore.LoadedModel) -> None:
    async def scenario() -> None:
        service = _service(smollm2)
        client = llmcore.Client(service)
        for path, body, create in (
            ("/v1/chat/completions", CHAT, client.chat.completions.create),
            ("/v1/completions", COMPLETION, client.completions.create),
        ):
            http = await service.handle(llmcore.ServiceRequest(
                "POST", path, [("content-type", "application/json")],
                json.dumps(body).encode(), "same-id"))  # fmt: skip
            assert http.status == 200
            ours = await create(**body, request_id="same-id")
            encoded = msgspec.json.encode(ours)
            assert _without_created(encoded) == _without_created(http.body)
            # byte-identical once the clock is taken out of both
            assert encoded.replace(
                b'"created":%d' % json.loads(encoded)["created"], b""
            ) == http.body.replace(b'"created":%d' % json.loads(http.body)["created"], b"")
        await client.aclose()

    asyncio.run(scenario())


def test_streaming_and_errors(smollm2: llmcore.LoadedModel) -> None:
    async def scenario() -> None:
        client = llmcore.Client(_service(smollm2))
        full = await client.chat.completions.create(**{**CHAT, "temperature": 0})
        stream = await client.chat.completions.create(**{**CHAT, "temperature": 0}, stream=True)
        text = ""
        async for chunk in stream:
            text += "".join(c.delta.content or "" for c in chunk.choices)
        assert text == full.choices[0].message.content
        with pytest.raises(InvalidRequestError, match="max_tokens"):
            await client.completions.create(model=NAME, prompt="x", max_tokens="many")
        with pytest.raises(InvalidRequestError, match="tool"):
            await client.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": "hi"}],
                tools=[{"type": "function",
                        "function": {"name": "f", "parameters": {}}}])  # fmt: skip
        with pytest.raises(NotFoundError):
            await client.completions.create(model="nope", prompt="x")
        await client.aclose()

    asyncio.run(scenario())


def test_sync_client_on_the_default_model() -> None:
    with llmcore.SyncClient(kv_cache_memory=64 << 20) as client:
        out = client.completions.create(model=NAME, prompt="The capital of France is",
                                        max_tokens=3, temperature=0)  # fmt: skip
        assert out.choices[0].text.startswith(" Paris")
        chunks = list(client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "What is 2+2?"}],
            max_tokens=20, temperature=0, stream=True))  # fmt: skip
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "4" in text
        vectors = client.embeddings.create(input=["a cat", "a dog"])  # the default's 2nd model
        assert vectors.model == "all-MiniLM-L6-v2" and len(vectors.data[1].embedding) == 384
