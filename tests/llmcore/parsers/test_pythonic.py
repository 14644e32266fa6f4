"""`pythonic`: `[f(a=1), g()]`, literals only, read with `ast`."""

from __future__ import annotations

import pytest

from plugins.tool_parsers.pythonic import PythonicToolParser
from tests.llmcore.parsers.harness import check_tools, check_tools_broken_late


def make() -> PythonicToolParser:
    return PythonicToolParser(None)


WELL_FORMED = [
    pytest.param(
        '[get_weather(city="Paris")]', [("get_weather", {"city": "Paris"})], None, id="single"
    ),
    pytest.param(
        "[a(x=1, y=-2.5, z=None, flag=True), b()]",
        [("a", {"x": 1, "y": -2.5, "z": None, "flag": True}), ("b", {})],
        None,
        id="parallel-literals",
    ),
    pytest.param(
        "[s(q='it\\'s \"é\" 日本', nested={'k': [1, (2, 3)], 'm': {'n': 'a, b)'}})]",
        [("s", {"q": 'it\'s "é" 日本', "nested": {"k": [1, [2, 3]], "m": {"n": "a, b)"}}})],
        None,
        id="quotes-unicode-nested",
    ),
    pytest.param("  [f()]\n", [("f", {})], None, id="whitespace-around"),
    pytest.param("[f(a=1)] and more", [("f", {"a": 1})], " and more", id="text-after"),
    pytest.param("Hello there.", [], "Hello there.", id="prose"),
    pytest.param("[1, 2, 3] are numbers", [], "[1, 2, 3] are numbers", id="list-not-calls"),
    pytest.param("[f(1)]", [], "[f(1)]", id="positional"),
]


@pytest.mark.parametrize(("text", "calls", "content"), WELL_FORMED)
def test_calls(text: str, calls: list, content: str | None) -> None:
    check_tools(make, text, calls, content)


@pytest.mark.parametrize("text", ["[f(a=1, b=open())]", "[f(a=x)]", "[f(a=1"])
def test_broken_after_announcement(text: str) -> None:
    check_tools_broken_late(make, text, "f", '{"a": 1}')
