"""Tools on /v1/chat/completions: the request's `tools` and `tool_choice` checked and
resolved into a plan, the grammar that enforces `"required"` and a named function,
and the parser that reads the calls back out of the generated text.

- `"none"` (or no tools): the text is content.
- `"auto"` (the default when tools are given): needs `--enable-auto-tool-choice`
  and a `--tool-call-parser`; the model decides, the parser finds the calls.
- `"required"`: the output is constrained to vLLM's JSON array of calls
  `[{"name": ..., "parameters": {...}}]` (one item at most without
  `parallel_tool_calls`), read back by the `json_array` parser; finish_reason
  `tool_calls`.
- a named function: the output is constrained to that function's parameters
  schema and is the call's arguments; finish_reason stays `stop`, as OpenAI's.

Invariant: every refusal is a 400 naming the field (`tools`, `tool_choice`,
`response_format`), as vLLM answers; a tool's parameters schema is checked by the
grammar backend before anything runs, whatever the choice.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from llmcore.errors import InvalidRequestError
from llmcore.openai.options import ServiceOptions
from llmcore.openai.protocol import ChatCompletionRequest
from llmcore.parsers import (
    ExtractedToolCalls,
    StreamDelta,
    ToolCall,
    ToolCallDelta,
    ToolParser,
    make_tool_call_id,
    tool_parser,
)
from llmcore.structured_outputs import StructuredOutputsParams, json_schema_error

_ANY_OBJECT: dict[str, Any] = {"type": "object"}


class ToolMode(enum.Enum):
    NONE = "none"
    AUTO = "auto"
    REQUIRED = "required"
    NAMED = "named"


@dataclass(frozen=True, slots=True)
class ToolPlan:
    mode: ToolMode
    functions: dict[str, dict[str, Any]]  # name -> its parameters schema
    tools: list[dict[str, Any]]  # as the request gave them (for parsers and templates)
    name: str | None = None  # NAMED: the function
    parallel: bool = True  # parallel_tool_calls (None counts as true, OpenAI's default)

    @property
    def calls_finish(self) -> bool:
        """Whether a finished output with calls reports finish_reason `tool_calls`."""
        return self.mode in (ToolMode.AUTO, ToolMode.REQUIRED)


NO_TOOLS = ToolPlan(ToolMode.NONE, {}, [])


def plan_tools(req: ChatCompletionRequest, options: ServiceOptions) -> ToolPlan:
    return plan_tool_choice(req.tools, req.tool_choice, req.parallel_tool_calls, options)


def plan_tool_choice(
    tools: list[dict[str, Any]] | None,
    choice: str | dict[str, Any] | None,
    parallel_tool_calls: bool | None,
    options: ServiceOptions,
) -> ToolPlan:
    """The plan of a request's `tools`, `tool_choice` and `parallel_tool_calls`."""
    functions = _functions(tools or [])
    parallel = parallel_tool_calls is not False
    if choice is None:
        choice = "auto" if functions else "none"
    if isinstance(choice, dict):
        name = _named_choice(choice)
        if name not in functions:
            known = ", ".join(repr(n) for n in functions) or "none"
            raise _refuse("tool_choice", f"function {name!r} is not among the tools ({known})")
        return ToolPlan(ToolMode.NAMED, functions, tools or [], name, parallel)
    if choice not in ("none", "auto", "required"):
        raise _refuse(
            "tool_choice", f'must be "none", "auto", "required" or a function, got {choice!r}'
        )
    if choice == "none":
        return ToolPlan(ToolMode.NONE, functions, tools or [], parallel=parallel)
    if not functions:
        raise _refuse("tool_choice", f'"{choice}" needs tools')
    if choice == "auto" and not (options.enable_auto_tool_choice and options.tool_call_parser):
        raise _refuse(
            "tool_choice",
            '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser '
            "to be set",
        )
    return ToolPlan(ToolMode(choice), functions, tools or [], parallel=parallel)


def _functions(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    functions: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise _refuse("tools", f"{where}: only function tools are supported")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise _refuse("tools", f"{where}: needs a function object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise _refuse("tools", f"{where}: function.name must be a non-empty string")
        if name in functions:
            raise _refuse("tools", f"{where}: function {name!r} is given twice")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = _ANY_OBJECT
        if not isinstance(parameters, dict):
            raise _refuse("tools", f"{where}: function.parameters must be a JSON Schema object")
        error = json_schema_error(parameters)
        if error is not None:
            raise _refuse("tools", f"{where}: function.parameters: {error}")
        functions[name] = parameters
    return functions


def _named_choice(choice: dict[str, Any]) -> str:
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type", "function") != "function" or not isinstance(name, str):
        raise _refuse(
            "tool_choice", 'a named choice is {"type": "function", "function": {"name": ...}}'
        )
    return name


def tool_constraint(plan: ToolPlan) -> StructuredOutputsParams | None:
    """The grammar that enforces `"required"` or a named function (None otherwise)."""
    if plan.mode is ToolMode.NAMED:
        assert plan.name is not None
        return StructuredOutputsParams(json=plan.functions[plan.name], param="tool_choice")
    if plan.mode is not ToolMode.REQUIRED:
        return None
    items = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "parameters": parameters},
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for name, parameters in plan.functions.items()
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
    if not plan.parallel:
        schema["maxItems"] = 1
    return StructuredOutputsParams(json=schema, param="tools")


def calls_parser(plan: ToolPlan, options: ServiceOptions) -> ToolParser | None:
    """What reads the calls back: None when tools are off."""
    if plan.mode is ToolMode.NAMED:
        assert plan.name is not None
        return NamedCallParser(plan.name)
    if plan.mode is ToolMode.REQUIRED:
        return tool_parser("json_array")(plan.tools)
    if plan.mode is ToolMode.AUTO:
        assert options.tool_call_parser is not None
        return tool_parser(options.tool_call_parser)(plan.tools)
    return None


class NamedCallParser(ToolParser):
    """A named function: the whole output is the arguments of one call to it."""

    name = "named"

    def __init__(self, function: str) -> None:
        super().__init__(None)
        self.function = function

    def scan(self, text: str, start: int, final: bool) -> list[Any]:  # pragma: no cover
        raise NotImplementedError  # extract and stream are direct

    def extract(self, text: str) -> ExtractedToolCalls:
        return ExtractedToolCalls([ToolCall(make_tool_call_id(), self.function, text)], None)

    def stream(self) -> _NamedCallStream:  # type: ignore[override]
        return _NamedCallStream(self.function)


class _NamedCallStream:
    def __init__(self, function: str) -> None:
        self.function = function
        self.id: str | None = None

    def feed(self, delta_text: str) -> StreamDelta:
        if self.id is None:
            self.id = make_tool_call_id()
            return StreamDelta("", [ToolCallDelta(0, self.id, self.function, delta_text)])
        return StreamDelta("", [ToolCallDelta(0, arguments=delta_text)] if delta_text else [])

    def finish(self) -> StreamDelta:
        return self.feed("") if self.id is None else StreamDelta()


def _refuse(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param)
