"""What the engine hands back: `RequestOutput` with one `CompletionOutput` per
completion, in vLLM's shape. While streaming each output carries the step's
delta (new token ids and text); `LLM.generate` accumulates them, and a stream
whose reader fell behind gets the deltas waiting for it as one (`extend_output`)."""

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


def extend_output(total: RequestOutput, delta: RequestOutput) -> None:
    """Add a later delta of the same request to `total` (which must be the caller's
    own: its lists are extended in place): each completion's text, token ids and
    logprobs after its own, the latest finish and stop reasons, prompt logprobs
    once they come."""
    total.finished = delta.finished
    if delta.prompt_logprobs is not None:
        total.prompt_logprobs = delta.prompt_logprobs
    for d in delta.outputs:
        c = next((c for c in total.outputs if c.index == d.index), None)
        if c is None:
            total.outputs.append(d)
            continue
        c.text += d.text
        c.token_ids.extend(d.token_ids)
        c.finish_reason, c.stop_reason = d.finish_reason, d.stop_reason
        if d.logprobs is not None:
            c.logprobs = (c.logprobs or []) + d.logprobs
