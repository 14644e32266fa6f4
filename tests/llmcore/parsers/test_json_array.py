"""`json_array`: the calls `tool_choice: "required"` constrains the output to."""

from __future__ import annotations

import pytest

from plugins.tool_parsers.json_array import JsonArrayToolParser
from tests.llmcore.parsers.harness import check_tools


def make() -> JsonArrayToolParser:
    return JsonArrayToolParser(None)


@pytest.mark.parametrize(
    ("text", "calls", "content"),
    [
        ('[{"name": "f", "parameters": {"a": 1}}]', [("f", {"a": 1})], None),
        (
            '[\n  {"name": "get_weather", "parameters": {"city": "Paris \\"é\\""}},\n'
            '  {"name": "add", "parameters": {"a": [1, {"b": null}]}}\n]',
            [("get_weather", {"city": 'Paris "é"'}), ("add", {"a": [1, {"b": None}]})],
            None,
        ),
        ('[{"parameters": {}, "name": "g"}]', [("g", {})], None),
        ("not an array", [], "not an array"),
        ('[{"name": "f", "parameters": {}}] trailing', [("f", {})], "trailing"),
    ],
)
def test_calls_stream_as_they_are_read(text: str, calls: list, content: str | None) -> None:
    check_tools(make, text, calls, content)


def test_a_broken_element_is_content() -> None:
    extracted = make().extract('[{"name": "f", "parameters": {"a": }]')
    assert extracted.tool_calls == [] and extracted.content is not None
