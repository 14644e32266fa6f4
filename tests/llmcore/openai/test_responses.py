"""The Responses API end to end: a real `python -m llmcore.http` on the embedded
SmolLM2-135M-Instruct with a SQLite response store, driven by the official `openai`
client: plain and streamed responses (event order, sequence numbers, deltas that
add up), the same text as chat completions, function calls, JSON schema output,
`previous_response_id` across a server restart, GET / DELETE / cancel, refusals;
and a JSON-lines batch line with url /v1/responses."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.server_process import ServerProcess

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

pytestmark = pytest.mark.slow  # a server subprocess on SmolLM2

MODEL = "SmolLM2-135M-Instruct"
T = TypeVar("T")
ADD = {
    "type": "function",
    "name": "add",
    "description": "Add two integers",
    "parameters": {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
            "b": {"type": "integer", "minimum": -1000, "maximum": 1000},
        },
        "required": ["a", "b"],
        "additionalProperties": False,
    },
    "strict": True,
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
GREEDY = {"model": MODEL, "temperature": 0, "max_output_tokens": 16}


class Server:
    """The module's server, restartable on the same response store file."""

    def __init__(self, model: Path, store: Path, log_dir: Path) -> None:
        self.args = (str(model), "--dtype", "float32", "--kv-cache-memory", "256MiB",
                     "--max-model-len", "2048", "--responses-store", str(store))  # fmt: skip
        self.log_dir = log_dir
        self.starts = 0
        self.proc = self._start()

    def _start(self) -> ServerProcess:
        self.starts += 1
        return ServerProcess(self.log_dir / f"server{self.starts}.log", *self.args)

    @property
    def url(self) -> str:
        return self.proc.url + "/v1"

    def stop(self) -> None:
        assert self.proc.stop() == 0
        assert "Traceback" not in self.proc.log

    def restart(self) -> None:
        self.stop()
        self.proc = self._start()


@pytest.fixture(scope="module")
def server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("responses")
    srv = Server(smollm2_path, folder / "responses.sqlite", folder)
    yield srv
    srv.stop()


def run(server: Server, work: Callable[[Any], Awaitable[T]]) -> T:
    async def main() -> T:
        async with openai.AsyncOpenAI(base_url=server.url, api_key="-", max_retries=0,
                                      timeout=600) as client:  # fmt: skip
            return await work(client)

    return asyncio.run(main())


def test_a_plain_response_has_openais_shape(server: Server) -> None:
    reply = run(server, lambda c: c.responses.create(input="Say hello.", **GREEDY))
    assert reply.id.startswith("resp_") and reply.object == "response"
    assert reply.status in ("completed", "incomplete") and reply.model == MODEL
    (message,) = reply.output
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert reply.output_text and reply.output_text == message.content[0].text
    usage = reply.usage
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens <= 16 and usage.output_tokens_details.reasoning_tokens == 0
    if reply.status == "incomplete":
        assert reply.incomplete_details.reason == "max_output_tokens"
    assert (reply.temperature, reply.max_output_tokens, reply.store) == (0, 16, True)


def test_the_same_conversation_gives_the_same_text_as_chat(server: Server) -> None:
    system, user = "You are a poet.", "Write about the sea."

    async def work(client: Any) -> tuple[Any, Any]:
        chat = await client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=16,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        )  # fmt: skip
        reply = await client.responses.create(instructions=system, input=user, **GREEDY)
        return chat, reply

    chat, reply = run(server, work)
    assert reply.output_text == chat.choices[0].message.content
    assert reply.usage.input_tokens == chat.usage.prompt_tokens


def test_a_stream_has_openais_events_in_order(server: Server) -> None:
    async def work(client: Any) -> tuple[list[Any], Any, Any]:
        stream = await client.responses.create(input="Say hello.", stream=True, **GREEDY)
        events = [event async for event in stream]
        whole = await client.responses.create(input="Say hello.", **GREEDY)
        # The SDK's helper needs a response.completed: a JSON answer that ends in time.
        fmt = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
        async with client.responses.stream(
            model=MODEL,
            input="A person as JSON.",
            temperature=0,
            max_output_tokens=100,
            text={"format": fmt},
        ) as helper:
            final = await helper.get_final_response()
        return events, whole, final

    events, whole, final = run(server, work)
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]  # fmt: skip
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", _final(whole.status)]  # fmt: skip
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    last = events[-1].response
    assert text == last.output_text == events[-4].text == whole.output_text
    assert last.usage.output_tokens == whole.usage.output_tokens
    assert final.status == "completed"
    jsonschema.validate(json.loads(final.output_text), PERSON)


def _final(status: str) -> str:
    return "response.completed" if status == "completed" else "response.incomplete"


def test_required_tool_choice_gives_function_calls_that_validate(server: Server) -> None:
    async def work(client: Any) -> list[Any]:
        ask = {"model": MODEL, "input": "What is 2 plus 3?", "tools": [ADD],
               "tool_choice": "required", "max_output_tokens": 200}  # fmt: skip
        named = {**ask, "tool_choice": {"type": "function", "name": "add"}}
        return list(await asyncio.gather(
            client.responses.create(temperature=0, **ask),
            client.responses.create(temperature=1, extra_body={"seed": 5}, **ask),
            client.responses.create(temperature=0, **named),
        ))  # fmt: skip

    for reply in run(server, work):
        calls = [item for item in reply.output if item.type == "function_call"]
        assert calls and reply.status == "completed", reply
        for call in calls:
            assert call.name == "add" and call.call_id.startswith("call_")
            assert call.status == "completed" and call.id.startswith("fc_")
            jsonschema.validate(json.loads(call.arguments), ADD["parameters"])
        assert reply.tools[0].name == "add"


