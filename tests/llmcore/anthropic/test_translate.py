"""The Messages API's translation onto chat completions, model-free: requests in
(`translate`), answers out (`answer`), streamed events (`stream`, read back by the
`anthropic` client's own accumulator) and errors (`errors`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import msgspec
import pytest

from llmcore.anthropic import MESSAGES_DECODER, anthropic_error
from llmcore.anthropic.answer import message
from llmcore.anthropic.stream import event_stream
from llmcore.anthropic.translate import chat_request
from llmcore.errors import InvalidRequestError, NotFoundError, OverloadedError
from llmcore.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatMessageOut,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    PromptTokensDetails,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    UsageInfo,
    UserMessage,
)
from llmcore.openai.streaming import ClosingStream

ADD = {
    "name": "add",
    "description": "Add two integers",
    "input_schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
}


def translate(**body: Any) -> Any:
    body = {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], **body}
    return chat_request(MESSAGES_DECODER.decode(json.dumps(body).encode()))


def test_conversation_tools_and_parameters() -> None:
    chat = translate(
        model="m",
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "2+3?"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "add them", "signature": ""},
                {"type": "text", "text": "Let me add."},
                {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 2}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "5"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                 "content": [{"type": "text", "text": "bad"}]},
                {"type": "text", "text": "Thanks"},
            ]},
        ],
        tools=[ADD],
        tool_choice={"type": "tool", "name": "add", "disable_parallel_tool_use": True},
        stop_sequences=["\n\n"], temperature=0.5, top_p=0.9, top_k=5, max_tokens=40,
        metadata={"user_id": "u"}, thinking={"type": "enabled", "budget_tokens": 2048},
    )  # fmt: skip
    assert chat.messages == [
        SystemMessage(content=[TextPart("Be brief."), TextPart("Be kind.")]),
        UserMessage(content="2+3?"),
        AssistantMessage(
            content="Let me add.",
            tool_calls=[ToolCall("toolu_1", FunctionCall("add", '{"a": 2}'))],
            reasoning_content="add them",
        ),
        ToolMessage(content="5", tool_call_id="toolu_1"),
        ToolMessage(content="Error: bad", tool_call_id="toolu_2"),
        UserMessage(content="Thanks"),
    ]
    function = {"name": "add", "parameters": ADD["input_schema"], "description": "Add two integers"}
    assert chat.tools == [{"type": "function", "function": function}]
    assert chat.tool_choice == {"type": "function", "function": {"name": "add"}}
    assert chat.parallel_tool_calls is False
    assert (chat.model, chat.max_tokens, chat.stop) == ("m", 40, ["\n\n"])
    assert (chat.temperature, chat.top_p, chat.top_k) == (0.5, 0.9, 5)
    assert chat.chat_template_kwargs == {"enable_thinking": True}
    assert not chat.stream and chat.continue_final_message is None


@pytest.mark.parametrize(
    ("choice", "expected"),
    [({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none"),
     (None, None)],
)  # fmt: skip
def test_tool_choice(choice: Any, expected: Any) -> None:
    extra = {"tool_choice": choice} if choice else {}
    chat = translate(tools=[ADD], **extra)
    assert chat.tool_choice == expected and chat.parallel_tool_calls is None


def test_prefill_streaming_and_plain_strings() -> None:
    chat = translate(
        system="Be brief.",
        messages=[
            {"role": "user", "content": "Name a color"},
            {"role": "assistant", "content": "Bl"},
        ],
        stream=True,
        thinking={"type": "disabled"},
    )
    assert chat.messages == [
        SystemMessage(content="Be brief."),
        UserMessage(content="Name a color"),
        AssistantMessage(content="Bl"),
    ]
    assert chat.continue_final_message and chat.add_generation_prompt is False
    assert chat.stream and chat.stream_options is not None
    assert chat.stream_options.include_usage and chat.stream_options.continuous_usage_stats
    assert chat.chat_template_kwargs == {"enable_thinking": False}


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"messages": [{"role": "user", "content": [IMAGE]}]}, "messages", "image blocks"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x",
                                                     "content": [IMAGE]}]}]},
         "messages", "messages[0].content[0].content[0]"),
        ({"messages": [{"role": "user", "content": [
            {"type": "tool_use", "id": "x", "name": "f", "input": {}}]}]},
         "messages", "tool_use block cannot appear in a user turn"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools", "server"),
        ({"tools": [{"name": "f"}]}, "tools", "input_schema"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice", "name"),
        ({"mcp_servers": [{"url": "x"}]}, "mcp_servers", "MCP"),
        ({"output_config": {"format": {"type": "xml"}}}, "output_config", "json_schema"),
    ],
)  # fmt: skip
def test_what_chat_cannot_express_is_a_400_naming_it(body: Any, param: str, says: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        translate(**body)
    assert caught.value.param == param and says in caught.value.message


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        ({"max_tokens": 5, "messages": [{"role": "system", "content": "hi"}]},
         "$.messages[0].role"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
         "$.messages[0].content[0]"),
        ({"max_tokens": 5, "messages": [], "thinking": {"type": "sometimes"}}, "$.thinking.type"),
    ],
)  # fmt: skip
def test_wrong_shapes_are_decode_errors_in_anthropics_shape(body: Any, path: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        MESSAGES_DECODER.decode(json.dumps(body).encode())
    assert path in str(caught.value)
    status, data, _ = anthropic_error(caught.value)
    error = json.loads(data)
    assert status == 400 and error["type"] == "error"
    assert error["error"] == {"type": "invalid_request_error", "message": str(caught.value)}


def test_errors_in_anthropics_shape() -> None:
    cases = [
        (NotFoundError("no model", param="model"), 404, "not_found_error"),
        (OverloadedError("busy", retry_after=3), 529, "overloaded_error"),
        (OverloadedError("slow down", status=429), 429, "rate_limit_error"),
        (RuntimeError("secret"), 500, "api_error"),
    ]
    for exc, status, kind in cases:
        got, body, headers = anthropic_error(exc)
        error = json.loads(body)["error"]
        assert (got, error["type"]) == (status, kind)
        assert "secret" not in error["message"]
        if isinstance(exc, OverloadedError):
            assert dict(headers)["retry-after"] == str(exc.retry_after)


# ---- answers --------------------------------------------------------------------------


def response(out: ChatMessageOut, finish: str, stop_reason: Any = None) -> ChatCompletionResponse:
    usage = UsageInfo(10, 4, 14, PromptTokensDetails(6))
    choice = ChatChoice(0, out, None, finish, stop_reason)
    return ChatCompletionResponse("chatcmpl-abc", "chat.completion", 0, "m", [choice], usage)


def test_answers_blocks_stop_reasons_and_usage() -> None:
    call = ToolCall("call_x1", FunctionCall("add", '{"a": 2}'))
    named = message(response(ChatMessageOut("assistant", None, "hmm", [call]), "stop"))
    assert msgspec.to_builtins(named) == {
        "type": "message", "id": "msg_abc", "role": "assistant", "model": "m",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": ""},
            {"type": "tool_use", "id": "toolu_x1", "name": "add", "input": {"a": 2}},
        ],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 4, "output_tokens": 4, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 6},
    }  # fmt: skip
    text = ChatMessageOut("assistant", "Hi")
    stopped = message(response(text, "stop", "\n\n"))
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "\n\n")
    assert message(response(text, "stop", 2)).stop_reason == "end_turn"  # a stop token
    assert message(response(text, "length")).stop_reason == "max_tokens"
    empty = message(response(ChatMessageOut("assistant", ""), "stop"))
    assert empty.content == []


def chunk(delta: DeltaMessage | None, finish: str | None = None, usage: int = 0) -> Any:
    choices = [] if delta is None else [ChatChunkChoice(0, delta, None, finish)]
    return ChatCompletionChunk(
        "chatcmpl-abc", "chat.completion.chunk", 0, "m", choices, UsageInfo(10, usage, 10 + usage)
    )


def call_delta(args: str, call_id: str | None = None, index: int = 0) -> DeltaMessage:
    name = "add" if call_id else None
    function = DeltaFunctionCall(name=name, arguments=args)
    return DeltaMessage(tool_calls=[DeltaToolCall(index, call_id, "function", function)])


async def _chunks(items: list[Any]) -> AsyncGenerator[Any, None]:
    for item in items:
        yield item


def events(items: list[Any]) -> list[tuple[str, Any]]:
    async def read() -> list[bytes]:
        source = _chunks(items)
        return [e async for e in event_stream(ClosingStream(source, source))]

    out = []
    for raw in asyncio.run(read()):
        head, data = raw.decode().split("\n", 1)
        assert head.startswith("event: ") and data.startswith("data: ") and raw.endswith(b"\n\n")
        body = json.loads(data[len("data: ") :])
        assert body["type"] == head[len("event: ") :]
        out.append((body["type"], body))
    return out


def test_stream_events_accumulate_to_the_whole_answer() -> None:
    streaming = pytest.importorskip("anthropic.lib.streaming._messages")
    items = [
        chunk(DeltaMessage(role="assistant", content="")),
        chunk(DeltaMessage(reasoning_content="hm")),
        chunk(DeltaMessage(reasoning_content="m")),
        chunk(DeltaMessage(content="Sum:")),
        chunk(call_delta('{"a"', "call_1"), usage=1),
        chunk(call_delta(": 2}"), usage=2),
        chunk(call_delta('{"a": 5}', "call_2", 1), usage=3),
        chunk(DeltaMessage(), "tool_calls", usage=4),
        chunk(None, usage=4),
    ]
    got = events(items)
    assert [t for t, _ in got] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    snapshot, bufs = None, {}
    for _, body in got:
        if body["type"] != "ping":  # the client's own accumulator, as messages.stream() runs it
            snapshot = streaming.accumulate_event(
                event=body, current_snapshot=snapshot, json_bufs=bufs
            )
    calls = [ToolCall("call_1", FunctionCall("add", '{"a": 2}')),
             ToolCall("call_2", FunctionCall("add", '{"a": 5}'))]  # fmt: skip
    whole = ChatMessageOut("assistant", "Sum:", "hmm", calls)
    expected = msgspec.to_builtins(message(response(whole, "tool_calls")))
    expected["usage"].update(input_tokens=10, cache_read_input_tokens=0)  # no cache in the stream
    assert snapshot is not None
    assert snapshot.model_dump(exclude_none=True) == _without_none(expected)


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def test_stream_stop_sequence_and_error_event() -> None:
    got = events([chunk(DeltaMessage(role="assistant", content="")),
                  chunk(DeltaMessage(content="a"), "stop", 1)])  # fmt: skip
    delta = got[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 1

    async def failing() -> AsyncGenerator[Any, None]:
        yield chunk(DeltaMessage(role="assistant", content=""))
        raise NotFoundError("gone")

    async def read() -> list[bytes]:
        source = failing()
        return [e async for e in event_stream(ClosingStream(source, source))]

    raw = asyncio.run(read())
    assert raw[-1].startswith(b"event: error\n")
    assert json.loads(raw[-1].split(b"data: ", 1)[1]) == {
        "type": "error", "error": {"type": "not_found_error", "message": "gone"}}  # fmt: skip
