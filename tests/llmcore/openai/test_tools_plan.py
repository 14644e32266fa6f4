"""Tools on chat completions without a model: tool_choice resolved to a plan, the
grammar of "required" and of a named function, the named call's reading, and the
reasoning parser chained before the tool parser."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from llmcore.errors import InvalidRequestError
from llmcore.openai.chat_output import ChoiceShape
from llmcore.openai.options import ServiceOptions
from llmcore.openai.protocol import CHAT_DECODER
from llmcore.openai.tools import NamedCallParser, ToolMode, plan_tools, tool_constraint
from llmcore.parsers import tool_parser
from tests.llmcore.parsers.harness import splits

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ADD = {"type": "function", "function": {"name": "add"}}
AUTO = ServiceOptions(enable_auto_tool_choice=True, tool_call_parser="hermes")


def plan(options: ServiceOptions = AUTO, **fields: Any) -> Any:
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    return plan_tools(CHAT_DECODER.decode(msgspec.json.encode(body)), options)


def test_choices_resolve_to_modes() -> None:
    assert plan().mode is ToolMode.NONE
    assert plan(tools=[WEATHER]).mode is ToolMode.AUTO  # OpenAI's default with tools
    assert plan(tools=[WEATHER], tool_choice="none").mode is ToolMode.NONE
    assert plan(tools=[WEATHER], tool_choice="required").mode is ToolMode.REQUIRED
    named = plan(
        tools=[WEATHER, ADD], tool_choice={"type": "function", "function": {"name": "add"}}
    )
    assert named.mode is ToolMode.NAMED and named.name == "add"
    assert not plan(tools=[WEATHER], parallel_tool_calls=False).parallel


@pytest.mark.parametrize(
    ("fields", "options", "param"),
    [
        ({"tools": [WEATHER]}, ServiceOptions(), "tool_choice"),  # auto without the flag
        ({"tools": [WEATHER], "tool_choice": "auto"}, ServiceOptions(), "tool_choice"),
        ({"tool_choice": "required"}, AUTO, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            AUTO,
            "tool_choice",
        ),
        ({"tools": [WEATHER], "tool_choice": {"function": "get_weather"}}, AUTO, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, AUTO, "tool_choice"),
        ({"tools": [{"type": "retrieval"}]}, AUTO, "tools"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, AUTO, "tools"),
        ({"tools": [WEATHER, WEATHER]}, AUTO, "tools"),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}
                ]
            },
            AUTO,
            "tools",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]},
            AUTO,
            "tools",
        ),
    ],
)
def test_bad_tools_and_choices_are_400s_naming_the_field(
    fields: dict[str, Any], options: ServiceOptions, param: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        plan(options, **fields)
    assert info.value.param == param and param in str(info.value)


def test_required_is_an_array_of_calls_and_named_is_the_parameters() -> None:
    required = tool_constraint(plan(tools=[WEATHER, ADD], tool_choice="required"))
    assert required is not None and required.param == "tools"
    schema = required.json_value(required.kind)
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    names = [item["properties"]["name"]["const"] for item in schema["items"]["anyOf"]]
    assert names == ["get_weather", "add"]
    single = tool_constraint(
        plan(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    )
    assert single is not None and single.json_value(single.kind)["maxItems"] == 1
    named = tool_constraint(
        plan(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    )
    assert named is not None and named.json == WEATHER["function"]["parameters"]
    assert tool_constraint(plan(tools=[WEATHER])) is None


def test_a_named_call_streams_its_arguments_from_the_first_delta() -> None:
    text = '{"city": "Paris"}'
    whole = NamedCallParser("get_weather").extract(text)
    assert [(c.name, c.arguments) for c in whole.tool_calls] == [("get_weather", text)]
    for deltas in splits(text):
        stream = NamedCallParser("get_weather").stream()
        parts = [stream.feed(d) for d in deltas] + [stream.finish()]
        calls = [c for p in parts for c in p.tool_calls]
        assert calls[0].id is not None and calls[0].name == "get_weather"
        assert all(c.id is None and c.name is None for c in calls[1:])
        assert "".join(c.arguments or "" for c in calls) == text


REASONED = (
    "<think>The user wants weather.</think>Let me check.\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
)


@pytest.mark.parametrize("parallel", [True, False])
def test_reasoning_then_tools_agree_streamed_and_whole(parallel: bool) -> None:
    def shape() -> ChoiceShape:
        return ChoiceShape(
            reasoning_parser_name="deepseek_r1",
            tools=tool_parser("hermes")(None),
            parallel=parallel,
        )

    text = REASONED + '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    whole = shape().whole(text)
    assert whole.reasoning == "The user wants weather."
    assert whole.content == "Let me check.\n"
    expected = [("get_weather", {"city": "Paris"}), ("f", {})][: 2 if parallel else 1]
    assert [(c.name, json.loads(c.arguments)) for c in whole.tool_calls] == expected
    for deltas in splits(text, random_cuts=3):
        stream = shape().stream()
        parts = [stream.feed(d) for d in deltas] + [stream.finish()]
        assert "".join(p.reasoning for p in parts) == whole.reasoning
        assert "".join(p.content for p in parts) == whole.content
        calls: dict[int, list[str]] = {}
        for call in (c for p in parts for c in p.tool_calls):
            entry = calls.setdefault(call.index, [call.name or "", ""])
            entry[1] += call.arguments or ""
        assert [(n, json.loads(a)) for n, a in calls.values()] == expected, deltas
        assert stream.called


def test_include_reasoning_false_drops_it() -> None:
    shape = ChoiceShape(reasoning_parser_name="deepseek_r1", include_reasoning=False)
    assert shape.whole("<think>hmm</think>Answer").reasoning is None
    stream = shape.stream()
    parts = [stream.feed("<think>hmm</think>Ans"), stream.feed("wer"), stream.finish()]
    assert "".join(p.reasoning for p in parts) == ""
    assert "".join(p.content for p in parts) == "Answer"
