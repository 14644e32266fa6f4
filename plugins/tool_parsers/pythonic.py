"""`pythonic`: Llama 3.2/4 style calls as a Python list, `[f(a=1, b="x"), g()]`.

The output (after whitespace) must start with `[`; each element is a call by name
with keyword arguments whose values are literals (numbers, strings, booleans, None,
lists, tuples, dicts), read with `ast` and never evaluated; the arguments become a
JSON object. Text after the list is content. As vLLM: an output that is not such a
list is content, whole; unlike vLLM, negative numbers (`-1`) are literals too.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any, ClassVar

from llmcore.parsers import CallPiece, Piece, TextPiece, ToolParser, json_members_text
from plugins.tool_parsers.json_prefix import skip_ws

_IDENT = re.compile(r"[A-Za-z_]\w*")
_KEYWORD = re.compile(r"([A-Za-z_]\w*)\s*=(?!=)")
_PARTIAL_KEYWORD = re.compile(r"[A-Za-z_]\w*\s*")
_OPEN = {"(": ")", "[": "]", "{": "}"}


class _NotLiteral(Exception):
    pass


def literal(source: str) -> Any:
    """The value of a Python literal, JSON-representable; `_NotLiteral` otherwise."""
    try:
        node = ast.parse(source.strip(), mode="eval").body
    except (SyntaxError, ValueError) as error:
        raise _NotLiteral(source) from error
    return _value(node)


def _value(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant) and (
        node.value is None or isinstance(node.value, str | bool | int | float)
    ):
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise _NotLiteral("non-finite number")
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _value(node.operand)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _NotLiteral("sign on a non-number")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.List | ast.Tuple):
        return [_value(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        keys = [_value(key) if key is not None else None for key in node.keys]
        if not all(isinstance(key, str) for key in keys):
            raise _NotLiteral("dict keys must be strings")
        return {key: _value(value) for key, value in zip(keys, node.values, strict=True)}
    raise _NotLiteral(ast.dump(node))


def expression_end(text: str, pos: int) -> int | None:
    """The position of the `,` or `)` that ends the argument value starting at `pos`
    (brackets and strings skipped); None when the text ends first."""
    stack: list[str] = []
    i = pos
    while i < len(text):
        char = text[i]
        if char in "'\"":
            i = _string_end(text, i)
            if i < 0:
                return None
            continue
        if char in _OPEN:
            stack.append(_OPEN[char])
        elif stack and char == stack[-1]:
            stack.pop()
        elif not stack and char in ",)":
            return i
        elif char in ")]}":
            return i  # unbalanced: the literal will not parse
        i += 1
    return None


def _string_end(text: str, pos: int) -> int:
    quote = text[pos]
    i = pos + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == quote:
            return i + 1
        else:
            i += 1
    return -1


class PythonicToolParser(ToolParser):
    name: ClassVar[str] = "pythonic"

    def scan(self, text: str, start: int, final: bool) -> list[Piece]:
        i = skip_ws(text, start)
        if i == len(text):
            return [TextPiece(start, i)] if final and i > start else []
        if text[i] != "[":
            return [TextPiece(start, len(text))]
        pieces: list[Piece] = []
        call_start, i = start, skip_ws(text, i + 1)
        while True:
            call, end = self._call(text, call_start, i, final)
            pieces.append(call)
            if call.failed or end is None:
                return pieces
            after = skip_ws(text, end)
            if after < len(text) and text[after] == ",":
                call_start = i = skip_ws(text, after + 1)
            elif after < len(text) and text[after] == "]":
                rest = after + 1
                if skip_ws(text, rest) < len(text):
                    pieces.append(TextPiece(rest, len(text)))
                return pieces
            elif after == len(text) and not final:
                return pieces
            else:
                pieces.append(CallPiece(after, len(text), failed=True))
                return pieces

    def _call(self, text: str, start: int, i: int, final: bool) -> tuple[CallPiece, int | None]:
        """The call at `i` (its piece starts at `start`) and the position after its `)`."""
        failed = CallPiece(start, len(text), failed=True)
        held = (failed if final else CallPiece(start)), None
        match = _IDENT.match(text, i)
        if match is None or match.end() == len(text):
            return held if i == len(text) or match else (failed, None)
        name, i = match.group(), skip_ws(text, match.end())
        if i == len(text):
            return held
        if text[i] != "(":
            return failed, None
        members: list[tuple[str, Any]] = []
        i = skip_ws(text, i + 1)
        announced = False
        while i < len(text):
            if text[i] == ")":
                arguments = json_members_text(members, closed=True)
                return CallPiece(start, i + 1, name, arguments), i + 1
            keyword = _KEYWORD.match(text, i)
            if keyword is None:
                if _PARTIAL_KEYWORD.fullmatch(text, i):
                    break  # a keyword still being written
                return failed, None
            announced = True
            value_end = expression_end(text, keyword.end())
            if value_end is None:
                break
            try:
                members.append((keyword.group(1), literal(text[keyword.end() : value_end])))
            except _NotLiteral:
                return failed, None
            i = value_end + 1 if text[value_end] == "," else value_end
            i = skip_ws(text, i)
        if final:
            return failed, None
        if not announced:
            return CallPiece(start), None
        return CallPiece(start, name=name, arguments=json_members_text(members, closed=False)), None
