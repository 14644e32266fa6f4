"""Reasoning between `<think>` and `</think>`, and `deepseek_r1`, which is just that.

As vLLM's: the reasoning comes first; the opening tag is optional (a chat template
may have written it into the prompt, so the output may hold only `</think>`); the
content is what follows `</think>`; without `</think>` everything is reasoning (the
output stopped while thinking). Unlike vLLM, which drops whatever precedes a
`<think>` anywhere in the text, only a `<think>` at the start (after whitespace) is
taken as the opening tag; elsewhere it is part of the reasoning.
"""

from __future__ import annotations

from typing import ClassVar

from llmcore.parsers import ReasoningParser, ReasoningScan

START = "<think>"
END = "</think>"


def held_back(text: str, marker: str, start: int) -> int:
    """The length of the longest proper prefix of `marker` that `text[start:]` ends with."""
    for size in range(min(len(marker) - 1, len(text) - start), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


class ThinkTagReasoningParser(ReasoningParser):
    """The `<think>…</think>` split; subclasses may end the reasoning earlier."""

    start_tag: ClassVar[str] = START
    end_tag: ClassVar[str] = END

    def scan(self, text: str, final: bool) -> ReasoningScan:
        head = len(text) - len(text.lstrip())
        if text.startswith(self.start_tag, head):
            start = head + len(self.start_tag)
        elif not final and self.start_tag.startswith(text[head:]):
            return ReasoningScan(0, 0)  # it may yet be the opening tag
        else:
            start = 0
        reasoning_end, content_start = self.reasoning_end(text, start, final)
        return ReasoningScan(start, reasoning_end, content_start)

    def reasoning_end_marker(self) -> str | None:
        return self.end_tag

    def reasoning_end(self, text: str, start: int, final: bool) -> tuple[int, int | None]:
        """Where the reasoning ends and the content starts, once known; until then
        how far the reasoning is decided, and None."""
        end = text.find(self.end_tag, start)
        if end >= 0:
            return end, end + len(self.end_tag)
        return len(text) - (0 if final else held_back(text, self.end_tag, start)), None


class DeepSeekR1ReasoningParser(ThinkTagReasoningParser):
    name: ClassVar[str] = "deepseek_r1"
