"""What the engine hands back: `RequestOutput` with one `CompletionOutput` per
completion, in vLLM's shape. While streaming each output carries the step's
delta (new token ids and text); `LLM.generate` accumulates them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmcore.parsers import ToolCall


@dataclass(slots=True)
class Logprob:
    """One position: the chosen token's logprob and rank, and the top alternatives."""

    token_id: int
    logprob: float
    rank: int
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None (still running)
    stop_reason: str | int | None = None  # the stop string or stop token that ended it
    logprobs: list[Logprob] | None = None
    # `LLM.chat` with tools or a reasoning parser: what its text holds (`text` stays
    # the generated text as is).
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    prompt_logprobs: list[Logprob | None] | None = None  # first position has none
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
