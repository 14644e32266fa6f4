"""A streamed chat completion as Anthropic's server-sent events: `message_start`
(the message, empty, with the prompt's usage), a `ping`, then per content block
`content_block_start`, its `content_block_delta`s (`thinking_delta`, `text_delta`,
`input_json_delta`) and `content_block_stop`, then `message_delta` (stop reason,
cumulative usage) and `message_stop`.

Invariants: each event is one complete `event: NAME\\ndata: JSON\\n\\n`; at most one
block is open at a time and block indexes count up from 0; a block's deltas
concatenate to what the whole answer (`llmcore.anthropic.answer`) has in that
block, so the `anthropic` client's accumulated message equals the non-streamed
one; an error after the start is one `error` event, and the stream ends there;
closing the stream closes the chat stream beneath (which aborts the request).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import msgspec

from llmcore.anthropic import answer
from llmcore.anthropic.errors import exception_event
from llmcore.anthropic.responses import (
    EVENT_NAMES,
    BlockDelta,
    ContentBlock,
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    ErrorEvent,
    InputJSONDelta,
    Message,
    MessageDelta,
    MessageDeltaBody,
    MessageStart,
    MessageStop,
    Ping,
    StreamEvent,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
)
from llmcore.openai.protocol import ChatChunkChoice, ChatCompletionChunk, UsageInfo
from llmcore.openai.streaming import ClosingStream

_ENCODER = msgspec.json.Encoder()


def sse_event(event: StreamEvent | ErrorEvent) -> bytes:
    name = EVENT_NAMES[type(event)]
    return b"event: " + name + b"\ndata: " + _ENCODER.encode(event) + b"\n\n"


class _Blocks:
    """The content blocks of one message, opened and closed as deltas arrive."""

    def __init__(self) -> None:
        self.index = -1  # of the open block (or the last one closed)
        self.open: str | None = None  # "thinking", "text", or "tool_use:<call index>"
        self.called = False

    def write(self, key: str, start: ContentBlock, delta: BlockDelta | None) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if self.open != key:
            events += self.close()
            self.index += 1
            self.open = key
            events.append(ContentBlockStart(self.index, start))
        if delta is not None:
            events.append(ContentBlockDelta(self.index, delta))
        return events

    def close(self) -> list[StreamEvent]:
        if self.open is None:
            return []
        self.open = None
        return [ContentBlockStop(self.index)]

    def choice(self, choice: ChatChunkChoice) -> list[StreamEvent]:
        delta = choice.delta
        events: list[StreamEvent] = []
        if delta.reasoning_content:
            thinking = ThinkingDelta(delta.reasoning_content)
            events += self.write("thinking", ThinkingBlock("", ""), thinking)
        if delta.content:
            events += self.write("text", TextBlock(""), TextDelta(delta.content))
        for call in delta.tool_calls or []:
            arguments = call.function.arguments if call.function is not None else None
            json_delta = InputJSONDelta(arguments) if arguments else None
            key = f"tool_use:{call.index}"
            if call.id is not None:
                self.called = True
                name = call.function.name if call.function is not None else None
                start = ToolUseBlock(answer.tool_use_id(call.id), name or "", {})
                events += self.write(key + ":" + call.id, start, json_delta)
            elif json_delta is not None and (self.open or "").startswith(key + ":"):
                events.append(ContentBlockDelta(self.index, json_delta))
        return events


def _start(chunk: ChatCompletionChunk) -> MessageStart:
    empty = Message(
        id=answer.message_id(chunk.id),
        role="assistant",
        model=chunk.model,
        content=[],
        stop_reason=None,
        stop_sequence=None,
        usage=answer.usage(chunk.usage),
    )
    return MessageStart(empty)


async def _events(chunks: ClosingStream[ChatCompletionChunk]) -> AsyncGenerator[bytes, None]:
    blocks = _Blocks()
    usage: UsageInfo | None = None
    finish: tuple[str | None, str | int | None] = (None, None)
    started = False
    async with aclosing(chunks) as items:
        try:
            async for chunk in items:
                usage = chunk.usage or usage
                if not started:
                    started = True
                    yield sse_event(_start(chunk))
                    yield sse_event(Ping())
                for choice in chunk.choices:
                    for event in blocks.choice(choice):
                        yield sse_event(event)
                    if choice.finish_reason is not None:
                        finish = (choice.finish_reason, choice.stop_reason)
        except Exception as exc:  # after the stream started: an error event ends it
            yield sse_event(exception_event(exc)[1])
            return
    for event in blocks.close():
        yield sse_event(event)
    reason, sequence = answer.stop_reason(*finish, blocks.called)
    yield sse_event(MessageDelta(MessageDeltaBody(reason, sequence), answer.usage(usage)))
    yield sse_event(MessageStop())


def event_stream(chunks: ClosingStream[ChatCompletionChunk]) -> ClosingStream[bytes]:
    """`chunks` as Anthropic's events; closing the result closes `chunks`."""
    return ClosingStream(_events(chunks), chunks)
