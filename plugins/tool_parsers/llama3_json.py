"""`llama3_json`: Llama 3.1/3.2's JSON tool calls: the output is a call object
`{"name": ..., "parameters": {...}}` (or `"arguments"`), possibly after
`<|python_tag|>`, several separated by `;`.

As vLLM's streaming path: only an output that starts (after whitespace) with the tag
or `{` holds calls; anything else is content. Text after the last call is content;
an output whose first object is not a call is content, whole.
"""

from __future__ import annotations

from typing import ClassVar

from llmcore.parsers import CallPiece, Piece, TextPiece, ToolParser
from plugins.tool_parsers.json_prefix import JsonStatus, scan_call_object, skip_ws
from plugins.tool_parsers.pieces import object_call

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    name: ClassVar[str] = "llama3_json"

    def scan(self, text: str, start: int, final: bool) -> list[Piece]:
        i = skip_ws(text, start)
        if i == len(text) or (not final and PYTHON_TAG.startswith(text[i:])):
            return [TextPiece(start, len(text))] if final and i > start else []
        if text.startswith(PYTHON_TAG, i):
            i = skip_ws(text, i + len(PYTHON_TAG))
            if i == len(text) and not final:
                return []
        if i == len(text) or text[i] != "{":
            return [TextPiece(start, len(text))]
        return self._calls(text, start, i, final)

    def _calls(self, text: str, start: int, i: int, final: bool) -> list[Piece]:
        pieces: list[Piece] = []
        call_start = start  # the first call's text includes the tag before it
        while True:
            obj = scan_call_object(text, i, "name", ("parameters", "arguments"))
            if obj.status is JsonStatus.COMPLETE:
                call = object_call(text, call_start, obj, obj.end)
            elif final or obj.status is JsonStatus.INVALID:
                call = CallPiece(call_start, len(text), failed=True)
            else:
                pieces.append(object_call(text, call_start, obj, None))
                return pieces
            if call.failed:
                # Not a call: it and all after it are content (they arrive as such).
                pieces.append(CallPiece(call_start, len(text), failed=True))
                return pieces
            pieces.append(call)
            after = skip_ws(text, obj.end)
            if after < len(text) and text[after] == ";":
                following = skip_ws(text, after + 1)
                if following < len(text) and text[following] == "{":
                    call_start, i = following, following
                    continue
                if following == len(text):
                    return pieces  # a trailing separator is not content
            elif after == len(text):
                return pieces  # whitespace after the last call is not content
            pieces.append(TextPiece(obj.end, len(text)))
            return pieces
