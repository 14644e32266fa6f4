"""A Responses conversation (input items) as chat messages, for the chat pipeline.

Items: messages (`{"role", "content"}`, with or without `"type": "message"`; roles
user, system, developer, assistant; content a string or `input_text` /
`output_text` / `refusal` parts), `function_call` items (assistant tool calls) and
`function_call_output` items (tool messages), and `reasoning` items (the next
assistant message's `reasoning_content`). Consecutive assistant output (text,
calls, reasoning) becomes one assistant message, as chat clients write it.

Invariant: every item is either rendered or refused with a 400 naming it
(`input[i]`): images, files, audio and hosted-tool items are refused, never
dropped.
"""

from __future__ import annotations

from typing import Any

from llmcore.errors import InvalidRequestError
from llmcore.openai.protocol import (
    AssistantMessage,
    ChatMessage,
    DeveloperMessage,
    FunctionCall,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from llmcore.openai.responses.wire import Item

_TEXT_PARTS = {"input_text": "text", "output_text": "text", "text": "text", "refusal": "refusal"}
_ROLES: dict[str, type[UserMessage | SystemMessage | DeveloperMessage]] = {
    "user": UserMessage,
    "system": SystemMessage,
    "developer": DeveloperMessage,
}


def _refuse(where: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{where}: {message}", param="input")


def input_items(value: str | list[Item] | None) -> list[Item]:
    """The request's `input` as a list of items (a string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return value


def _text(where: str, content: Any) -> str:
    """A message's content as text: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _refuse(where, "content must be a string or a list of parts")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        key = _TEXT_PARTS.get(kind) if isinstance(kind, str) else None
        if key is None or not isinstance(part.get(key), str):
            shown = kind if isinstance(kind, str) else "?"
            raise _refuse(f"{where}.content[{j}]", f"parts of type {shown!r} are not supported "
                          "(only input_text, output_text and refusal)")  # fmt: skip
        texts.append(part[key])
    return "".join(texts)


def _string(item: Item, key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise _refuse(where, f"{key} must be a string")
    return value


class _Conversation:
    """Builds the messages, merging consecutive assistant output into one message."""

    def __init__(self) -> None:
        self.messages: list[ChatMessage] = []
        self.reasoning: list[str] = []  # reasoning items waiting for their assistant message

    def assistant(self) -> AssistantMessage:
        last = self.messages[-1] if self.messages else None
        if not isinstance(last, AssistantMessage) or (self.reasoning and last.reasoning_content):
            last = AssistantMessage()
            self.messages.append(last)
        if self.reasoning:
            last.reasoning_content = "".join(self.reasoning)
            self.reasoning = []
        return last

    def message(self, item: Item, where: str) -> None:
        role = item.get("role")
        text = _text(where, item.get("content"))
        if role == "assistant":
            message = self.assistant()
            if message.tool_calls:  # text after calls starts a new message
                message = AssistantMessage()
                self.messages.append(message)
            message.content = (message.content or "") + text  # type: ignore[operator]
            return
        kind = _ROLES.get(role) if isinstance(role, str) else None
        self.flush()
        if kind is None:
            raise _refuse(where, f"role must be user, system, developer or assistant, not {role!r}")
        self.messages.append(kind(content=text))

    def flush(self) -> None:
        """Reasoning with no assistant message after it gets one of its own."""
        if self.reasoning:
            self.assistant()

    def function_call(self, item: Item, where: str) -> None:
        call = ToolCall(
            _string(item, "call_id", where),
            FunctionCall(_string(item, "name", where), _string(item, "arguments", where)),
        )
        message = self.assistant()
        message.tool_calls = [*(message.tool_calls or []), call]

    def function_call_output(self, item: Item, where: str) -> None:
        output = _text(where, item.get("output"))
        self.flush()
        self.messages.append(ToolMessage(output, tool_call_id=_string(item, "call_id", where)))

    def reasoning_item(self, item: Item, where: str) -> None:
        parts = item.get("content") or item.get("summary") or []
        if not isinstance(parts, list):
            raise _refuse(where, "content must be a list of reasoning_text parts")
        for j, part in enumerate(parts):
            text = part.get("text") if isinstance(part, dict) else None
            if not isinstance(text, str):
                raise _refuse(f"{where}.content[{j}]", "must be a part with text")
            self.reasoning.append(text)


def chat_messages(instructions: str | None, items: list[Item]) -> list[ChatMessage]:
    """The chat conversation: `instructions` as a system message first, then the items."""
    conversation = _Conversation()
    if instructions is not None:
        conversation.messages.append(SystemMessage(content=instructions))
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _refuse(where, "must be an object")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            conversation.message(item, where)
        elif kind == "function_call":
            conversation.function_call(item, where)
        elif kind == "function_call_output":
            conversation.function_call_output(item, where)
        elif kind == "reasoning":
            conversation.reasoning_item(item, where)
        else:
            raise _refuse(where, f"items of type {kind!r} are not supported (only message, "
                          "function_call, function_call_output and reasoning)")  # fmt: skip
    conversation.flush()
    if not conversation.messages:
        raise InvalidRequestError("input: the conversation is empty", param="input")
    return conversation.messages
