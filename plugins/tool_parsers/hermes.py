"""`hermes`: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per
call, several in a row for parallel calls (Hermes 2 Pro/3, Qwen2.5, Qwen3).

As vLLM: a call ends at the first `</tool_call>`; an unterminated last call is read
to the end of the text. A block whose JSON is not a call object is content.
"""

from __future__ import annotations

from typing import ClassVar

from llmcore.parsers import CallPiece
from plugins.tool_parsers.json_prefix import JsonStatus, scan_call_object, skip_ws
from plugins.tool_parsers.pieces import TaggedToolParser, object_call


class HermesToolParser(TaggedToolParser):
    name: ClassVar[str] = "hermes"
    arguments_keys: ClassVar[tuple[str, ...]] = ("arguments",)

    def call(self, text: str, start: int, body: int, end: int | None) -> CallPiece:
        obj = scan_call_object(text, skip_ws(text, body), "name", self.arguments_keys)
        if end is not None and obj.status is JsonStatus.COMPLETE:
            if skip_ws(text, obj.end) != len(text):
                return CallPiece(start, end, failed=True)  # text after the object
        return object_call(text, start, obj, end)
