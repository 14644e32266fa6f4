"""`qwen3`: Qwen3's `<think>…</think>`, as vLLM's current parser reads it.

- With `enable_thinking` false in the request's chat template kwargs, the template
  has already closed the reasoning (`<think></think>` in the prompt): the whole
  output is content. (vLLM's server streams it so, without calling the parser.)
- Otherwise the template may have opened `<think>` itself (Qwen3.5, the thinking
  models), so the output may hold only `</think>`: everything before it is reasoning,
  and an output without it is all reasoning (it stopped while thinking).
- A `<tool_call>` followed by `<function=` also ends the reasoning (Qwen3.5 models
  may call a tool without closing `</think>` first); the content starts at the tag.
  The first of the two ends counts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from llmcore.parsers import ReasoningScan
from plugins.reasoning_parsers.think_tags import ThinkTagReasoningParser, held_back

TOOL_CALL = "<tool_call>"
_FUNCTION = "<function"
_FUNCTION_OPEN = re.compile(r"<function[\s=]")


class Qwen3ReasoningParser(ThinkTagReasoningParser):
    name: ClassVar[str] = "qwen3"

    def __init__(self, *, chat_template_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__(chat_template_kwargs=chat_template_kwargs)
        self.thinking_enabled = bool(self.chat_template_kwargs.get("enable_thinking", True))

    def reasoning_end_marker(self) -> str | None:
        return super().reasoning_end_marker() if self.thinking_enabled else None

    def scan(self, text: str, final: bool) -> ReasoningScan:
        if not self.thinking_enabled:
            return ReasoningScan(0, 0, 0)
        return super().scan(text, final)

    def reasoning_end(self, text: str, start: int, final: bool) -> tuple[int, int | None]:
        end, content_start = super().reasoning_end(text, start, final)
        limit = end if content_start is not None else len(text)
        call = text.find(TOOL_CALL, start, limit)
        while call >= 0:
            verdict = _opens_function(text[call + len(TOOL_CALL) :], final)
            if verdict is None:
                return call, None  # undecided: hold back from the tag
            if verdict:
                return call, call
            call = text.find(TOOL_CALL, call + 1, limit)
        if content_start is None and not final:
            end = min(end, len(text) - held_back(text, TOOL_CALL, start))
        return end, content_start


def _opens_function(after: str, final: bool) -> bool | None:
    """Whether the text after a `<tool_call>` opens a function (None: not yet known)."""
    after = after.lstrip()
    if _FUNCTION_OPEN.match(after):
        return True
    if not final and _FUNCTION.startswith(after[: len(_FUNCTION)]) and len(after) <= len(_FUNCTION):
        return None
    return False
