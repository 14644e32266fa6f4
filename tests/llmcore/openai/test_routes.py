"""The service's other routes and its failure modes, through `handle`: models,
tokenize/detokenize, health/ping/version/load, metrics, the OpenAPI document,
404/405/413/415, the queue limit (503 + Retry-After), a dead engine (503), an
unexpected error (500, generic), and closing a stream early (the request is aborted
and its KV blocks freed)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from llmcore.engine.async_engine import AsyncEngine
from llmcore.engine.config import EngineConfig
from llmcore.engine.core import EngineCore
from llmcore.openai import OpenAIService, ServiceRequest, ServiceResponse, ServiceStream
from llmcore.openai.routes import ROUTES
from llmcore.tokenization.tokenizer import Tokenizer

pytestmark = pytest.mark.slow  # the service runs on SmolLM2 (the smollm2 fixture)

NAME = "SmolLM2-135M-Instruct"
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0}
COMPLETION = {"prompt": "Once upon a time", "max_tokens": 3, "temperature": 0}


def test_models(client: Any, engine: Any) -> None:
    status, data = client.call("GET", "/v1/models")
    assert status == 200 and data["object"] == "list"
    [card] = data["data"]
    assert card["id"] == card["root"] == NAME and card["object"] == "model"
    assert card["owned_by"] == "llmcore" and isinstance(card["created"], int)
    assert card["max_model_len"] == engine.core.max_model_len
    assert client.call("GET", f"/v1/models/{NAME}") == (200, card)
    status, data = client.call("GET", "/v1/models/gpt-4o")
    assert (
        status == 404 and NAME in data["error"]["message"] and "gpt-4o" in data["error"]["message"]
    )


def test_model_field_selects_or_404s(client: Any) -> None:
    assert client.ok("/v1/completions", {**COMPLETION, "model": NAME})["model"] == NAME
    assert client.ok("/v1/completions", COMPLETION)["model"] == NAME  # omitted: the first
    status, data = client.post("/v1/chat/completions", {**CHAT, "model": "gpt-4o"})
    assert status == 404 and data["error"]["code"] == "model_not_found"
    assert NAME in data["error"]["message"] and data["error"]["param"] == "model"


def test_tokenize_and_detokenize(client: Any, tokenizer: Tokenizer, engine: Any) -> None:
    text = "Hello wörld"
    data = client.ok("/tokenize", {"prompt": text, "return_token_strs": True})
    ids = tokenizer.encode(text)
    assert data == {
        "count": len(ids),
        "max_model_len": engine.core.max_model_len,
        "tokens": ids,
        "token_strs": [tokenizer.id_to_token(i) for i in ids],
    }
    assert client.ok("/detokenize", {"tokens": ids}) == {"prompt": text}
    status, data = client.post("/detokenize", {"tokens": [1, 10**9]})
    assert status == 400 and str(10**9) in data["error"]["message"]
    for body in ({}, {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}):
        assert client.post("/tokenize", body)[0] == 400


def test_health_ping_version_load(client: Any) -> None:
    import llmcore

    answer = client.request("GET", "/health")
    assert isinstance(answer, ServiceResponse) and (answer.status, answer.body) == (200, b"")
    assert client.call("GET", "/ping") == (200, None)
    assert client.call("POST", "/ping", content_type=None) == (200, None)
    assert client.call("GET", "/version") == (200, {"version": llmcore.__version__})
    assert client.call("GET", "/load") == (200, {"server_load": 0})
    stream = client.open_stream("/v1/completions", {**COMPLETION, "max_tokens": 50})
    assert client.call("GET", "/load") == (200, {"server_load": 1})
    client.run(stream.aclose())
    assert client.call("GET", "/load") == (200, {"server_load": 0})


def test_metrics(
    client: Any, service: OpenAIService, make_client: Any, make_served: Any, engine: Any
) -> None:
    client.ok("/v1/completions", COMPLETION)
    client.stream("/v1/chat/completions", CHAT)
    client.call("GET", "/nowhere")
    client.call("GET", "/v1/completions")
    answer = client.request("GET", "/metrics")
    assert isinstance(answer, ServiceResponse) and answer.status == 200
    assert answer.content_type.startswith("text/plain")
    text = answer.body.decode()
    assert 'llmcore_requests_total{route="/v1/completions",status="200"}' in text
    assert 'llmcore_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert 'llmcore_requests_total{route="unknown",status="404"}' in text
    assert 'llmcore_requests_total{route="/v1/completions",status="405"}' in text
    for name in (
        "llmcore_time_to_first_token_seconds_count",
        "llmcore_inter_token_latency_seconds",
        "llmcore_e2e_request_latency_seconds_bucket",
        "llmcore_prompt_tokens_total",
        "llmcore_generation_tokens_total",
        "llmcore_num_requests_running",
        "llmcore_num_requests_waiting",
        "llmcore_kv_cache_usage_perc",
        "llmcore_prefix_cache_hit_rate",
    ):
        assert f"\n{name}" in text, name
    fresh = make_client(OpenAIService([make_served(engine)]))  # its own registry
    fresh_text = fresh.request("GET", "/metrics").body.decode()
    assert "/v1/completions" not in fresh_text


def test_openapi_document(client: Any) -> None:
    status, doc = client.call("GET", "/openapi.json")
    assert status == 200 and doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    for spec in ROUTES:
        operation = doc["paths"][spec.path][spec.method.lower()]
        if spec.request is not None:
            ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] == spec.request.__name__ in schemas
        if spec.response is not None:
            ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] in schemas
    messages = schemas["ChatCompletionRequest"]["properties"]["messages"]["items"]
    assert messages["discriminator"]["propertyName"] == "role"


def test_404_405_413_415(client: Any, make_client: Any, make_served: Any, engine: Any) -> None:
    status, data = client.call("GET", "/v1/audio/speech")
    assert status == 404 and set(data["error"]) == {"message", "type", "param", "code"}
    answer = client.request("GET", "/v1/chat/completions")
    assert isinstance(answer, ServiceResponse) and answer.status == 405
    assert ("allow", "POST") in answer.headers
    assert client.call("DELETE", "/health")[0] == 405
    status, data = client.call("POST", "/v1/completions", COMPLETION, content_type="text/plain")
    assert status == 415 and data["error"]["code"] == "unsupported_media_type"
    assert client.call("POST", "/v1/completions", COMPLETION, content_type=None)[0] == 200
    ok = client.call(
        "POST", "/v1/completions", COMPLETION, content_type="Application/JSON; charset=utf-8"
    )
    assert ok[0] == 200
    capped = make_client(OpenAIService([make_served(engine)], max_body_bytes=64))
    status, data = capped.post("/v1/completions", {**COMPLETION, "prompt": "x" * 100})
    assert status == 413


def test_queue_limit_is_a_503_with_retry_after(
    client: Any, engine: Any, make_served: Any, loop: asyncio.AbstractEventLoop
) -> None:
    service = OpenAIService([make_served(engine)], max_queued_requests=1, retry_after=2)

    def request(i: int) -> ServiceRequest:
        body = json.dumps(COMPLETION).encode()
        return ServiceRequest("POST", "/v1/completions", [], body, f"queued-{i}")

    async def both() -> list[Any]:
        return list(await asyncio.gather(service.handle(request(0)), service.handle(request(1))))

    first, second = client.run(both())
    assert first.status == 200
    assert second.status == 503 and ("retry-after", "2") in second.headers
    assert json.loads(second.body)["error"]["type"] == "service_unavailable"
    assert client.run(service.handle(request(2))).status == 200  # the queue drained


def wait_idle(client: Any, engine: AsyncEngine) -> Any:
    async def poll() -> Any:
        for _ in range(200):
            stats = engine.statistics()
            if stats.num_running == stats.num_waiting == 0:
                return stats
            await asyncio.sleep(0.01)
        return stats

    return client.run(poll())


def test_closing_a_stream_early_aborts_the_request(client: Any, engine: AsyncEngine) -> None:
    total = engine.statistics().num_kv_blocks
    for url, body in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)):
        stream = client.open_stream(url, {**body, "max_tokens": 500, "n": 2})
        chunks = client.run(_take(stream, 3))
        assert len(chunks) == 3
        busy = engine.statistics()
        assert busy.num_running + busy.num_waiting == 2
        client.run(stream.aclose())
        stats = wait_idle(client, engine)
        assert (stats.num_running, stats.num_waiting, stats.num_kv_blocks_free) == (0, 0, total)
        never_read = client.open_stream(url, {**body, "max_tokens": 500})
        client.run(never_read.aclose())
        stats = wait_idle(client, engine)
        assert (stats.num_running, stats.num_kv_blocks_free) == (0, total)
    assert client.call("GET", "/load") == (200, {"server_load": 0})


async def _take(stream: ServiceStream, n: int) -> list[bytes]:
    out = []
    async for chunk in stream.chunks:
        out.append(chunk)
        if len(out) == n:
            break
    return out


def test_dead_engine_is_a_503(
    smollm2: Any, tokenizer: Tokenizer, make_served: Any, make_client: Any
) -> None:
    core = EngineCore(smollm2, tokenizer, EngineConfig(kv_cache_memory=16 << 20))
    engine = AsyncEngine(core)

    def broken_step() -> list[Any]:
        raise RuntimeError("simulated kernel failure")

    core.step = broken_step  # type: ignore[method-assign]
    dead = make_client(OpenAIService([make_served(engine)]))
    status, data = dead.post("/v1/chat/completions", CHAT)
    assert status == 503 and data["error"]["type"] == "service_unavailable"
    assert dead.call("GET", "/health")[0] == 503
    assert dead.post("/v1/completions", {**COMPLETION, "stream": True})[0] == 503
    assert dead.post("/v1/completions", COMPLETION)[0] == 503
    dead.run(engine.aclose())


def test_unexpected_errors_are_generic_500s(
    engine: Any, make_served: Any, make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Exploding:
        def __init__(self, inner: Any) -> None:
            self.core = inner.core

        def generate(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("secret internals")

    broken = make_client(OpenAIService([make_served(Exploding(engine))]))
    with caplog.at_level(logging.ERROR, logger="llmcore.openai"):
        status, data = broken.post("/v1/completions", COMPLETION)
    assert status == 500 and "secret" not in data["error"]["message"]
    assert "secret internals" in caplog.text


def test_any_request_object_of_the_same_shape_works(client: Any) -> None:
    """Transports may hand over their own request type (attributes only, no methods)."""
    from types import SimpleNamespace

    body = json.dumps(COMPLETION).encode()
    for content_type in ("application/json", "text/plain"):
        request = SimpleNamespace(
            method="POST",
            path="/v1/completions",
            body=body,
            headers=[("content-type", content_type)],
            request_id="duck",
        )
        answer = client.run(client.service.handle(request))
        assert answer.status == (200 if content_type == "application/json" else 415)
