"""Checks shared by the parser tests: a text's streamed result, over every way of
cutting it into deltas, against its `extract`."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from llmcore.parsers import ReasoningParser, ToolParser


def splits(text: str, *, seed: int = 0, random_cuts: int = 6) -> Iterator[list[str]]:
    """Every cut into two deltas, all single characters, and a few random cuts."""
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
    yield list(text)
    if len(text) < 3:
        return
    rng = random.Random(seed)
    for _ in range(random_cuts):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(2, 8))))
        bounds = [0, *cuts, len(text)]
        yield [text[a:b] for a, b in itertools.pairwise(bounds)]


@dataclass
class Streamed:
    content: str
    calls: list[tuple[str, str]]  # (name, arguments text)


def stream_tools(parser: ToolParser, deltas: list[str], markers: tuple[str, ...] = ()) -> Streamed:
    stream = parser.stream()
    content: list[str] = []
    calls: list[list[str]] = []
    ids: list[str] = []
    for result in [*(stream.feed(d) for d in deltas), stream.finish()]:
        for marker in markers:
            assert marker not in result.content, (marker, result.content)
        content.append(result.content)
        for delta in result.tool_calls:
            if delta.id is not None:
                assert delta.index == len(calls), delta
                assert delta.name, delta
                assert delta.id not in ids
                ids.append(delta.id)
                calls.append([delta.name, delta.arguments or ""])
            else:
                assert delta.name is None and delta.arguments, delta
                assert 0 <= delta.index < len(calls), delta
                calls[delta.index][1] += delta.arguments
    joined = "".join(content)
    for marker in markers:
        assert marker not in joined, (marker, joined)
    return Streamed(joined, [(name, args) for name, args in calls])


def check_tools(
    make: Callable[[], ToolParser],
    text: str,
    calls: list[tuple[str, dict]] | None = None,
    content: str | None = None,
    markers: tuple[str, ...] = (),
) -> None:
    """`extract` gives `calls` and `content` (when given); every split of `text`
    streams the same; no `markers` reach the content."""
    extracted = make().extract(text)
    got = [(c.name, json.loads(c.arguments)) for c in extracted.tool_calls]
    for call in extracted.tool_calls:
        assert call.id.startswith("call_") or len(call.id) == 9, call.id
    if calls is not None:
        assert got == calls, got
    if content is not None or calls is not None:
        assert extracted.content == content, extracted.content
    for marker in markers:
        assert marker not in (extracted.content or "")
    want = Streamed(extracted.content or "", [(c.name, c.arguments) for c in extracted.tool_calls])
    for deltas in splits(text):
        assert stream_tools(make(), deltas, markers) == want, deltas


def check_tools_broken_late(
    make: Callable[[], ToolParser], text: str, name: str, arguments_of: str
) -> None:
    """A call that breaks after it could be announced: `extract` gives the text as
    content. A stream that saw it whole agrees; one that announced the call first
    keeps it, with arguments that are a prefix of `arguments_of`, and no content.
    No split raises."""
    extracted = make().extract(text)
    assert extracted.tool_calls == [] and extracted.content == text
    tail = arguments_of
    for deltas in splits(text):
        got = stream_tools(make(), deltas)
        if got.calls:
            assert got.content == "" and [n for n, _ in got.calls] == [name], deltas
            assert tail.startswith(got.calls[0][1]), (got, deltas)
        else:
            assert got.content == text, deltas


def stream_reasoning(parser: ReasoningParser, deltas: list[str]) -> tuple[str, str]:
    stream = parser.stream()
    reasoning: list[str] = []
    content: list[str] = []
    for result in [*(stream.feed(d) for d in deltas), stream.finish()]:
        reasoning.append(result.reasoning)
        content.append(result.content)
    return "".join(reasoning), "".join(content)


def check_reasoning(
    make: Callable[[], ReasoningParser],
    text: str,
    reasoning: str | None,
    content: str | None,
    markers: tuple[str, ...] = ("<think>", "</think>"),
) -> None:
    assert make().extract(text) == (reasoning, content)
    for deltas in splits(text):
        got = stream_reasoning(make(), deltas)
        assert got == (reasoning or "", content or ""), deltas
    for marker in markers:
        assert marker not in (reasoning or "")
