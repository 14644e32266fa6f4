"""`hermes`: <tool_call>{json}</tool_call> blocks (Hermes 2 Pro/3, Qwen2.5, Qwen3)."""

from __future__ import annotations

import pytest

from plugins.tool_parsers.hermes import HermesToolParser
from tests.llmcore.parsers.harness import check_tools, check_tools_broken_late

MARKERS = ("<tool_call>", "</tool_call>")


def make() -> HermesToolParser:
    return HermesToolParser(None)


WELL_FORMED = [
    pytest.param(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        [("get_weather", {"city": "Paris"})],
        None,
        id="single",
    ),
    pytest.param(
        '<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "b", "arguments": {"y": [1, 2]}}\n</tool_call>\n',
        [("a", {"x": 1}), ("b", {"y": [1, 2]})],
        None,
        id="parallel",
    ),
    pytest.param(
        'Let me check.\n\n<tool_call>{"name": "f", "arguments": {}}</tool_call>\nDone.',
        [("f", {})],
        "Let me check.\n\n\nDone.",
        id="text-before-and-after",
    ),
    pytest.param(
        '<tool_call>{"arguments": {"q": "caf\\u00e9 \\"quoted\\" \\\\ ü 日本"}, "name": "s"}'
        "</tool_call>",
        [("s", {"q": 'café "quoted" \\ ü 日本'})],
        None,
        id="unicode-escapes-arguments-first",
    ),
    pytest.param(
        '<tool_call>{"name": "n", "arguments": {"a": {"b": [{"c": null}, true, -1.5e3]},'
        ' "d": "</tool"}}</tool_call>',
        [("n", {"a": {"b": [{"c": None}, True, -1500.0]}, "d": "</tool"})],
        None,
        id="nested",
    ),
    pytest.param(
        '<tool_call>{"name": "noargs"}</tool_call>', [("noargs", {})], None, id="no-arguments"
    ),
    pytest.param(
        '<tool_call>{"name": "s", "arguments": "{\\"a\\": 1}"}</tool_call>',
        [("s", {"a": 1})],
        None,
        id="arguments-as-a-string",
    ),
    pytest.param(
        'x <tool_call>{"name": "f", "arguments": {"a": 1}}',
        [("f", {"a": 1})],
        "x ",
        id="unterminated-but-complete",
    ),
    pytest.param("Just an answer, no tools.", [], "Just an answer, no tools.", id="no-call"),
    pytest.param("a < b and <tool_ is not a tag", [], "a < b and <tool_ is not a tag", id="lt"),
    pytest.param("  \n", [], "  \n", id="whitespace-only"),
]


@pytest.mark.parametrize(("text", "calls", "content"), WELL_FORMED)
def test_well_formed(text: str, calls: list, content: str | None) -> None:
    check_tools(make, text, calls, content, MARKERS)


REJECTED = [
    pytest.param("<tool_call>not json</tool_call>", id="not-json"),
    pytest.param('<tool_call>{"nam": "f"}</tool_call>', id="no-name"),
    pytest.param('<tool_call>{"name": 3, "arguments": {}}</tool_call>', id="name-not-string"),
    pytest.param('<tool_call>{"name": "f", "arguments": [1]}</tool_call>', id="list-arguments"),
    pytest.param('<tool_call>{"name": "f", "argu', id="unterminated-before-arguments"),
    pytest.param("<tool_call>", id="bare-start"),
]


@pytest.mark.parametrize("text", REJECTED)
def test_malformed_call_is_content(text: str) -> None:
    check_tools(make, text, [], text)


def test_malformed_call_among_good_ones_is_content_alone() -> None:
    bad = "<tool_call>{oops}</tool_call>"
    text = f'{bad}\n<tool_call>{{"name": "g", "arguments": {{"z": 0}}}}</tool_call>'
    check_tools(make, text, [("g", {"z": 0})], bad)


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "f", "arguments": {"a": 1,}}</tool_call>',
        '<tool_call>{"name": "f", "arguments": {"a": 1}} junk</tool_call>',
        '<tool_call>{"name": "f", "arguments": {"a": "unterminated',
    ],
)
def test_broken_after_announcement(text: str) -> None:
    """The call could be announced before it broke: extract gives content, a stream
    keeps a valid prefix of the arguments and drops the rest (or, had it seen the
    whole call at once, gives content too)."""
    check_tools_broken_late(make, text, "f", text[text.index('{"a"') :])


def test_arguments_stream_as_they_grow() -> None:
    stream = make().stream()
    out = [stream.feed(c) for c in '<tool_call>{"name": "f", "arguments": {"a": "hello"}}']
    fragments = [d.arguments for r in out for d in r.tool_calls]
    assert len(fragments) > 5
    assert "".join(f or "" for f in fragments) == '{"a": "hello"}'
