"""The Responses API in process, on SmolLM2: reasoning items from a reasoning parser
(`deepseek_r1`: SmolLM2 never closes a `</think>`, so its whole answer is
reasoning), whole and streamed alike; the cancel of a running non-streamed
response; the in-progress response GET finds meanwhile."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from llmcore.openai import OpenAIService, ServiceRequest, ServiceStream
from llmcore.openai.options import ServiceOptions

from .conftest import Client

pytestmark = pytest.mark.slow  # the service runs on SmolLM2 (the smollm2 fixture)

BODY = {"input": "Why is the sky blue?", "temperature": 0, "max_output_tokens": 12}


@pytest.fixture(scope="module")
def reasoning(engine: Any, make_served: Any, make_client: Any) -> Client:
    options = ServiceOptions(reasoning_parser="deepseek_r1")
    client: Client = make_client(OpenAIService([make_served(engine)], options=options))
    return client


def read_sse(client: Client, answer: Any) -> list[dict[str, Any]]:
    assert isinstance(answer, ServiceStream)

    async def read() -> list[dict[str, Any]]:
        events = []
        async for chunk in answer.chunks:
            head, data = chunk.decode().rstrip("\n").split("\n", 1)
            event = json.loads(data.removeprefix("data: "))
            assert head == f"event: {event['type']}"
            events.append(event)
        return events

    return client.run(read())


def test_reasoning_is_a_reasoning_item_whole_and_streamed(reasoning: Client) -> None:
    whole = reasoning.ok("/v1/responses", {**BODY, "reasoning": {"effort": "low"}})
    (item,) = whole["output"]
    assert item["type"] == "reasoning" and item["summary"] == []
    text = item["content"][0]["text"]
    assert text and item["content"][0]["type"] == "reasoning_text"
    assert 0 < whole["usage"]["output_tokens_details"]["reasoning_tokens"] <= 12
    assert whole["reasoning"] == {"effort": "low", "summary": None}
    events = read_sse(reasoning, reasoning.request("POST", "/v1/responses",
                                                   {**BODY, "stream": True}))  # fmt: skip
    types = [e["type"] for e in events]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert events[3]["part"] == {"type": "reasoning_text", "text": ""}
    deltas = [e["delta"] for e in events if e["type"] == "response.reasoning_text.delta"]
    assert "".join(deltas) == text
    assert "response.output_text.delta" not in types
    done = next(e for e in events if e["type"] == "response.reasoning_text.done")
    assert done["text"] == text
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == text


def test_cancel_ends_a_running_non_streamed_response(client: Client) -> None:
    service = client.service
    body = {"input": "Write a long story about a dragon.", "temperature": 0,
            "max_output_tokens": 1000}  # fmt: skip

    async def scenario() -> tuple[Any, Any, Any]:
        request = ServiceRequest("POST", "/v1/responses", [], json.dumps(body).encode(), "c-1")
        task = asyncio.create_task(service.handle(request))
        while not service.responses._running:
            await asyncio.sleep(0.01)
        (response_id,) = service.responses._running
        await asyncio.sleep(0.2)  # a few tokens
        seen = await service.handle(ServiceRequest("GET", f"/v1/responses/{response_id}", [],
                                                   b"", "c-2"))  # fmt: skip
        cancel = ServiceRequest("POST", f"/v1/responses/{response_id}/cancel", [], b"", "c-3")
        cancelled = await service.handle(cancel)
        return await task, seen, cancelled

    answer, seen, cancelled = client.run(scenario())
    assert json.loads(seen.body)["status"] == "in_progress"
    assert cancelled.status == 200 and json.loads(cancelled.body)["status"] == "cancelled"
    response = json.loads(answer.body)
    assert response["status"] == "cancelled" and response["usage"]["output_tokens"] < 1000
    assert response["output"][0]["status"] == "incomplete"
    status, stored = client.call("GET", f"/v1/responses/{response['id']}")
    assert status == 200 and stored["status"] == "cancelled"
