"""Reasoning parsers: split a model's output into its reasoning and its answer.

A parser describes its format with `scan(text, final)`: where the reasoning starts
and how far it is decided, and where the content starts once the reasoning is over.
`extract` and `ReasoningStream` are both built on it. The invariant a scan keeps:
what it says of a prefix stays true of every longer text (the reasoning's start is
fixed once any of it is decided; its decided end only grows; the content's start,
once known, never moves), so the stream sends each character once and the two paths
agree on every split of a text into deltas.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class ReasoningScan:
    """`text[reasoning_start:reasoning_end]` is the reasoning decided so far;
    `text[content_start:]` is content once `content_start` is known."""

    reasoning_start: int
    reasoning_end: int
    content_start: int | None = None


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """What one streamed delta of text turned into."""

    reasoning: str = ""
    content: str = ""


class ReasoningParser(ABC):
    """Splits reasoning from content. `chat_template_kwargs` are the request's (as in
    vLLM, a parser may read switches such as Qwen3's `enable_thinking` there)."""

    name: ClassVar[str]

    def __init__(self, *, chat_template_kwargs: Mapping[str, Any] | None = None) -> None:
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    @abstractmethod
    def scan(self, text: str, final: bool) -> ReasoningScan:
        """What is decided of `text` (with `final`, of the whole output)."""

    def extract(self, text: str) -> tuple[str | None, str | None]:
        """(reasoning, content) of a whole output; each None when empty."""
        scan = self.scan(text, True)
        reasoning = text[scan.reasoning_start : scan.reasoning_end]
        content = text[scan.content_start :] if scan.content_start is not None else ""
        return reasoning or None, content or None

    def stream(self) -> ReasoningStream:
        return ReasoningStream(self)

    def reasoning_end_marker(self) -> str | None:
        """The text that ends the reasoning, after which a structured-output grammar
        applies (None: the output has no reasoning to wait for)."""
        return None


class ReasoningStream:
    """Feeds a parser's output delta by delta; text that may be a tag is held back."""

    def __init__(self, parser: ReasoningParser) -> None:
        self._parser = parser
        self._text = ""
        self._reasoning_to: int | None = None
        self._content_to: int | None = None
        self._finished = False

    def feed(self, delta_text: str) -> ReasoningDelta:
        assert not self._finished, "feed after finish"
        self._text += delta_text
        return self._advance(final=False)

    def finish(self) -> ReasoningDelta:
        assert not self._finished, "finish twice"
        self._finished = True
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> ReasoningDelta:
        scan = self._parser.scan(self._text, final)
        start = scan.reasoning_start if self._reasoning_to is None else self._reasoning_to
        reasoning = self._text[start : scan.reasoning_end]
        if scan.reasoning_end > start:
            self._reasoning_to = scan.reasoning_end
        content = ""
        if scan.content_start is not None:
            start = scan.content_start if self._content_to is None else self._content_to
            content = self._text[start:]
            self._content_to = len(self._text)
        return ReasoningDelta(reasoning, content)
