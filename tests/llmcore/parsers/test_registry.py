"""The parser registry: built-ins by name, plugin files, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmcore.errors import UnknownParserError
from llmcore.parsers import (
    ReasoningParser,
    ToolParser,
    load_plugin_file,
    reasoning_parser,
    reasoning_parser_names,
    tool_parser,
    tool_parser_names,
)

TOOL_NAMES = ["hermes", "llama3_json", "mistral", "pythonic", "qwen3_coder"]


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_builtin_tool_parsers(name: str) -> None:
    cls = tool_parser(name)
    assert issubclass(cls, ToolParser) and cls.name == name
    assert cls(None).extract("plain").content == "plain"


@pytest.mark.parametrize("name", ["deepseek_r1", "qwen3"])
def test_builtin_reasoning_parsers(name: str) -> None:
    cls = reasoning_parser(name)
    assert issubclass(cls, ReasoningParser) and cls.name == name
    assert cls().extract("<think>r</think>c") == ("r", "c")


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(UnknownParserError, match=r"unknown tool parser 'nope'.*hermes.*pythonic"):
        tool_parser("nope")
    with pytest.raises(UnknownParserError, match="deepseek_r1, qwen3"):
        reasoning_parser("nope")


PLUGIN = """
from llmcore.parsers import TextPiece, ToolParser, register_tool_parser


@register_tool_parser("shouting")
class Shouting(ToolParser):
    def scan(self, text, start, final):
        return [TextPiece(start, len(text))]
"""


def test_a_plugin_file_registers_its_parser(tmp_path: Path) -> None:
    path = tmp_path / "my_parsers.py"
    path.write_text(PLUGIN, encoding="utf-8")
    load_plugin_file(path)
    assert "shouting" in tool_parser_names()
    assert tool_parser("shouting")(None).extract("HI").content == "HI"
    assert "qwen3" in reasoning_parser_names()


def test_a_missing_plugin_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UnknownParserError, match="does not exist"):
        load_plugin_file(tmp_path / "absent.py")
