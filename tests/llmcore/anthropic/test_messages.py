"""Anthropic's Messages API end to end: a real `python -m llmcore.http` serving the
embedded SmolLM2-135M-Instruct behind an API key, driven by the official
`anthropic` client (which sends the key as `x-api-key`): plain, streamed and tool
messages, count_tokens, the same conversation through chat completions, errors in
Anthropic's shape; then a JSON-lines batch line on /v1/messages."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.llmcore.openai.test_tools import TOOLS as CHAT_TOOLS
from tests.server_process import smollm2_server

anthropic = pytest.importorskip("anthropic")
openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

pytestmark = pytest.mark.slow  # a server subprocess on SmolLM2

MODEL = "SmolLM2-135M-Instruct"
KEY = "anthropic-test-key"
GREEDY = {"temperature": 0}  # the client has no temperature argument: sent as extra_body
T = TypeVar("T")
SYSTEM = "You are a helpful assistant."
HELLO = [{"role": "user", "content": "Say hello to Paris in one sentence."}]
# test_tools' chat tools, as Anthropic spells them
TOOLS = [
    {"name": f["name"], "description": f["description"], "input_schema": f["parameters"]}
    for f in (tool["function"] for tool in CHAT_TOOLS)
]
SCHEMAS = {t["name"]: t["input_schema"] for t in TOOLS}
ASK_ADD = [{"role": "user", "content": "What is 2 plus 3?"}]


@pytest.fixture(scope="module")
def server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with smollm2_server(smollm2_path, tmp_path_factory.mktemp("messages"), "--api-key", KEY) as srv:
        yield srv.url


def run(server: str, work: Callable[[Any], Awaitable[T]], key: str = KEY) -> T:
    async def main() -> T:
        async with anthropic.AsyncAnthropic(base_url=server, api_key=key, max_retries=0,
                                            timeout=600) as client:  # fmt: skip
            return await work(client)

    return asyncio.run(main())


def create(client: Any, **kw: Any) -> Awaitable[Any]:
    kw = {"model": MODEL, "messages": HELLO, "max_tokens": 24, **kw}
    return client.messages.create(extra_body=GREEDY, **kw)  # type: ignore[no-any-return]


async def streamed(client: Any, **kw: Any) -> tuple[list[str], Any]:
    """(the event types in order, the client's accumulated final message)."""
    kw = {"model": MODEL, "messages": HELLO, "max_tokens": 24, **kw}
    async with client.messages.stream(extra_body=GREEDY, **kw) as stream:
        types = [event.type async for event in stream]
        return types, await stream.get_final_message()


def raw_events(server: str, **body: Any) -> list[str]:
    """The `event:` names of a streamed message, read off the wire."""
    data = {"model": MODEL, "messages": HELLO, "max_tokens": 24, "stream": True, **GREEDY, **body}
    request = urllib.request.Request(
        server + "/v1/messages",
        json.dumps(data).encode(),
        {"x-api-key": KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    events = [e for e in text.split("\n\n") if e]
    names = []
    for event in events:
        head, data_line = event.split("\n")
        name = head.removeprefix("event: ")
        assert json.loads(data_line.removeprefix("data: "))["type"] == name
        names.append(name)
    return names


def same_message(a: Any, b: Any) -> None:
    """Equal but for the ids (of the message and of each tool call)."""
    da, db = a.model_dump(exclude={"id"}), b.model_dump(exclude={"id"})
    for block in [*da["content"], *db["content"]]:
        block.pop("parsed_output", None)
        if block["type"] == "tool_use":
            assert block.pop("id").startswith("toolu_")
    assert da == db


def test_create_stream_count_tokens_and_chat_agree(server: str) -> None:
    async def work(client: Any) -> tuple[Any, ...]:
        whole = await create(client, system=SYSTEM)
        types, final = await streamed(client, system=SYSTEM)
        count = await client.messages.count_tokens(model=MODEL, system=SYSTEM, messages=HELLO)
        raw = await asyncio.to_thread(raw_events, server, system=SYSTEM)
        async with openai.AsyncOpenAI(base_url=server + "/v1", api_key=KEY) as chat:
            reply = await chat.chat.completions.create(
                model=MODEL, messages=[{"role": "system", "content": SYSTEM}, *HELLO],
                max_tokens=24, temperature=0,
            )  # fmt: skip
        return whole, types, final, count, reply, raw

    whole, types, final, count, reply, raw = run(server, work)
    assert whole.id.startswith("msg_") and whole.type == "message" and whole.role == "assistant"
    (block,) = whole.content
    assert block.type == "text" and block.text
    assert whole.stop_reason in ("end_turn", "max_tokens") and whole.stop_sequence is None
    assert whole.usage.output_tokens > 0
    # The events in Anthropic's order (the client drops pings: read raw here) ...
    n = len(raw)
    assert raw[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert raw[n - 3 :] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(raw[3 : n - 3]) == {"content_block_delta"}
    assert [t for t in types if t != "text"] == [t for t in raw if t != "ping"]
    # ... and the client's accumulated message equals the whole one.
    same_message(whole, final)
    # One pipeline: chat completions gives the same text and counts the same prompt.
    choice = reply.choices[0]
    assert choice.message.content == block.text
    assert {"stop": "end_turn", "length": "max_tokens"}[choice.finish_reason] == whole.stop_reason
    assert count.input_tokens == reply.usage.prompt_tokens == whole.usage.input_tokens
    assert reply.usage.completion_tokens == whole.usage.output_tokens


def test_stop_sequences_and_prefill(server: str) -> None:
    async def work(client: Any) -> tuple[Any, Any, Any]:
        whole = await create(client)
        word = whole.content[0].text.split()[2]
        stopped = await create(client, stop_sequences=[word])
        start = {"role": "assistant", "content": whole.content[0].text[:8]}
        prefilled = await create(client, messages=[*HELLO, start])
        return whole, stopped, (word, prefilled)

    whole, stopped, (word, prefilled) = run(server, work)
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", word)
    assert whole.content[0].text.startswith(stopped.content[0].text)
    assert word not in stopped.content[0].text
    # A final assistant turn is continued: the answer holds the continuation only.
    assert whole.content[0].text.startswith(whole.content[0].text[:8] + prefilled.content[0].text)


def check_calls(message: Any, name: str | None = None) -> list[Any]:
    calls = [b for b in message.content if b.type == "tool_use"]
    assert calls and message.stop_reason == "tool_use"
    for call in calls:
        assert call.id.startswith("toolu_") and isinstance(call.input, dict)
        assert name is None or call.name == name
        jsonschema.validate(call.input, SCHEMAS[call.name])
    return calls


def test_tools_any_and_named_streamed_and_a_tool_result_round_trip(server: str) -> None:
    named = {"type": "tool", "name": "add"}

    async def work(client: Any) -> tuple[Any, ...]:
        single = {"type": "any", "disable_parallel_tool_use": True}
        anyone, one = await asyncio.gather(  # compared with nothing: side by side
            create(client, tools=TOOLS, tool_choice={"type": "any"}, max_tokens=200),
            create(client, tools=TOOLS, tool_choice=single, max_tokens=200, messages=ASK_ADD),
        )
        add = await create(client, tools=TOOLS, tool_choice=named, messages=ASK_ADD, max_tokens=60)
        types, add_streamed = await streamed(client, tools=TOOLS, tool_choice=named, max_tokens=60,
                                             messages=ASK_ADD)  # fmt: skip
        (call,) = add.content
        history = [
            *ASK_ADD,
            {"role": "assistant", "content": [call.model_dump(include={"type", "id", "name",
                                                                        "input"})]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                          "content": "5"}]},
        ]  # fmt: skip
        final = await create(client, tools=TOOLS, tool_choice={"type": "none"}, messages=history)
        return anyone, one, add, types, add_streamed, final

    anyone, one, add, types, add_streamed, final = run(server, work)
    check_calls(anyone)
    assert len(check_calls(one)) == 1
    check_calls(add, "add")
    assert "content_block_delta" in types
    same_message(add, add_streamed)
    assert [b.type for b in final.content] == ["text"] and final.stop_reason != "tool_use"
    assert final.usage.input_tokens > add.usage.input_tokens  # the call and result rendered


BAD: list[tuple[dict[str, Any], str]] = [
    ({"model": MODEL, "messages": HELLO}, "max_tokens"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}},
    ]}]}, "image"),
    ({"model": MODEL, "max_tokens": 5, "messages": HELLO, "tools": TOOLS}, "tool_choice"),
]  # fmt: skip


