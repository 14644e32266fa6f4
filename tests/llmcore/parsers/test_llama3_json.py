"""`llama3_json`: Llama 3.1/3.2 JSON calls, `{"name": ..., "parameters": {...}}`."""

from __future__ import annotations

import pytest

from plugins.tool_parsers.llama3_json import Llama3JsonToolParser
from tests.llmcore.parsers.harness import check_tools, check_tools_broken_late


def make() -> Llama3JsonToolParser:
    return Llama3JsonToolParser(None)


WELL_FORMED = [
    pytest.param(
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        [("get_weather", {"city": "Paris"})],
        None,
        id="single",
    ),
    pytest.param(
        '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; '
        '{"name": "b", "arguments": {"y": {"z": [true, null]}}}',
        [("a", {"x": 1}), ("b", {"y": {"z": [True, None]}})],
        None,
        id="parallel-python-tag",
    ),
    pytest.param(
        '\n{"type": "function", "name": "s", "parameters": {"q": "\\"é\\" \\u65e5"}}\n',
        [("s", {"q": '"é" 日'})],
        None,
        id="escapes-extra-key",
    ),
    pytest.param(
        '{"name": "f", "parameters": {}} Hope that helps.',
        [("f", {})],
        " Hope that helps.",
        id="text-after",
    ),
    pytest.param('{"name": "f"};', [("f", {})], None, id="no-parameters"),
    pytest.param("The answer is {x}.", [], "The answer is {x}.", id="prose"),
    pytest.param('{"answer": 42}', [], '{"answer": 42}', id="json-not-a-call"),
    pytest.param("{not json", [], "{not json", id="not-json"),
    pytest.param("<|python", [], "<|python", id="cut-tag"),
]


@pytest.mark.parametrize(("text", "calls", "content"), WELL_FORMED)
def test_calls(text: str, calls: list, content: str | None) -> None:
    if content is None and not calls:
        content = text
    check_tools(make, text, calls, content, ("<|python_tag|>",) if calls else ())


@pytest.mark.parametrize(
    "text", ['{"name": "f", "parameters": {"a": 1,}}', '{"name": "f", "parameters": {"a": ']
)
def test_broken_after_announcement(text: str) -> None:
    check_tools_broken_late(make, text, "f", '{"a": 1,}}')
