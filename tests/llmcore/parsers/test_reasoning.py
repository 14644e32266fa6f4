"""`deepseek_r1` and `qwen3`: reasoning in `<think>…</think>`."""

from __future__ import annotations

import pytest

from plugins.reasoning_parsers.qwen3 import Qwen3ReasoningParser
from plugins.reasoning_parsers.think_tags import DeepSeekR1ReasoningParser
from tests.llmcore.parsers.harness import check_reasoning

BOTH = [DeepSeekR1ReasoningParser, Qwen3ReasoningParser]

COMMON = [
    pytest.param("<think>Let me see.</think>It is 4.", "Let me see.", "It is 4.", id="tags"),
    pytest.param("\n<think>\nhmm\n</think>\n\nAnswer", "\nhmm\n", "\n\nAnswer", id="newlines"),
    pytest.param("opened by template</think>answer", "opened by template", "answer", id="no-open"),
    pytest.param("<think>still thinking", "still thinking", None, id="no-end"),
    pytest.param("<think></think>just the answer", None, "just the answer", id="empty-reasoning"),
    pytest.param("<think>all of it</think>", "all of it", None, id="no-content"),
    pytest.param(
        "<think>a < b, </thin k> ü 日本</think>c", "a < b, </thin k> ü 日本", "c", id="lt"
    ),
    pytest.param("plain words", "plain words", None, id="no-tags"),
    pytest.param("<thi", "<thi", None, id="cut-open-tag"),
    pytest.param("<think>x</thi", "x</thi", None, id="cut-end-tag"),
    pytest.param("", None, None, id="empty"),
]


@pytest.mark.parametrize("parser", BOTH)
@pytest.mark.parametrize(("text", "reasoning", "content"), COMMON)
def test_think_tags(parser: type, text: str, reasoning: str | None, content: str | None) -> None:
    check_reasoning(parser, text, reasoning, content)


def test_a_later_think_tag_is_reasoning_text() -> None:
    check_reasoning(DeepSeekR1ReasoningParser, "a<think>b</think>c", "a<think>b", "c", markers=())


def qwen3_no_thinking() -> Qwen3ReasoningParser:
    return Qwen3ReasoningParser(chat_template_kwargs={"enable_thinking": False})


@pytest.mark.parametrize("text", ["The answer.", "<think>x</think>y", "</think>stray", ""], ids=str)
def test_qwen3_thinking_disabled_is_all_content(text: str) -> None:
    check_reasoning(qwen3_no_thinking, text, None, text or None, markers=())


QWEN3_TOOL_CALL = [
    pytest.param(
        "I should call it.\n<tool_call>\n<function=f>\n</function>\n</tool_call>",
        "I should call it.\n",
        "<tool_call>\n<function=f>\n</function>\n</tool_call>",
        id="implicit-end",
    ),
    pytest.param(
        "Mention <tool_call> in passing. Then </think>done",
        "Mention <tool_call> in passing. Then ",
        "done",
        id="bare-mention",
    ),
    pytest.param(
        'Use <tool_call>{"name": 1}</tool_call> maybe',
        'Use <tool_call>{"name": 1}</tool_call> maybe',
        None,
        id="hermes-json-is-not-an-end",
    ),
    pytest.param("think <tool_call>\n<func", "think <tool_call>\n<func", None, id="cut-lookahead"),
    pytest.param(
        "r</think>c <tool_call>\n<function=f>", "r", "c <tool_call>\n<function=f>", id="after-end"
    ),
]


@pytest.mark.parametrize(("text", "reasoning", "content"), QWEN3_TOOL_CALL)
def test_qwen3_tool_call_ends_reasoning(text: str, reasoning: str, content: str | None) -> None:
    check_reasoning(Qwen3ReasoningParser, text, reasoning, content, markers=())


def test_streams_reasoning_as_it_comes() -> None:
    stream = DeepSeekR1ReasoningParser().stream()
    out = [stream.feed(c) for c in "<think>abc</think>de"]
    assert [d.reasoning for d in out if d.reasoning] == ["a", "b", "c"]
    assert [d.content for d in out if d.content] == ["d", "e"]
