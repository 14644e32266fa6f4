"""JSON as it arrives: is a text a whole value, the prefix of one, or neither?

`scan_value` answers for the value starting at a position; `scan_call_object` reads a
call object (`{"name": ..., "arguments": {...}}`) member by member and says where its
name and its arguments' text are, so far. Complete values go through the C decoder;
only an unfinished one is walked here, character by character. A text this module
calls a prefix is one that some continuation makes valid JSON (strict: no NaN).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum


class JsonStatus(Enum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    INVALID = "invalid"


_WS = " \t\n\r"
_STRING_BODY = re.compile(r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*')
_PARTIAL_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?\Z")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_NUMBER_PREFIX = re.compile(r"-?(?:(?:0|[1-9]\d*)(?:\.\d*)?(?:[eE][+-]?\d*)?)?")
_LITERALS = ("true", "false", "null")


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def scan_string(text: str, pos: int) -> tuple[JsonStatus, int]:
    """The string starting at `text[pos] == '"'`: its end, or where it stops."""
    match = _STRING_BODY.match(text, pos)
    if match is None:
        return JsonStatus.INVALID, pos
    end = match.end()
    if end < len(text) and text[end] == '"':
        return JsonStatus.COMPLETE, end + 1
    if end == len(text) or _PARTIAL_ESCAPE.match(text, end):
        return JsonStatus.INCOMPLETE, len(text)
    return JsonStatus.INVALID, end


def _scan_scalar(text: str, pos: int, final: bool) -> tuple[JsonStatus, int]:
    char = text[pos]
    if char == '"':
        return scan_string(text, pos)
    for literal in _LITERALS:
        if text.startswith(literal, pos):
            return JsonStatus.COMPLETE, pos + len(literal)
        if literal.startswith(text[pos : pos + len(literal)]) and len(text) - pos < len(literal):
            return JsonStatus.INCOMPLETE, len(text)
    prefix = _NUMBER_PREFIX.match(text, pos)
    if prefix is not None and prefix.end() == len(text) and not final:
        return JsonStatus.INCOMPLETE, len(text)
    number = _NUMBER.match(text, pos)
    if number is not None:
        return JsonStatus.COMPLETE, number.end()
    return JsonStatus.INVALID, pos


def scan_value(text: str, pos: int, final: bool = False) -> tuple[JsonStatus, int]:
    """The JSON value starting at `pos` (no leading whitespace): COMPLETE and its end,
    INCOMPLETE (and len(text)) while it may still become one, or INVALID and the
    position of the first character that cannot belong to it. `final`: the text is
    over (a number at its very end is then complete)."""
    if pos >= len(text):
        return JsonStatus.INCOMPLETE, pos
    try:
        _, end = _DECODER.raw_decode(text, pos)
    except ValueError:
        return _walk(text, pos, final)
    if end == len(text) and not final and text[pos] not in '{["tfn':
        return JsonStatus.INCOMPLETE, end  # a number may still grow
    return JsonStatus.COMPLETE, end


def _walk(text: str, pos: int, final: bool) -> tuple[JsonStatus, int]:
    """The slow path: containers by a stack, scalars by `_scan_scalar`."""
    stack: list[str] = []  # the closers of the open containers
    expect = "value"  # value | key | key_or_close | value_or_close | colon | after
    i = pos
    while True:
        if expect != "value" or stack:
            i = skip_ws(text, i)
        if i >= len(text):
            return (JsonStatus.INCOMPLETE, len(text))
        char = text[i]
        if stack and char == stack[-1] and expect in ("after", "key_or_close", "value_or_close"):
            stack.pop()
            i += 1
            if not stack:
                return JsonStatus.COMPLETE, i
            expect = "after"
        elif expect == "after":
            if char != ",":
                return JsonStatus.INVALID, i
            expect, i = ("key" if stack[-1] == "}" else "value"), i + 1
        elif expect == "colon":
            if char != ":":
                return JsonStatus.INVALID, i
            expect, i = "value", i + 1
        elif expect in ("key", "key_or_close"):
            if char != '"':
                return JsonStatus.INVALID, i
            status, i = scan_string(text, i)
            if status is not JsonStatus.COMPLETE:
                return status, i
            expect = "colon"
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
            expect, i = ("key_or_close" if char == "{" else "value_or_close"), i + 1
        else:
            status, i = _scan_scalar(text, i, final and not stack)
            if status is not JsonStatus.COMPLETE or not stack:
                return status, i
            expect = "after"


@dataclass(frozen=True, slots=True)
class CallObject:
    """What `scan_call_object` found. `end`: past the object when COMPLETE, else
    where the scan stopped. `arguments_start`/`arguments_end`: the arguments value's
    text (its end None while it is unfinished)."""

    status: JsonStatus
    end: int
    name: str | None = None
    arguments_start: int | None = None
    arguments_end: int | None = None


def scan_call_object(
    text: str, pos: int, name_key: str, arguments_keys: tuple[str, ...]
) -> CallObject:
    """Reads the object at `pos` member by member (extra members are allowed)."""
    name: str | None = None
    args_start: int | None = None
    args_end: int | None = None

    def result(status: JsonStatus, end: int) -> CallObject:
        return CallObject(status, end, name, args_start, args_end)

    if pos >= len(text):
        return result(JsonStatus.INCOMPLETE, pos)
    if text[pos] != "{":
        return result(JsonStatus.INVALID, pos)
    i = skip_ws(text, pos + 1)
    if i < len(text) and text[i] == "}":
        return result(JsonStatus.COMPLETE, i + 1)
    while True:
        if i >= len(text):
            return result(JsonStatus.INCOMPLETE, i)
        if text[i] != '"':
            return result(JsonStatus.INVALID, i)
        status, key_end = scan_string(text, i)
        if status is not JsonStatus.COMPLETE:
            return result(status, key_end)
        key = json.loads(text[i:key_end])
        i = skip_ws(text, key_end)
        if i >= len(text):
            return result(JsonStatus.INCOMPLETE, i)
        if text[i] != ":":
            return result(JsonStatus.INVALID, i)
        value_start = skip_ws(text, i + 1)
        status, value_end = scan_value(text, value_start)
        if key in arguments_keys and args_start is None:
            args_start = value_start if value_start < len(text) else None
            if status is JsonStatus.COMPLETE:
                args_end = value_end
        if status is not JsonStatus.COMPLETE:
            return result(status, value_end)
        if key == name_key and name is None:
            value = json.loads(text[value_start:value_end])
            if not isinstance(value, str):
                return result(JsonStatus.INVALID, value_start)
            name = value
        i = skip_ws(text, value_end)
        if i >= len(text):
            return result(JsonStatus.INCOMPLETE, i)
        if text[i] == "}":
            return result(JsonStatus.COMPLETE, i + 1)
        if text[i] != ",":
            return result(JsonStatus.INVALID, i)
        i = skip_ws(text, i + 1)
