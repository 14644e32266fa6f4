"""A streamed response: the chat pipeline's chunks as OpenAI's typed Responses events.

Order: `response.created`, `response.in_progress`; then per output item, in the
order its text appears: `response.output_item.added`, and for a message
`response.content_part.added`, `response.output_text.delta`...,
`response.output_text.done`, `response.content_part.done`; for reasoning the same
with `response.reasoning_text.*` and a `reasoning_text` part; for a function call
`response.function_call_arguments.delta`..., `.done`; then
`response.output_item.done`; last `response.completed`, or `response.incomplete`
(max_output_tokens, or cancelled: the response's status says which), or
`response.failed` when the generation failed after the stream started.

Invariants: `sequence_number` counts from 0 without gaps; the deltas of an item add
up to its text in the `.done` events and in the final response, whose `output`
holds exactly the items announced, each `output_index` its place there.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import msgspec

from llmcore.openai.errors import error_info
from llmcore.openai.protocol import ChatCompletionChunk, DeltaMessage, UsageInfo
from llmcore.openai.responses.output import (
    item_status,
    message_item,
    new_id,
    reasoning_item,
)
from llmcore.openai.responses.wire import (
    FunctionCallItem,
    OutputItem,
    OutputText,
    ReasoningText,
    Response,
    ResponseStreamEvent,
)
from llmcore.openai.streaming import ClosingStream


@dataclass(slots=True)
class _Open:
    """The output item being streamed."""

    kind: str  # "reasoning" | "message" | "call"
    output_index: int
    item_id: str
    call_index: int = -1  # the chat tool call's index
    call_id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass(slots=True)
class StreamResult:
    """What the stream learnt, for the final response."""

    items: list[OutputItem] = field(default_factory=list)
    finish_reason: str | None = None
    usage: UsageInfo | None = None


class EventWriter:
    """Numbers the events and turns chat deltas into item events."""

    def __init__(self, response: Response) -> None:
        self.response = response
        self.sequence = 0
        self.open: _Open | None = None
        self.result = StreamResult()

    def event(self, type_: str, **fields: Any) -> ResponseStreamEvent:
        event = ResponseStreamEvent(type=type_, sequence_number=self.sequence, **fields)
        self.sequence += 1
        return event

    def _item_event(self, type_: str, **fields: Any) -> ResponseStreamEvent:
        assert self.open is not None
        return self.event(
            type_, output_index=self.open.output_index, item_id=self.open.item_id, **fields
        )

    def _start(self, kind: str, prefix: str, **call: Any) -> list[ResponseStreamEvent]:
        events = self.close("completed")
        self.open = opened = _Open(kind, len(self.result.items), new_id(prefix), **call)
        index = opened.output_index
        if kind == "call":
            item: OutputItem = FunctionCallItem(
                opened.item_id, opened.call_id, opened.name, "", "in_progress"
            )
            events.append(self.event("response.output_item.added", output_index=index, item=item))
            return events
        item = message_item("", "in_progress", opened.item_id)
        part: OutputText | ReasoningText = OutputText("")
        if kind == "reasoning":
            item = reasoning_item("", "in_progress", opened.item_id)
            part = ReasoningText("")
        item.content = []
        events.append(self.event("response.output_item.added", output_index=index, item=item))
        events.append(self._item_event("response.content_part.added", content_index=0, part=part))
        return events

    def _text(self, kind: str, prefix: str, delta: str) -> list[ResponseStreamEvent]:
        events = [] if self.open and self.open.kind == kind else self._start(kind, prefix)
        assert self.open is not None
        self.open.parts.append(delta)
        if kind == "message":
            events.append(self._item_event("response.output_text.delta", content_index=0,
                                           delta=delta, logprobs=[]))  # fmt: skip
        else:
            events.append(
                self._item_event("response.reasoning_text.delta", content_index=0, delta=delta)
            )
        return events

    def delta(self, message: DeltaMessage) -> list[ResponseStreamEvent]:
        events = []
        if message.reasoning_content:
            events += self._text("reasoning", "rs", message.reasoning_content)
        if message.content:
            events += self._text("message", "msg", message.content)
        for call in message.tool_calls or []:
            opened = self.open
            if opened is None or opened.kind != "call" or opened.call_index != call.index:
                function = call.function
                name = function.name if function is not None and function.name else ""
                events += self._start("call", "fc", call_index=call.index,
                                      call_id=call.id or new_id("call"), name=name)  # fmt: skip
            assert self.open is not None
            arguments = call.function.arguments if call.function is not None else None
            if arguments:
                self.open.parts.append(arguments)
                events.append(self._item_event("response.function_call_arguments.delta",
                                               delta=arguments))  # fmt: skip
        return events

    def close(self, status: str) -> list[ResponseStreamEvent]:
        """The events that end the open item (none if none is open)."""
        opened, self.open = self.open, None
        if opened is None:
            return []
        self.open = opened  # for _item_event
        text, events = opened.text, []
        item: OutputItem
        if opened.kind == "call":
            events.append(self._item_event("response.function_call_arguments.done",
                                           arguments=text))  # fmt: skip
            item = FunctionCallItem(opened.item_id, opened.call_id, opened.name, text, status)
        else:
            reasoning = opened.kind == "reasoning"
            part: OutputText | ReasoningText = OutputText(text)
            if reasoning:
                part = ReasoningText(text)
            if reasoning:
                events.append(self._item_event("response.reasoning_text.done", content_index=0,
                                               text=text))  # fmt: skip
                item = reasoning_item(text, status, opened.item_id)
            else:
                events.append(self._item_event("response.output_text.done", content_index=0,
                                               text=text, logprobs=[]))  # fmt: skip
                item = message_item(text, status, opened.item_id)
            events.append(self._item_event("response.content_part.done", content_index=0,
                                           part=part))  # fmt: skip
        self.open = None
        events.append(self.event("response.output_item.done", output_index=opened.output_index,
                                 item=item))  # fmt: skip
        self.result.items.append(item)
        return events

    def end(self, cancelled: bool) -> list[ResponseStreamEvent]:
        """The events that close the last item (an empty message when there was
        none, as a whole answer has one)."""
        status = item_status(self.result.finish_reason, cancelled)
        events = [] if self.result.items or self.open else self._start("message", "msg")
        return events + self.close(status)


async def chunk_events(
    writer: EventWriter,
    chunks: AsyncIterator[ChatCompletionChunk],
    cancelled: Callable[[], bool],
) -> AsyncGenerator[ResponseStreamEvent, None]:
    """The item events of `chunks` (the caller adds the response events around them)."""
    async for chunk in chunks:
        if chunk.usage is not None:
            writer.result.usage = chunk.usage
        for choice in chunk.choices:
            for event in writer.delta(choice.delta):
                yield event
            if choice.finish_reason is not None:
                writer.result.finish_reason = choice.finish_reason
    for event in writer.end(cancelled()):
        yield event


_ENCODER = msgspec.json.Encoder()


def sse_event(event: ResponseStreamEvent) -> bytes:
    """`event: <type>` and `data: <json>`, as OpenAI sends them (no `[DONE]`)."""
    return b"event: " + event.type.encode() + b"\ndata: " + _ENCODER.encode(event) + b"\n\n"


async def _sse(events: ClosingStream[ResponseStreamEvent]) -> AsyncGenerator[bytes, None]:
    sequence = 0
    async with aclosing(events) as items:
        try:
            async for event in items:
                sequence = event.sequence_number + 1
                yield sse_event(event)
        except Exception as exc:  # after the stream started: an "error" event ends it
            _, info = error_info(exc)
            code = info.code if isinstance(info.code, str) else info.type
            error = ResponseStreamEvent(type="error", sequence_number=sequence, code=code,
                                        message=info.message, param=info.param)  # fmt: skip
            yield sse_event(error)


def response_sse(events: ClosingStream[ResponseStreamEvent]) -> ClosingStream[bytes]:
    """`events` as server-sent events; closing the result closes `events`."""
    return ClosingStream(_sse(events), events)
