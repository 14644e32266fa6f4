"""A chat completion's answer as an Anthropic message: content blocks, stop reason
and usage, shared by the whole answer and the stream (`llmcore.anthropic.stream`).

Invariant: the blocks come in the order the model wrote them (thinking, text, tool
calls), each non-empty; `stop_reason` is "tool_use" whenever a tool was called
(also a named one, where chat says "stop"), "max_tokens" at the length limit,
"stop_sequence" (with the sequence) when a stop string ended it, else "end_turn";
usage counts the same tokens chat's does (input = prompt - cached).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from llmcore.anthropic.responses import (
    ContentBlock,
    Message,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
    Usage,
)
from llmcore.openai.protocol import ChatCompletionResponse, UsageInfo

log = logging.getLogger("llmcore.openai")


def message_id(chat_id: str) -> str:
    return "msg_" + chat_id.removeprefix("chatcmpl-")


def tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's `input` is. Grammar-enforced calls
    always parse; a model's own call that does not is logged and read as {}."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        log.warning("a tool call's arguments are not a JSON object: %.200r", arguments)
        return {}
    return value


def stop_reason(
    finish_reason: str | None, chat_stop_reason: str | int | None, called: bool
) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence) of a choice that finished so (None: aborted)."""
    if finish_reason is None:
        return None, None
    if finish_reason == "length":
        return "max_tokens", None
    if called or finish_reason == "tool_calls":
        return "tool_use", None
    if isinstance(chat_stop_reason, str):
        return "stop_sequence", chat_stop_reason
    return "end_turn", None


def usage(chat_usage: UsageInfo | None) -> Usage:
    if chat_usage is None:
        return Usage(0, 0, 0, 0)
    details = chat_usage.prompt_tokens_details
    cached = details.cached_tokens if details is not None else 0
    return Usage(chat_usage.prompt_tokens - cached, chat_usage.completion_tokens, 0, cached)


def message(resp: ChatCompletionResponse) -> Message:
    choice = resp.choices[0]
    out = choice.message
    content: list[ContentBlock] = []
    if out.reasoning_content:
        content.append(ThinkingBlock(out.reasoning_content, ""))
    if out.content:
        content.append(TextBlock(out.content))
    for call in out.tool_calls or []:
        name, arguments = call.function.name, call.function.arguments
        content.append(ToolUseBlock(tool_use_id(call.id), name, tool_input(arguments)))
    reason, sequence = stop_reason(choice.finish_reason, choice.stop_reason, bool(out.tool_calls))
    return Message(
        id=message_id(resp.id),
        role="assistant",
        model=resp.model,
        content=content,
        stop_reason=reason,
        stop_sequence=sequence,
        usage=usage(resp.usage),
    )
