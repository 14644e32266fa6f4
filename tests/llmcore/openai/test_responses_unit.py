"""The Responses API without a model: input items -> chat messages, the request ->
a chat request, refusals by field, the output items and statuses, the stream's
event order (checked against the `openai` SDK's own event and Response models),
the SQLite store (limits, expiry, a file across reopening) and the routes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from llmcore.errors import InvalidRequestError
from llmcore.openai.options import ServiceOptions
from llmcore.openai.protocol import (
    AssistantMessage,
    ChatMessageOut,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from llmcore.openai.responses import RESPONSES_DECODER, ResponseStore
from llmcore.openai.responses.events import EventWriter, sse_event
from llmcore.openai.responses.inputs import chat_messages, input_items
from llmcore.openai.responses.output import finish, new_response, output_items
from llmcore.openai.responses.translate import chat_request, check_request
from llmcore.openai.routes import response_id_of, route_path

responses_types = pytest.importorskip("openai.types.responses")


def decode(body: dict[str, Any]) -> Any:
    return RESPONSES_DECODER.decode(msgspec.json.encode(body))


# ---- input items -------------------------------------------------------------------------


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    messages = chat_messages("Be brief.", input_items("Hi"))
    assert messages == [SystemMessage(content="Be brief."), UserMessage(content="Hi")]


def test_items_become_a_chat_conversation() -> None:
    items = [
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Add"},
                                                       {"type": "input_text", "text": " 2+3"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [],
         "content": [{"type": "reasoning_text", "text": "think"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Calling.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "add", "arguments": '{"a":2}'},
        {"type": "function_call", "call_id": "call_2", "name": "add", "arguments": '{"b":3}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "5"},
        {"role": "user", "content": "Thanks"},
    ]  # fmt: skip
    messages = chat_messages(None, items)
    assert [type(m).__name__ for m in messages] == [
        "DeveloperMessage", "UserMessage", "AssistantMessage", "ToolMessage", "UserMessage"
    ]  # fmt: skip
    assert messages[1].content == "Add 2+3"
    assistant = messages[2]
    assert isinstance(assistant, AssistantMessage)
    assert (assistant.content, assistant.reasoning_content) == ("Calling.", "think")
    assert assistant.tool_calls == [
        ToolCall("call_1", FunctionCall("add", '{"a":2}')),
        ToolCall("call_2", FunctionCall("add", '{"b":3}')),
    ]
    assert messages[3] == ToolMessage("5", tool_call_id="call_1")


@pytest.mark.parametrize(
    ("items", "words"),
    [
        ([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}],
         "input[0].content[0]: parts of type 'input_image'"),
        ([{"type": "web_search_call", "id": "ws"}], "input[0]: items of type 'web_search_call'"),
        ([{"role": "tool", "content": "x"}], "input[0]: role must be"),
        ([{"type": "function_call", "name": "f", "arguments": "{}"}], "call_id must be a string"),
        ([], "the conversation is empty"),
    ],
)  # fmt: skip
def test_bad_items_are_refused_by_index(items: list[Any], words: str) -> None:
    with pytest.raises(InvalidRequestError, match=words.replace("[", r"\[").replace("]", r"\]")):
        chat_messages(None, items)


# ---- the request -------------------------------------------------------------------------

ADD = {
    "type": "function",
    "name": "add",
    "description": "Add",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
    "strict": True,
}


def test_the_request_becomes_a_chat_request() -> None:
    req = decode({
        "input": "Hi", "tools": [ADD], "tool_choice": {"type": "function", "name": "add"},
        "parallel_tool_calls": False, "max_output_tokens": 7, "temperature": 0.5, "top_p": 0.9,
        "stream": True, "reasoning": {"effort": "low"}, "seed": 3,
    })  # fmt: skip
    check_request(req)
    chat = chat_request(req, chat_messages(None, input_items(req.input)), ServiceOptions())
    assert chat.tools == [{"type": "function", "function": {k: v for k, v in ADD.items()
                                                            if k != "type"}}]  # fmt: skip
    assert chat.tool_choice == {"type": "function", "function": {"name": "add"}}
    assert (chat.parallel_tool_calls, chat.max_completion_tokens) == (False, 7)
    assert (chat.temperature, chat.top_p, chat.seed) == (0.5, 0.9, 3)
    assert chat.stream and chat.stream_options is not None and chat.stream_options.include_usage
    assert chat.reasoning_effort is None  # no reasoning parser: ignored
    with_parser = chat_request(req, chat.messages, ServiceOptions(reasoning_parser="qwen3"))
    assert with_parser.reasoning_effort == "low"


def test_text_format_becomes_response_format() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    req = decode({"input": "Hi", "text": {"format": fmt}})
    chat = chat_request(req, chat_messages(None, input_items("Hi")), ServiceOptions())
    assert chat.response_format is not None and chat.response_format.json_schema is not None
    assert chat.response_format.type == "json_schema"
    assert (chat.response_format.json_schema.name, chat.response_format.json_schema.schema_) == (
        "thing", schema
    )  # fmt: skip
    plain = decode({"input": "Hi", "text": {"format": {"type": "text"}}})
    assert chat_request(plain, chat.messages, ServiceOptions()).response_format is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"background": True}, "background"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"truncation": "auto"}, "truncation"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format"),
    ],
)
def test_fields_that_cannot_be_honoured_are_refused_by_name(
    body: dict[str, Any], param: str
) -> None:
    req = decode({"input": "Hi", **body})
    with pytest.raises(InvalidRequestError) as caught:
        check_request(req)
        chat_request(req, chat_messages(None, input_items("Hi")), ServiceOptions())
    assert caught.value.param == param


# ---- output ------------------------------------------------------------------------------


def test_output_items_and_statuses_parse_as_the_sdks_response() -> None:
    req = decode({"input": "Hi", "tools": [ADD], "metadata": {"k": "v"}, "store": False})
    response = new_response(req, "resp_1", "m")
    message = ChatMessageOut(
        "assistant", "Sure.", reasoning_content="hmm",
        tool_calls=[ToolCall("call_1", FunctionCall("add", '{"a": 1}'))],
    )  # fmt: skip
    response.output = output_items(message, "completed")
    finish(response, "tool_calls", cancelled=False)
    parsed = responses_types.Response.model_validate_json(msgspec.json.encode(response))
    assert [item.type for item in parsed.output] == ["reasoning", "message", "function_call"]
    assert parsed.output_text == "Sure." and parsed.status == "completed"
    assert (parsed.store, parsed.metadata, parsed.tool_choice) == (False, {"k": "v"}, "auto")
    finish(response, "length", cancelled=False)
    assert (response.status, response.incomplete_details) == ("incomplete", msgspec.convert(
        {"reason": "max_output_tokens"}, type(response.incomplete_details)))  # fmt: skip
    finish(response, None, cancelled=True)
    assert response.status == "cancelled"


# ---- the stream --------------------------------------------------------------------------


def test_stream_events_come_in_openais_order_and_add_up() -> None:
    req = decode({"input": "Hi"})
    writer = EventWriter(new_response(req, "resp_1", "m"))
    events = [writer.event("response.created", response=writer.response)]
    deltas = [
        DeltaMessage(reasoning_content="th"), DeltaMessage(reasoning_content="ink"),
        DeltaMessage(content="Hel"), DeltaMessage(content="lo"),
        DeltaMessage(tool_calls=[DeltaToolCall(0, "call_a", "function",
                                               DeltaFunctionCall("add", '{"a"'))]),
        DeltaMessage(tool_calls=[DeltaToolCall(0, function=DeltaFunctionCall(arguments=": 1}"))]),
        DeltaMessage(tool_calls=[DeltaToolCall(1, "call_b", "function",
                                               DeltaFunctionCall("add", "{}"))]),
    ]  # fmt: skip
    for delta in deltas:
        events += writer.delta(delta)
    writer.result.finish_reason = "tool_calls"
    events += writer.end(cancelled=False)
    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    items = writer.result.items
    assert len(items) == 4
    texts = [msgspec.to_builtins(i) for i in items]
    assert texts[0]["content"][0]["text"] == "think" and texts[1]["content"][0]["text"] == "Hello"
    assert (texts[2]["arguments"], texts[2]["call_id"], texts[3]["call_id"]) == (
        '{"a": 1}', "call_a", "call_b"
    )  # fmt: skip
    adapter = pytest.importorskip("pydantic").TypeAdapter(responses_types.ResponseStreamEvent)
    for event in events:
        data = sse_event(event).split(b"\ndata: ", 1)[1]
        assert adapter.validate_json(data).type == event.type


def test_a_stream_with_no_text_still_has_one_message() -> None:
    writer = EventWriter(new_response(decode({"input": "Hi"}), "resp_1", "m"))
    writer.result.finish_reason = "length"
    types = [e.type for e in writer.end(cancelled=False)]
    assert types[0] == "response.output_item.added" and types[-1] == "response.output_item.done"
    assert msgspec.to_builtins(writer.result.items[0])["status"] == "incomplete"


# ---- the store ---------------------------------------------------------------------------


def _stored(response_id: str) -> Any:
    return new_response(decode({"input": "Hi"}), response_id, "m")


def test_the_store_keeps_gets_and_deletes() -> None:
    store = ResponseStore()
    store.put_sync(_stored("resp_a"), [{"role": "user", "content": "Hi"}])
    got = store.get_sync("resp_a")
    assert got is not None and got.response.id == "resp_a"
    assert got.input == [{"role": "user", "content": "Hi"}]
    assert store.delete_sync("resp_a") and not store.delete_sync("resp_a")
    assert store.get_sync("resp_a") is None


def test_the_store_prunes_the_oldest_beyond_max_items() -> None:
    store = ResponseStore(max_items=3)
    for i in range(5):
        store.put_sync(_stored(f"resp_{i}"), [])
    assert len(store) == 3
    assert [store.get_sync(f"resp_{i}") is not None for i in range(5)] == [False, False] + [
        True
    ] * 3


def test_expired_responses_are_not_found_and_pruned(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResponseStore(max_age=60)
    store.put_sync(_stored("resp_old"), [])
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    assert store.get_sync("resp_old") is None
    store.put_sync(_stored("resp_new"), [])
    assert len(store) == 1


def test_a_store_file_survives_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "responses.sqlite")
    store = ResponseStore(path)
    store.put_sync(_stored("resp_a"), [{"role": "user", "content": "Hi"}])
    store.close()
    again = ResponseStore(path)
    got = again.get_sync("resp_a")
    assert got is not None and got.input == [{"role": "user", "content": "Hi"}]


# ---- routes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v1/responses/resp_1", "/v1/responses/{response_id}"),
        ("/v1/responses/resp_1/cancel", "/v1/responses/{response_id}/cancel"),
        ("/v1/responses/resp_1/other", "/v1/responses/resp_1/other"),
        ("/v1/responses", "/v1/responses"),
    ],
)
def test_response_routes(path: str, route: str) -> None:
    assert route_path(path) == route


def test_response_id_of_a_path() -> None:
    assert response_id_of("/v1/responses/resp_1/cancel") == "resp_1"
    assert response_id_of("/v1/responses/resp_1") == "resp_1"
