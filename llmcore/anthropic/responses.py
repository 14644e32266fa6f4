"""Response bodies of Anthropic's Messages API: the message, its content blocks and
usage, the streaming events, count_tokens' answer and the error body.

Invariant: fields Anthropic always sends, even as null (`stop_reason`,
`stop_sequence`, a message_delta's), have no default and so always appear; the
optional usage counters are omitted when unknown (`omit_defaults`), which is how
the `anthropic` client reads "keep the message_start value".
"""

from __future__ import annotations

from typing import Any, TypeAlias

import msgspec


class _Out(msgspec.Struct, omit_defaults=True):
    pass


class _BlockOut(_Out, tag_field="type"):
    pass


class TextBlock(_BlockOut, tag="text"):
    text: str


class ThinkingBlock(_BlockOut, tag="thinking"):
    thinking: str
    signature: str  # "": nothing here signs reasoning (it is sent back as given)


class ToolUseBlock(_BlockOut, tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


ContentBlock: TypeAlias = TextBlock | ThinkingBlock | ToolUseBlock


class Usage(_Out):
    input_tokens: int  # prompt tokens not read from the cache (all, without details)
    output_tokens: int
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None  # with --enable-prompt-tokens-details


class Message(_Out, tag_field="type", tag="message"):
    id: str
    role: str  # "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: str | None
    stop_sequence: str | None
    usage: Usage


class CountTokensResponse(_Out):
    input_tokens: int


# ---- streaming events (each also the SSE `event:` name) --------------------------------


class _Event(_Out, tag_field="type"):
    pass


class MessageStart(_Event, tag="message_start"):
    message: Message


class Ping(_Event, tag="ping"):
    pass


class ContentBlockStart(_Event, tag="content_block_start"):
    index: int
    content_block: ContentBlock


class TextDelta(_Out, tag_field="type", tag="text_delta"):
    text: str


class ThinkingDelta(_Out, tag_field="type", tag="thinking_delta"):
    thinking: str


class InputJSONDelta(_Out, tag_field="type", tag="input_json_delta"):
    partial_json: str


BlockDelta: TypeAlias = TextDelta | ThinkingDelta | InputJSONDelta


class ContentBlockDelta(_Event, tag="content_block_delta"):
    index: int
    delta: BlockDelta


class ContentBlockStop(_Event, tag="content_block_stop"):
    index: int


class MessageDeltaBody(msgspec.Struct):
    stop_reason: str | None
    stop_sequence: str | None


class MessageDelta(_Event, tag="message_delta"):
    delta: MessageDeltaBody
    usage: Usage  # cumulative: input tokens and cache counters again, output tokens


class MessageStop(_Event, tag="message_stop"):
    pass


StreamEvent: TypeAlias = (
    MessageStart | Ping | ContentBlockStart | ContentBlockDelta | ContentBlockStop
    | MessageDelta | MessageStop
)  # fmt: skip


# ---- errors ------------------------------------------------------------------------------


class ErrorDetail(msgspec.Struct):
    type: str  # invalid_request_error, authentication_error, not_found_error, ...
    message: str


class ErrorEvent(_Event, tag="error"):
    """The error body, on its own or as a stream's `error` event."""

    error: ErrorDetail


# The stream's event names, as the SSE `event:` line carries them.
EVENT_NAMES: dict[type, bytes] = {
    t: str(msgspec.inspect.type_info(t).tag).encode()  # type: ignore[attr-defined]
    for t in (MessageStart, Ping, ContentBlockStart, ContentBlockDelta, ContentBlockStop,
              MessageDelta, MessageStop, ErrorEvent)
}  # fmt: skip
