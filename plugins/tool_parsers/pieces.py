"""The parts the tool-call formats share: content up to a call marker (holding back
what may be the marker's start), and a `CallPiece` made from a JSON call object.

Whitespace that only separates calls (or trails the last one, or leads the first)
is not content; any other text outside calls is, exactly as written.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from typing import ClassVar

from llmcore.parsers import CallPiece, Piece, TextPiece, ToolParser
from plugins.tool_parsers.json_prefix import CallObject, JsonStatus


def partial_marker_len(text: str, marker: str, start: int) -> int:
    """The length of the longest proper prefix of `marker` that `text[start:]` ends with."""
    for size in range(min(len(marker) - 1, len(text) - start), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


def content_until(
    text: str, start: int, marker: str, *, final: bool, after_call: bool
) -> tuple[list[Piece], int | None]:
    """The content pieces of `text[start:]` up to the next `marker`, and the marker's
    position (None when there is none yet: the pieces then cover what is decided)."""
    found = text.find(marker, start)
    if found >= 0:
        segment = text[start:found]
        pieces: list[Piece] = [TextPiece(start, found)] if segment.strip() else []
        return pieces, found
    end = len(text) - (0 if final else partial_marker_len(text, marker, start))
    segment = text[start:end]
    if segment.strip():
        return [TextPiece(start, end)], None
    if final and segment and not after_call:
        return [TextPiece(start, end)], None  # an output of whitespace only
    return [], None


def object_arguments(text: str, obj: CallObject) -> str | None:
    """A complete call object's arguments as a JSON object text: the object as written,
    `{}` when absent or null, the decoded text of a string holding an object; None
    (not a call) for anything else."""
    if obj.arguments_start is None:
        return "{}"
    assert obj.arguments_end is not None
    raw = text[obj.arguments_start : obj.arguments_end]
    if raw.startswith("{"):
        return raw
    if raw == "null":
        return "{}"
    if raw.startswith('"'):
        decoded = json.loads(raw)
        try:
            return decoded if isinstance(json.loads(decoded), dict) else None
        except ValueError:
            return None
    return None


def object_call(text: str, start: int, obj: CallObject, end: int | None) -> CallPiece:
    """The call piece of a JSON call object starting its call at `start`. `end`: where
    the call's text ends when it is over (None while it may still grow)."""
    if end is not None:
        arguments = object_arguments(text, obj) if obj.status is JsonStatus.COMPLETE else None
        if obj.name is None or arguments is None:
            return CallPiece(start, end, failed=True)
        return CallPiece(start, end, obj.name, arguments)
    if obj.name is None:
        return CallPiece(start)
    if obj.status is JsonStatus.COMPLETE:
        arguments = object_arguments(text, obj)
        if arguments is None:
            return CallPiece(start)
        return CallPiece(start, name=obj.name, arguments=arguments)
    args_start = obj.arguments_start
    if args_start is None or text[args_start] != "{":
        return CallPiece(start)  # not yet announced: the arguments may not be an object
    args_end = obj.arguments_end if obj.arguments_end is not None else obj.end
    return CallPiece(start, name=obj.name, arguments=text[args_start:args_end])


class TaggedToolParser(ToolParser):
    """Calls each between a start and an end tag (`<tool_call>`...`</tool_call>`); the
    first end tag closes a call; an unterminated last call runs to the end of the text."""

    resumable: ClassVar[bool] = True
    start_tag: ClassVar[str] = "<tool_call>"
    end_tag: ClassVar[str] = "</tool_call>"

    def scan(self, text: str, start: int, final: bool) -> list[Piece]:
        pieces: list[Piece] = []
        after_call = start > 0
        while True:
            content, found = content_until(
                text, start, self.start_tag, final=final, after_call=after_call
            )
            pieces += content
            if found is None:
                return pieces
            body = found + len(self.start_tag)
            close = text.find(self.end_tag, body)
            inner_end = close if close >= 0 else len(text)
            if close < 0 and not final:
                inner_end -= partial_marker_len(text, self.end_tag, body)
            end = close + len(self.end_tag) if close >= 0 else len(text)
            call = self.call(text[:inner_end], found, body, end if close >= 0 or final else None)
            pieces.append(call)
            if call.end is None:
                return pieces
            start, after_call = call.end, True

    @abstractmethod
    def call(self, text: str, start: int, body: int, end: int | None) -> CallPiece:
        """The call whose tag is at `start`: `text[body:]` is what the tags enclose (so
        far); `end` is where the call's text ends, once it is over."""
