"""Finds tool-call and reasoning parsers by name.

Three sources, looked up in this order: classes registered at run time with
`register_tool_parser` / `register_reasoning_parser` (what a `--tool-parser-plugin`
file loaded by `load_plugin_file` does), the entry-point groups
`llmcore.tool_parsers` and `llmcore.reasoning_parsers`, and the built-in table of
`name -> "module:attr"`, imported only when asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from llmcore.errors import UnknownParserError
from llmcore.parsers.reasoning_parser import ReasoningParser
from llmcore.parsers.tool_parser import ToolParser

TOOL_PARSER_GROUP = "llmcore.tool_parsers"
REASONING_PARSER_GROUP = "llmcore.reasoning_parsers"

_BUILTIN_TOOL_PARSERS: dict[str, str] = {
    "hermes": "plugins.tool_parsers.hermes:HermesToolParser",
    "json_array": "plugins.tool_parsers.json_array:JsonArrayToolParser",
    "llama3_json": "plugins.tool_parsers.llama3_json:Llama3JsonToolParser",
    "mistral": "plugins.tool_parsers.mistral:MistralToolParser",
    "pythonic": "plugins.tool_parsers.pythonic:PythonicToolParser",
    "qwen3_coder": "plugins.tool_parsers.qwen3_coder:Qwen3CoderToolParser",
}

_BUILTIN_REASONING_PARSERS: dict[str, str] = {
    "deepseek_r1": "plugins.reasoning_parsers.think_tags:DeepSeekR1ReasoningParser",
    "qwen3": "plugins.reasoning_parsers.qwen3:Qwen3ReasoningParser",
}


@dataclass(frozen=True, slots=True)
class _Family:
    """One kind of parser: its registered classes, entry-point group and built-ins."""

    kind: str
    group: str
    builtin: dict[str, str]
    registered: dict[str, Any] = field(default_factory=dict)

    def names(self) -> list[str]:
        installed = {ep.name for ep in entry_points(group=self.group)}
        return sorted({*self.registered, *installed, *self.builtin})

    def resolve(self, name: str) -> Any:
        if name in self.registered:
            return self.registered[name]
        for ep in entry_points(group=self.group):
            if ep.name == name:
                return ep.load()
        target = self.builtin.get(name)
        if target is None:
            raise UnknownParserError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            )
        module_name, _, attr = target.partition(":")
        return getattr(importlib.import_module(module_name), attr)


_TOOL_PARSERS = _Family("tool parser", TOOL_PARSER_GROUP, _BUILTIN_TOOL_PARSERS)
_REASONING_PARSERS = _Family("reasoning parser", REASONING_PARSER_GROUP, _BUILTIN_REASONING_PARSERS)


def register_tool_parser(name: str) -> Callable[[type[ToolParser]], type[ToolParser]]:
    """Class decorator: makes the class the tool parser called `name`."""

    def register(cls: type[ToolParser]) -> type[ToolParser]:
        cls.name = name
        _TOOL_PARSERS.registered[name] = cls
        return cls

    return register


def register_reasoning_parser(
    name: str,
) -> Callable[[type[ReasoningParser]], type[ReasoningParser]]:
    """Class decorator: makes the class the reasoning parser called `name`."""

    def register(cls: type[ReasoningParser]) -> type[ReasoningParser]:
        cls.name = name
        _REASONING_PARSERS.registered[name] = cls
        return cls

    return register


def load_plugin_file(path: str | Path) -> None:
    """Imports a Python file (`--tool-parser-plugin FILE`); its decorators register
    its parsers."""
    path = Path(path)
    if not path.is_file():
        raise UnknownParserError(f"parser plugin file {str(path)!r} does not exist")
    module_name = f"llmcore_parser_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UnknownParserError(f"parser plugin file {str(path)!r} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)


def tool_parser_names() -> list[str]:
    """Every tool parser name: registered, installed and built-in."""
    return _TOOL_PARSERS.names()


def reasoning_parser_names() -> list[str]:
    """Every reasoning parser name: registered, installed and built-in."""
    return _REASONING_PARSERS.names()


def tool_parser(name: str) -> type[ToolParser]:
    """The tool parser class called `name`; an unknown name lists the known ones."""
    cls: type[ToolParser] = _TOOL_PARSERS.resolve(name)
    return cls


def reasoning_parser(name: str) -> type[ReasoningParser]:
    """The reasoning parser class called `name`; an unknown name lists the known ones."""
    cls: type[ReasoningParser] = _REASONING_PARSERS.resolve(name)
    return cls
