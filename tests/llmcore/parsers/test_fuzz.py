"""Random output made of the formats' own pieces: no parser raises, on any split;
extract's calls have object arguments, and a stream finds each of them too (it may
also keep a call that broke after it was announced, see `check_tools_broken_late`);
the reasoning parsers agree with `extract` on every split."""

from __future__ import annotations

import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from llmcore.parsers import reasoning_parser, tool_parser
from tests.llmcore.parsers.harness import stream_reasoning, stream_tools

FRAGMENTS = [
    "<tool_call>", "</tool_call>", "<function=f>", "</function>", "<parameter=a>",
    "</parameter>", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>", "<think>", "</think>",
    '{"name": "f", "arguments": ', '{"name": "g", "parameters": ', '{"a": 1}', "{", "}",
    "[", "]", "f(", "a=1", ")", ", ", "; ", '"', "\\", "\n", " ", "x", "é", "1",
]  # fmt: skip

texts = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join)
cuts = st.lists(st.integers(min_value=0, max_value=200), max_size=5)


def _deltas(text: str, points: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *(p % (len(text) + 1) for p in points)})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(text=texts, points=cuts)
def test_tool_parsers_never_raise(text: str, points: list[int]) -> None:
    for name in ("hermes", "llama3_json", "mistral", "pythonic", "qwen3_coder"):
        make = tool_parser(name)
        extracted = make(None).extract(text)
        for call in extracted.tool_calls:
            assert isinstance(json.loads(call.arguments), dict)
        streamed = iter(stream_tools(make(None), _deltas(text, points)).calls)
        for call in extracted.tool_calls:
            assert (call.name, call.arguments) in streamed, name


@settings(max_examples=300, deadline=None)
@given(text=texts, points=cuts)
def test_reasoning_parsers_agree_on_every_split(text: str, points: list[int]) -> None:
    for name in ("deepseek_r1", "qwen3"):
        make = reasoning_parser(name)
        reasoning, content = make().extract(text)
        got = stream_reasoning(make(), _deltas(text, points))
        assert got == (reasoning or "", content or ""), name
