"""`qwen3_coder`: Qwen3-Coder's XML calls:

    <tool_call>
    <function=name>
    <parameter=p>
    value
    </parameter>
    </function>
    </tool_call>

Values are text; as vLLM, one newline is trimmed from each end and the value is
converted by the type the request's tool schema gives the parameter: integers and
numbers (falling back to the text), booleans, objects and arrays (JSON, then a Python
literal, then the text); `null` is null; strings and unknown parameters stay text.
A parameter ends at `</parameter>`, the next `<parameter=`, `</function>` or the end
of the call; the arguments stream one parameter at a time, as each one ends.
"""

from __future__ import annotations

import ast
import json
from typing import Any, ClassVar

from llmcore.parsers import CallPiece, json_members_text
from plugins.tool_parsers.json_prefix import skip_ws
from plugins.tool_parsers.pieces import TaggedToolParser

FUNCTION = "<function="
FUNCTION_END = "</function>"
PARAMETER = "<parameter="
PARAMETER_END = "</parameter>"

_STRING_TYPES = ("string", "str", "text", "varchar", "char", "enum")
_INT_PREFIXES = ("int", "uint", "long", "short", "unsigned")


def convert(value: str, schema: dict[str, Any] | None) -> Any:
    """A parameter's text as the value its schema type says (vLLM's conversions)."""
    if value.lower() == "null":
        return None
    if not isinstance(schema, dict):
        return value
    kind = str(schema.get("type", "string")).strip().lower()
    if kind in _STRING_TYPES:
        return value
    if kind.startswith(_INT_PREFIXES):
        try:
            return int(value)
        except ValueError:
            return value
    if kind.startswith(("num", "float")):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() else number
    if kind in ("boolean", "bool", "binary"):
        return value.strip().lower() == "true"
    if kind in ("object", "array", "arr") or kind.startswith(("dict", "list")):
        try:
            return json.loads(value)
        except ValueError:
            pass
    try:
        result = ast.literal_eval(value)
        json.dumps(result, allow_nan=False)
        return result
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return value


class Qwen3CoderToolParser(TaggedToolParser):
    name: ClassVar[str] = "qwen3_coder"

    def call(self, text: str, start: int, body: int, end: int | None) -> CallPiece:
        over = end is not None
        # Not a call (yet): content once the call's text is over.
        failed = CallPiece(start, end, failed=True) if over else CallPiece(start)
        i = skip_ws(text, body)
        if not text.startswith(FUNCTION, i):
            return failed
        name_end = text.find(">", i + len(FUNCTION))
        name = text[i + len(FUNCTION) : name_end].strip() if name_end >= 0 else ""
        if not name:
            return failed
        members, closed = self._parameters(name, text, name_end + 1, over)
        arguments = json_members_text(members, closed=closed or over)
        return CallPiece(start, end, name, arguments)

    def _parameters(
        self, function: str, inner: str, pos: int, over: bool
    ) -> tuple[list[tuple[str, Any]], bool]:
        """The parameters that have ended, and whether `</function>` closed them."""
        schema = self.parameter_schema(function)
        function_end = inner.find(FUNCTION_END, pos)
        limit = function_end if function_end >= 0 else len(inner)
        members: list[tuple[str, Any]] = []
        i = inner.find(PARAMETER, pos, limit)
        while i >= 0:
            name_end = inner.find(">", i + len(PARAMETER), limit)
            if name_end < 0:
                break
            value_start = name_end + 1
            ends = [
                inner.find(PARAMETER_END, value_start, limit),
                inner.find(PARAMETER, value_start, limit),
            ]
            found = [e for e in ends if e >= 0]
            value_end = min(found) if found else limit
            if not found and function_end < 0 and not over:
                break  # the value may go on
            value = inner[value_start:value_end]
            value = value.removeprefix("\n").removesuffix("\n")
            key = inner[i + len(PARAMETER) : name_end].strip()
            members.append((key, convert(value, schema.get(key))))
            i = inner.find(PARAMETER, value_end, limit)
        return members, function_end >= 0
