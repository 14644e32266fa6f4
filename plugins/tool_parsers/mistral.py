"""`mistral`: after `[TOOL_CALLS]`, either a JSON list of call objects
(`[{"name": ..., "arguments": {...}}, ...]`, tokenizers before v11) or one call as
`name[ARGS]{...}` (v11 and later; several calls repeat the marker).

Text before the marker is content, as in vLLM; so is text after the calls. Call ids
are 9 letters and digits, as vLLM's: Mistral's chat templates reject other ids when
the calls come back in the conversation. A malformed call makes it and all the text
after it content.
"""

from __future__ import annotations

import re
import secrets
import string
from typing import ClassVar

from llmcore.parsers import CallPiece, Piece, ToolParser
from plugins.tool_parsers.json_prefix import JsonStatus, scan_call_object, scan_value, skip_ws
from plugins.tool_parsers.pieces import content_until, object_call

MARKER = "[TOOL_CALLS]"
ARGS = "[ARGS]"
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_ID_ALPHABET = string.ascii_letters + string.digits


class MistralToolParser(ToolParser):
    name: ClassVar[str] = "mistral"

    def make_call_id(self) -> str:
        return "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))

    def scan(self, text: str, start: int, final: bool) -> list[Piece]:
        pieces: list[Piece] = []
        after_call = False
        while True:
            content, found = content_until(text, start, MARKER, final=final, after_call=after_call)
            pieces += content
            if found is None:
                return pieces
            i = skip_ws(text, found + len(MARKER))
            if i == len(text) and not final:
                return [*pieces, CallPiece(found)]
            if i < len(text) and text[i] == "[":
                calls, end = self._list(text, found, i, final)
            else:
                calls, end = self._named(text, found, i, final)
            pieces += calls
            if end is None:
                return pieces
            start, after_call = end, True

    def _list(self, text: str, start: int, i: int, final: bool) -> tuple[list[Piece], int | None]:
        """The calls of the JSON list at `i`; the position after it (None: not yet over)."""
        pieces: list[Piece] = []
        call_start, i = start, skip_ws(text, i + 1)
        while True:
            obj = scan_call_object(text, i, "name", ("arguments",))
            if obj.status is JsonStatus.INCOMPLETE and not final:
                return [*pieces, object_call(text, call_start, obj, None)], None
            call = object_call(text, call_start, obj, obj.end)
            if obj.status is not JsonStatus.COMPLETE or call.failed:
                return [*pieces, CallPiece(call_start, len(text), failed=True)], None
            pieces.append(call)
            after = skip_ws(text, obj.end)
            if after < len(text) and text[after] == "]":
                return pieces, after + 1
            if after < len(text) and text[after] == ",":
                call_start = i = skip_ws(text, after + 1)
                continue
            if after == len(text):
                return pieces, None if not final else len(text)
            return [*pieces, CallPiece(obj.end, len(text), failed=True)], None

    def _named(self, text: str, start: int, i: int, final: bool) -> tuple[list[Piece], int | None]:
        """The `name[ARGS]{...}` call at `i`; the position after it (None: not yet over)."""
        failed: list[Piece] = [CallPiece(start, len(text), failed=True)]
        match = _NAME.match(text, i)
        name_end = match.end() if match else i
        rest = text[name_end:]
        if not rest.startswith(ARGS):
            if not final and (name_end == len(text) or ARGS.startswith(rest)):
                return [CallPiece(start)], None
            return failed, None
        if match is None:
            return failed, None
        args_start = skip_ws(text, name_end + len(ARGS))
        status, end = scan_value(text, args_start, final)
        opens_object = args_start < len(text) and text[args_start] == "{"
        if status is JsonStatus.COMPLETE and opens_object:
            return [CallPiece(start, end, match.group(), text[args_start:end])], end
        if status is JsonStatus.INCOMPLETE and not final:
            if not opens_object:
                return [CallPiece(start)], None
            return [CallPiece(start, name=match.group(), arguments=text[args_start:])], None
        return failed, None
