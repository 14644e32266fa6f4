"""Tool-call parsers: the interface, and the one stream that serves them all.

A parser describes its format with one method, `scan(text, start, final)`, which cuts
the model's text into pieces: content (`TextPiece`) and calls (`CallPiece`). `extract`
and `ToolCallStream` are both built on it, so the two paths cannot disagree: the
stream rescans its text after each delta and sends only what is new.

The invariant a `scan` keeps (the tests check it on every split of their texts): what
it reports of a prefix stays true of every longer text. Content is reported only once
it is certain not to start a call (a possible marker is held back); a call's `name`
only once the call may be announced; its `arguments` only ever grow by appending, and
when the call is complete they are its whole arguments JSON text. With `final` the
text is over, and every call is complete or `failed` (its text then is content).
"""

from __future__ import annotations

import json
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One parsed call: `arguments` is a JSON text (OpenAI's `function.arguments`)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """OpenAI's streaming delta of one call: the first carries `index`, `id` and `name`
    (and "" or a first fragment of the arguments); later ones only `index` and a
    fragment. A call's fragments concatenate to exactly its arguments JSON text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(frozen=True, slots=True)
class ExtractedToolCalls:
    """The calls in a whole output, and the text outside them (None when empty)."""

    tool_calls: list[ToolCall]
    content: str | None


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """What one streamed delta of text turned into."""

    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TextPiece:
    """`text[start:end]` is content."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class CallPiece:
    """The call whose markup starts at `start`. `end` is set once its text is over;
    `name` once it may be announced; `arguments` is its arguments text so far. A
    `failed` call is not a call: `text[start:end]` is content."""

    start: int
    end: int | None = None
    name: str | None = None
    arguments: str = ""
    failed: bool = False


Piece = TextPiece | CallPiece


def make_tool_call_id() -> str:
    """`call_` and 24 random hex digits."""
    return f"call_{secrets.token_hex(12)}"


class ToolParser(ABC):
    """Finds tool calls in a model's output text. `tools` are the request's OpenAI
    tools (for formats whose values need the parameters' schema types)."""

    name: ClassVar[str]
    # True when `scan` may restart at the `end` of any call piece it reported.
    resumable: ClassVar[bool] = False

    def __init__(self, tools: list[dict[str, Any]] | None = None) -> None:
        self.tools = tools or []

    @abstractmethod
    def scan(self, text: str, start: int, final: bool) -> list[Piece]:
        """The pieces of `text[start:]`, in order (see the module's invariant). `start`
        is 0 or, for a resumable parser, the end of a call reported before."""

    def make_call_id(self) -> str:
        return make_tool_call_id()

    def extract(self, text: str) -> ExtractedToolCalls:
        """The calls in a whole output; malformed calls stay in the content."""
        calls: list[ToolCall] = []
        content: list[str] = []
        for piece in self.scan(text, 0, True):
            if isinstance(piece, TextPiece):
                content.append(text[piece.start : piece.end])
            elif piece.failed:
                content.append(text[piece.start : piece.end])
            else:
                assert piece.end is not None and piece.name is not None, piece
                calls.append(ToolCall(self.make_call_id(), piece.name, piece.arguments))
        return ExtractedToolCalls(calls, "".join(content) or None)

    def stream(self) -> ToolCallStream:
        return ToolCallStream(self)

    def parameter_schema(self, function: str) -> dict[str, Any]:
        """The JSON schema `properties` of `function`'s parameters ({} if unknown)."""
        for tool in self.tools:
            spec = tool.get("function", tool) if isinstance(tool, dict) else None
            if isinstance(spec, dict) and spec.get("name") == function:
                params = spec.get("parameters")
                if isinstance(params, dict):
                    props = params.get("properties")
                    return props if isinstance(props, dict) else {}
        return {}


@dataclass(slots=True)
class _Announced:
    index: int
    sent: str = ""
    over: bool = False


class ToolCallStream:
    """Feeds a parser's output delta by delta. Content is held back while it may be
    the start of a call; a call is announced once its name is known, and its
    arguments follow as they grow. A call that turns out malformed after it was
    announced cannot be taken back: it keeps what was sent, and the rest of its text
    is dropped (`extract` would have returned that call's text as content)."""

    def __init__(self, parser: ToolParser) -> None:
        self._parser = parser
        self._text = ""
        self._checkpoint = 0
        self._content_to = 0
        self._calls: dict[int, _Announced] = {}
        self._finished = False

    def feed(self, delta_text: str) -> StreamDelta:
        assert not self._finished, "feed after finish"
        self._text += delta_text
        return self._advance(final=False)

    def finish(self) -> StreamDelta:
        """The end of the output: everything held back is decided now."""
        assert not self._finished, "finish twice"
        self._finished = True
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> StreamDelta:
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        for piece in self._parser.scan(self._text, self._checkpoint, final):
            if isinstance(piece, TextPiece):
                self._emit_content(piece.start, piece.end, content)
            else:
                self._on_call(piece, content, deltas)
                if self._parser.resumable and piece.end is not None:
                    self._checkpoint = piece.end
        return StreamDelta("".join(content), deltas)

    def _emit_content(self, start: int, end: int, out: list[str]) -> None:
        start = max(start, self._content_to)
        if end > start:
            out.append(self._text[start:end])
            self._content_to = end

    def _on_call(self, piece: CallPiece, content: list[str], out: list[ToolCallDelta]) -> None:
        state = self._calls.get(piece.start)
        if piece.failed:
            if state is None:
                assert piece.end is not None
                self._emit_content(piece.start, piece.end, content)
            else:
                state.over = True
            return
        if piece.name is None or (state is not None and state.over):
            return
        if state is None:
            state = self._calls[piece.start] = _Announced(index=len(self._calls))
            out.append(ToolCallDelta(state.index, self._parser.make_call_id(), piece.name, ""))
        assert piece.arguments.startswith(state.sent), (piece.arguments, state.sent)
        fragment = piece.arguments[len(state.sent) :]
        if fragment:
            if out and out[-1].index == state.index and out[-1].id is not None:
                head = out.pop()
                out.append(ToolCallDelta(head.index, head.id, head.name, fragment))
            else:
                out.append(ToolCallDelta(state.index, arguments=fragment))
            state.sent = piece.arguments
        if piece.end is not None:
            state.over = True
        self._content_to = max(self._content_to, piece.end or piece.start)


def json_members_text(members: Iterable[tuple[str, Any]], *, closed: bool) -> str:
    """The JSON object text of `members`, as `json.dumps` writes it (non-ASCII kept);
    without `closed`, its open prefix: each member appended only extends the text."""
    body = ", ".join(
        f"{json.dumps(key, ensure_ascii=False)}: {json.dumps(value, ensure_ascii=False)}"
        for key, value in members
    )
    return "{" + body + ("}" if closed else "")
