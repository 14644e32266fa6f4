"""Tool-call and reasoning parsers: the interfaces, and the registry that finds the
implementations (built-in ones live in `plugins.tool_parsers` and
`plugins.reasoning_parsers`; others come from entry points or plugin files)."""

from __future__ import annotations

from llmcore.parsers.reasoning_parser import (
    ReasoningDelta,
    ReasoningParser,
    ReasoningScan,
    ReasoningStream,
)
from llmcore.parsers.registry import (
    load_plugin_file,
    reasoning_parser,
    reasoning_parser_names,
    register_reasoning_parser,
    register_tool_parser,
    tool_parser,
    tool_parser_names,
)
from llmcore.parsers.tool_parser import (
    CallPiece,
    ExtractedToolCalls,
    Piece,
    StreamDelta,
    TextPiece,
    ToolCall,
    ToolCallDelta,
    ToolCallStream,
    ToolParser,
    json_members_text,
    make_tool_call_id,
)

__all__ = [
    "CallPiece",
    "ExtractedToolCalls",
    "Piece",
    "ReasoningDelta",
    "ReasoningParser",
    "ReasoningScan",
    "ReasoningStream",
    "StreamDelta",
    "TextPiece",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallStream",
    "ToolParser",
    "json_members_text",
    "load_plugin_file",
    "make_tool_call_id",
    "reasoning_parser",
    "reasoning_parser_names",
    "register_reasoning_parser",
    "register_tool_parser",
    "tool_parser",
    "tool_parser_names",
]