def test_errors_have_anthropics_shape_and_the_server_keeps_serving(server: str) -> None:
    async def work(client: Any) -> tuple[list[Any], Any, Any]:
        errors = []
        for body, _ in BAD:
            try:
                await client.post("/v1/messages", body=body, cast_to=object)
            except anthropic.BadRequestError as exc:
                errors.append(exc.body)
            else:
                errors.append(None)
        with pytest.raises(anthropic.NotFoundError) as missing:
            await create(client, model="no-such-model")
        return errors, missing.value.body, await create(client, max_tokens=3)

    errors, missing, still_serving = run(server, work)
    for (body, says), error in zip(BAD, errors, strict=True):
        assert error is not None and error["type"] == "error", (body, error)
        assert (
            error["error"]["type"] == "invalid_request_error" and says in error["error"]["message"]
        )
    assert missing["error"]["type"] == "not_found_error"
    assert still_serving.stop_reason == "max_tokens"

    async def wrong_key(client: Any) -> Any:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await create(client, max_tokens=3)
        return caught.value

    refused = run(server, wrong_key, key="wrong")
    assert refused.status_code == 401
    assert refused.body == {"type": "error", "error": {
        "type": "authentication_error", "message": "Incorrect API key provided."}}  # fmt: skip


def test_a_json_lines_batch_line_on_v1_messages(smollm2_path: Path, tmp_path: Path) -> None:
    lines = [
        {"custom_id": "msg", "method": "POST", "url": "/v1/messages",
         "body": {"model": MODEL, "max_tokens": 8, "temperature": 0, "messages": HELLO}},
        {"custom_id": "bad", "method": "POST", "url": "/v1/messages",
         "body": {"model": MODEL, "messages": HELLO}},
    ]  # fmt: skip
    batch = tmp_path / "in.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "llmcore.jsonl", str(smollm2_path), "-i", str(batch),
         "-o", str(out), "--dtype", "float32", "--kv-cache-memory", "256MiB"],
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 1  # not every line succeeded
    answers = {a["custom_id"]: a["response"] for a in map(json.loads, out.open())}
    msg = answers["msg"]["body"]
    assert answers["msg"]["status_code"] == 200 and msg["type"] == "message"
    assert msg["content"][0]["type"] == "text" and msg["usage"]["output_tokens"] == 8
    assert answers["bad"]["status_code"] == 400
    assert answers["bad"]["body"]["error"]["type"] == "invalid_request_error"
