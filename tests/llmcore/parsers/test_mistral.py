"""`mistral`: `[TOOL_CALLS]` then a JSON list of calls, or `name[ARGS]{...}`."""

from __future__ import annotations

import pytest

from plugins.tool_parsers.mistral import MistralToolParser
from tests.llmcore.parsers.harness import check_tools, check_tools_broken_late

MARKERS = ("[TOOL_CALLS]", "[ARGS]")


def make() -> MistralToolParser:
    return MistralToolParser(None)


WELL_FORMED = [
    pytest.param(
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        [("get_weather", {"city": "Paris"})],
        None,
        id="list-single",
    ),
    pytest.param(
        'Sure.[TOOL_CALLS][{"name": "a", "arguments": {"x": [1, {"y": "ü\\""}]}}, '
        '{"name": "b", "arguments": {}}]',
        [("a", {"x": [1, {"y": 'ü"'}]}), ("b", {})],
        "Sure.",
        id="list-parallel-text-before",
    ),
    pytest.param(
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "C"}',
        [("get_weather", {"city": "Paris", "unit": "C"})],
        None,
        id="v11-single",
    ),
    pytest.param(
        'ok [TOOL_CALLS]a[ARGS]{"q": "日本"}[TOOL_CALLS]b-2[ARGS]{} and text after',
        [("a", {"q": "日本"}), ("b-2", {})],
        "ok  and text after",
        id="v11-parallel-text-around",
    ),
    pytest.param("No calls [here].", [], "No calls [here].", id="no-call"),
]


@pytest.mark.parametrize(("text", "calls", "content"), WELL_FORMED)
def test_calls(text: str, calls: list, content: str | None) -> None:
    check_tools(make, text, calls, content, MARKERS)


@pytest.mark.parametrize(
    "text",
    ["[TOOL_CALLS] not json", "[TOOL_CALLS][{]", "[TOOL_CALLS]f", "[TOOL_CALLS]f[ARGS]7"],
)
def test_malformed_is_content(text: str) -> None:
    check_tools(make, text, [], text)


def test_broken_after_announcement() -> None:
    check_tools_broken_late(make, '[TOOL_CALLS]f[ARGS]{"a": 1,}', "f", '{"a": 1,}')


def test_ids_are_nine_letters_and_digits() -> None:
    (call,) = make().extract("[TOOL_CALLS]f[ARGS]{}").tool_calls
    assert len(call.id) == 9 and call.id.isalnum()
