"""`json_array`: the output `tool_choice: "required"` is constrained to, a JSON array
of call objects `[{"name": ..., "parameters": {...}}, ...]` (vLLM's shape for it).

The grammar guarantees the shape, so this parser only has to read it as it grows:
brackets, commas and whitespace are neither content nor call; each element is a call,
announced once its name is known, its arguments streamed as the model writes them.
Any other text (a model run without the grammar) is content.
"""

from __future__ import annotations

from typing import ClassVar

from llmcore.parsers import CallPiece, Piece, TextPiece, ToolParser
from plugins.tool_parsers.json_prefix import JsonStatus, scan_call_object, skip_ws
from plugins.tool_parsers.pieces import object_call

_ARGUMENTS = ("parameters", "arguments")


class JsonArrayToolParser(ToolParser):
    name: ClassVar[str] = "json_array"

    def scan(self, text: str, start: int, final: bool) -> list[Piece]:
        i = skip_ws(text, start)
        if i == len(text):
            return [TextPiece(start, len(text))] if final and i > start else []
        if text[i] != "[":
            return [TextPiece(start, len(text))]
        pieces: list[Piece] = []
        i = skip_ws(text, i + 1)
        while i < len(text) and text[i] != "]":
            obj = scan_call_object(text, i, "name", _ARGUMENTS)
            if obj.status is JsonStatus.COMPLETE:
                call = object_call(text, i, obj, obj.end)
            elif final or obj.status is JsonStatus.INVALID:
                call = CallPiece(i, len(text), failed=True)
            else:
                pieces.append(object_call(text, i, obj, None))
                return pieces
            pieces.append(call)
            if call.failed:
                return pieces
            i = skip_ws(text, obj.end)
            if i < len(text) and text[i] == ",":
                i = skip_ws(text, i + 1)
            elif i < len(text) and text[i] != "]":
                pieces.append(TextPiece(i, len(text)))
                return pieces
        if i < len(text):  # past the closing bracket
            rest = skip_ws(text, i + 1)
            if rest < len(text):
                pieces.append(TextPiece(rest, len(text)))
        return pieces
