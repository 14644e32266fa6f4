"""One chat choice's generated text as the chat API shows it: the reasoning (with a
reasoning parser), the content, and the tool calls (with a tools plan), read whole
(`ChoiceShape.whole`) or delta by delta (`ChoiceShape.stream`).

Order: the reasoning parser splits reasoning from the rest; the tool parser reads
calls in the rest only. Invariant: the stream and the whole read agree on every
split of the text (each parser keeps that invariant; this module only chains them),
and nothing of a call's markup reaches the content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmcore.parsers import (
    ReasoningParser,
    ReasoningStream,
    ToolCall,
    ToolCallDelta,
    ToolCallStream,
    ToolParser,
    reasoning_parser,
)


@dataclass(slots=True)
class ChoiceDelta:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)


@dataclass(slots=True)
class ChoiceMessage:
    reasoning: str | None
    content: str | None
    tool_calls: list[ToolCall]


class ChoiceShape:
    """How every choice of one request is read (the parsers are made per choice)."""

    def __init__(
        self,
        *,
        reasoning_parser_name: str | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        include_reasoning: bool = True,
        tools: ToolParser | None = None,
        parallel: bool = True,
    ) -> None:
        self._reasoning_cls = (
            reasoning_parser(reasoning_parser_name) if reasoning_parser_name else None
        )
        self._kwargs = dict(chat_template_kwargs or {})
        self.include_reasoning = include_reasoning
        self.tools = tools
        self.parallel = parallel

    @property
    def plain(self) -> bool:
        """True when the text is all content (nothing to parse)."""
        return self._reasoning_cls is None and self.tools is None

    def _reasoner(self) -> ReasoningParser | None:
        if self._reasoning_cls is None:
            return None
        parser: ReasoningParser = self._reasoning_cls(chat_template_kwargs=self._kwargs)
        return parser

    def reasoning_end_marker(self) -> str | None:
        """The text that ends the reasoning (None: no reasoning to wait for)."""
        reasoner = self._reasoner()
        return reasoner.reasoning_end_marker() if reasoner is not None else None

    def whole(self, text: str) -> ChoiceMessage:
        reasoner = self._reasoner()
        reasoning, content = reasoner.extract(text) if reasoner is not None else (None, text)
        calls: list[ToolCall] = []
        if self.tools is not None and content:
            extracted = self.tools.extract(content)
            calls, content = extracted.tool_calls, extracted.content
            if not self.parallel:
                calls = calls[:1]
        return ChoiceMessage(reasoning if self.include_reasoning else None, content or None, calls)

    def stream(self) -> ChoiceStream:
        tools = self.tools.stream() if self.tools is not None else None
        reasoner = self._reasoner()
        return ChoiceStream(
            reasoner.stream() if reasoner is not None else None,
            tools,
            include_reasoning=self.include_reasoning,
            parallel=self.parallel,
        )


class ChoiceStream:
    def __init__(
        self,
        reasoning: ReasoningStream | None,
        tools: ToolCallStream | None,
        *,
        include_reasoning: bool,
        parallel: bool,
    ) -> None:
        self._reasoning, self._tools = reasoning, tools
        self._include_reasoning, self._parallel = include_reasoning, parallel
        self.called = False  # a tool call was sent

    def feed(self, text: str) -> ChoiceDelta:
        return self._step(text, final=False)

    def finish(self) -> ChoiceDelta:
        return self._step("", final=True)

    def _step(self, text: str, *, final: bool) -> ChoiceDelta:
        out = ChoiceDelta()
        if self._reasoning is not None:
            split = self._reasoning.finish() if final else self._reasoning.feed(text)
            if self._include_reasoning:
                out.reasoning = split.reasoning
            text = split.content
        if self._tools is None:
            out.content = text
            return out
        parts = [self._tools.feed(text)] if text or not final else []
        if final:
            parts.append(self._tools.finish())
        out.content = "".join(p.content for p in parts)
        calls = _merged([c for p in parts for c in p.tool_calls])
        if not self._parallel:
            calls = [c for c in calls if c.index == 0]
        out.tool_calls = calls
        self.called = self.called or bool(calls)
        return out


def _merged(calls: list[ToolCallDelta]) -> list[ToolCallDelta]:
    """Consecutive deltas of one call as one (a later one never carries an id)."""
    out: list[ToolCallDelta] = []
    for call in calls:
        if out and out[-1].index == call.index and call.id is None:
            last = out.pop()
            arguments = (last.arguments or "") + (call.arguments or "")
            call = ToolCallDelta(last.index, last.id, last.name, arguments)
        out.append(call)
    return out
