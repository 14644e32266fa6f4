"""The engine's requests: `Request` (one sequence to generate, from arrival to
finish) and `EncodeRequest` (one input to pool, in and out within one step).

A `Request` holds what scheduling, the KV cache and sampling need; what the
caller sees of it (text, stop strings, what was already handed out) lives in the
output processor's `RequestState`.

Invariants: `all_token_ids == prompt_token_ids + output_token_ids`;
`num_computed_tokens <= len(all_token_ids) + num_pending` counts tokens whose KV is
in the cache or being written by a launched step
(it drops to 0 when the request is preempted, and catches up again: prefill,
chunked prefill, prefix-cache hits and resumption are the same arithmetic).
A request with `n > 1` is several `Request`s (one per completion) sharing a
`group_id`; they share their prompt's KV blocks through the prefix cache.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from llmcore.engine.block_pool import BlockHash
from llmcore.pooling import PoolingParams
from llmcore.sampling_params import SamplingParams
from llmcore.structured_outputs.backend import GrammarMatcher

if TYPE_CHECKING:
    from llmcore.engine.sampler import SamplingRow


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


class FinishReason(enum.Enum):
    STOP = "stop"  # EOS, a stop token or a stop string
    LENGTH = "length"  # max_tokens or the model's context
    ABORT = "abort"  # cancelled by the caller


@dataclass(slots=True, eq=False)
class Request:
    request_id: str  # unique inside the engine (a child of an n>1 group gets "-i")
    group_id: str  # the caller's request id
    index: int  # which of the group's n completions
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int  # resolved: params.max_tokens capped by the context
    arrival_time: float
    priority: int = 0
    cache_salt: str | None = None
    stop_token_ids: frozenset[int] = frozenset()
    bad_words_token_ids: list[list[int]] = field(default_factory=list)
    generator: torch.Generator | None = None
    grammar: GrammarMatcher | None = None  # structured outputs: the tokens allowed next
    grammar_after: tuple[int, ...] | None = None  # the grammar waits for these ids (reasoning)

    output_token_ids: list[int] = field(default_factory=list)
    all_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_hashes: list[BlockHash] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None  # the stop token or stop string that ended it
    num_preemptions: int = 0
    num_cached_tokens: int | None = None  # prefix-cache hits when first scheduled
    sampling_row: SamplingRow | None = None  # what the sampler reads, built once by the core
    # Async scheduling: tokens sampled by launched steps and not yet appended (the
    # scheduler counts them as known), and the row of the latest in its step's sample
    num_pending: int = 0
    pending_row: int = -1

    def __post_init__(self) -> None:
        if not self.all_token_ids:
            self.all_token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def sort_key(self) -> tuple[int, float]:
        """Lower runs first: priority, then arrival (FCFS)."""
        return (self.priority, self.arrival_time)


@dataclass(slots=True, eq=False)
class EncodeRequest:
    """One input to pool (`encode`): it runs whole in one forward pass, keeps no KV
    blocks, and finishes in the step that runs it."""

    request_id: str
    prompt_token_ids: list[int]
    params: PoolingParams
    arrival_time: float
    priority: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids)

    def sort_key(self) -> tuple[int, float]:
        """Lower runs first: priority, then arrival (FCFS)."""
        return (self.priority, self.arrival_time)
