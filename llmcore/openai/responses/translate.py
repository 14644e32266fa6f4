"""A Responses request as a chat completions request: the one pipeline both run on.

Maps `instructions` + the conversation (`inputs`), the flat function `tools`,
`tool_choice`, `parallel_tool_calls`, `text.format` (-> `response_format`),
`reasoning.effort` (-> `reasoning_effort`, with a reasoning parser; ignored without
one, as vLLM does for models that do not read it), `max_output_tokens`, the
sampling fields and vLLM's extensions. Streams ask for usage at their end.

Invariant: a field that would change the answer and cannot be honoured is a 400
naming it (hosted tools, `prompt`, `conversation`, `background`, `truncation:
"auto"`, logprobs); the rest is either translated or echoed without effect
(`metadata`, `user`, `service_tier`, ...).
"""

from __future__ import annotations

from typing import Any

from llmcore.errors import InvalidRequestError
from llmcore.openai.options import ServiceOptions
from llmcore.openai.protocol import ChatCompletionRequest, ChatMessage
from llmcore.openai.protocol.requests import JsonSchemaFormat, ResponseFormat, StreamOptions
from llmcore.openai.responses.wire import ResponsesRequest

# include values that ask for something these responses could carry but do not.
_REFUSED_INCLUDES = {"message.output_text.logprobs": "logprobs are not supported here"}
_FUNCTION_KEYS = ("name", "description", "parameters", "strict")


def _refuse(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param)


def check_request(req: ResponsesRequest) -> None:
    """The fields this server cannot honour, refused by name."""
    if req.background:
        raise _refuse("background", "background responses are not supported")
    if req.prompt is not None:
        raise _refuse("prompt", "prompt templates are not supported; send input")
    if req.conversation is not None:
        raise _refuse("conversation", "conversations are not supported; use previous_response_id")
    if req.truncation not in (None, "disabled"):
        raise _refuse("truncation", 'only "disabled" is supported (a too long input is a 400)')
    if req.top_logprobs:
        raise _refuse("top_logprobs", "logprobs are not supported here")
    for name in req.include or []:
        if name in _REFUSED_INCLUDES:
            raise _refuse("include", f"{name}: {_REFUSED_INCLUDES[name]}")
    if req.text is not None and req.text.verbosity is not None:
        raise _refuse("text.verbosity", "is not supported")


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses' flat function tools as chat's `{"type": "function", "function": ...}`."""
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise _refuse("tools", f"tools[{i}]: only function tools are supported, not {kind!r}")
        function = {k: tool[k] for k in _FUNCTION_KEYS if k in tool}
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None or isinstance(choice, str):
        return choice
    name = choice.get("name")
    if choice.get("type") != "function" or not isinstance(name, str):
        raise _refuse(
            "tool_choice",
            'only "none", "auto", "required" or {"type": "function", "name": ...} are supported',
        )
    return {"type": "function", "function": {"name": name}}


def response_format(req: ResponsesRequest) -> ResponseFormat | None:
    """`text.format` as chat's `response_format` (None for plain text)."""
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.get("type") == "text":
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        return ResponseFormat(type="json_object")
    if kind != "json_schema":
        raise _refuse(
            "text.format", f'type must be "text", "json_object" or "json_schema", not {kind!r}'
        )
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise _refuse("text.format", "a json_schema format needs a schema object")
    return ResponseFormat(
        type="json_schema",
        json_schema=JsonSchemaFormat(
            name=fmt.get("name"),
            description=fmt.get("description"),
            schema_=schema,
            strict=fmt.get("strict"),
        ),
    )


def chat_request(
    req: ResponsesRequest, messages: list[ChatMessage], options: ServiceOptions
) -> ChatCompletionRequest:
    """The chat request that answers `req` over `messages` (the whole conversation)."""
    effort = req.reasoning.effort if req.reasoning is not None else None
    return ChatCompletionRequest(
        model=req.model,
        messages=messages,
        tools=chat_tools(req.tools),
        tool_choice=chat_tool_choice(req.tool_choice),
        parallel_tool_calls=req.parallel_tool_calls,
        response_format=response_format(req),
        reasoning_effort=effort if options.reasoning_parser is not None else None,
        max_completion_tokens=req.max_output_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        repetition_penalty=req.repetition_penalty,
        seed=req.seed,
        priority=req.priority,
        cache_salt=req.cache_salt,
        stream=bool(req.stream),
        stream_options=StreamOptions(include_usage=True) if req.stream else None,
    )