def test_json_schema_text_format_validates(server: Server) -> None:
    fmt = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}

    async def work(client: Any) -> Any:
        return await client.responses.create(
            model=MODEL, input="Describe a person as JSON.", text={"format": fmt},
            temperature=0, max_output_tokens=100,
        )  # fmt: skip

    reply = run(server, work)
    jsonschema.validate(json.loads(reply.output_text), PERSON)
    assert reply.text.format.type == "json_schema"


def test_previous_response_id_continues_across_a_restart(server: Server) -> None:
    first_input = "My name is Alice. Remember it."
    first = run(server, lambda c: c.responses.create(input=first_input, **GREEDY))
    server.restart()  # the same SQLite file

    async def work(client: Any) -> tuple[Any, Any, Any]:
        stored = await client.responses.retrieve(first.id)
        follow = await client.responses.create(
            input="What is my name?", previous_response_id=first.id, **GREEDY
        )
        explicit = await client.responses.create(
            input=[{"role": "user", "content": first_input},
                   {"role": "assistant", "content": first.output_text},
                   {"role": "user", "content": "What is my name?"}],
            **GREEDY,
        )  # fmt: skip
        return stored, follow, explicit

    stored, follow, explicit = run(server, work)
    assert stored.id == first.id and stored.output_text == first.output_text
    assert follow.previous_response_id == first.id
    assert follow.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert follow.output_text and follow.output_text == explicit.output_text
    assert follow.usage.input_tokens == explicit.usage.input_tokens


def test_get_delete_and_store_false(server: Server) -> None:
    async def work(client: Any) -> None:
        kept = await client.responses.create(input="Hi", **GREEDY)
        assert (await client.responses.retrieve(kept.id)).output_text == kept.output_text
        deleted = await client.delete(f"/responses/{kept.id}", cast_to=dict)
        assert deleted == {"id": kept.id, "object": "response", "deleted": True}
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(kept.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.delete(kept.id)
        unstored = await client.responses.create(input="Hi", store=False, **GREEDY)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(unstored.id)

    run(server, work)


def test_cancel_aborts_a_running_response(server: Server) -> None:
    async def work(client: Any) -> tuple[Any, list[Any], Any]:
        stream = await client.responses.create(
            model=MODEL, input="Write a very long story about a dragon.", stream=True,
            temperature=0, max_output_tokens=1500,
        )  # fmt: skip
        events = []
        cancelled = None
        async for event in stream:
            events.append(event)
            if event.type == "response.output_text.delta" and cancelled is None:
                cancelled = await client.responses.cancel(events[0].response.id)
        stored = await client.responses.retrieve(events[0].response.id)
        with pytest.raises(openai.BadRequestError):
            await client.responses.cancel(stored.id)
        return cancelled, events, stored

    cancelled, events, stored = run(server, work)
    assert cancelled.status == "cancelled" and stored.status == "cancelled"
    last = events[-1]
    assert last.type == "response.incomplete" and last.response.status == "cancelled"
    assert last.response.usage.output_tokens < 1500
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_bad_requests_are_openai_errors_and_the_server_keeps_serving(server: Server) -> None:
    async def work(client: Any) -> Any:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.responses.create(input="Hi", previous_response_id="resp_nope", **GREEDY)
        assert missing.value.body["param"] == "previous_response_id"
        refused = [
            {"tools": [{"type": "web_search"}]},
            {"background": True},
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            {"max_output_tokens": "many"},
        ]
        for extra in refused:
            with pytest.raises(openai.BadRequestError) as bad:
                await client.responses.create(**{"input": "Hi", **GREEDY, **extra})
            assert set(bad.value.body) == {"message", "type", "param", "code"}
        with pytest.raises(openai.NotFoundError):
            await client.responses.cancel("resp_nope")
        return await client.responses.create(input="Hi", **GREEDY)

    assert run(server, work).output_text


def test_a_batch_line_with_url_v1_responses(smollm2_path: Path, tmp_path: Path) -> None:
    body = {"model": MODEL, "input": "Say hello.", "temperature": 0, "max_output_tokens": 8}
    lines = [{"custom_id": "r1", "method": "POST", "url": "/v1/responses", "body": body}]
    batch = tmp_path / "in.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    subprocess.run(
        [sys.executable, "-m", "llmcore.jsonl", str(smollm2_path), "-i", str(batch),
         "-o", str(out), "--dtype", "float32", "--kv-cache-memory", "256MiB"],
        check=True, timeout=300,
    )  # fmt: skip
    (answer,) = map(json.loads, out.open())
    assert answer["error"] is None and answer["response"]["status_code"] == 200
    reply = answer["response"]["body"]
    assert reply["object"] == "response" and reply["output"][0]["content"][0]["text"]
