"""`OutputProcessor`: sampled tokens in, what the caller sees out.

It owns everything about a completion that the scheduler does not need: one
`RequestState` per engine request (its `CompletionText`: the detokenized text with
stop strings applied; what was already handed out; logprobs not yet handed out)
and one group per caller request (its n completions and prompt logprobs). Each
step the core hands it every sampled token (`process_token`), which it
detokenizes and searches for stop strings, reporting the stop string it found so
the core finishes that request in the same step; then `outputs` builds one
`RequestOutput` delta per group that progressed.

A core whose caller detokenizes (the engine-core process: `ProcessEngine` keeps
the `CompletionText`s in the API process) builds it with `detokenize=False`: the
deltas then carry token ids and empty text, as `TokenDelta`s that say whether
their last token is a hidden stop token.

Invariants: a request's finishing delta is handed out exactly once, and then its
group is forgotten once all its completions have finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from llmcore.engine.completion_text import CompletionText
from llmcore.engine.logits_rows import index_tensor
from llmcore.engine.logprobs import PendingLogprobTensors, TokenLogprobs, logprob_tensors
from llmcore.engine.request import FinishReason, Request, RequestStatus
from llmcore.outputs import CompletionOutput, Logprob, RequestOutput
from llmcore.tokenization.tokenizer import Tokenizer


@dataclass(slots=True)
class TokenDelta(CompletionOutput):
    """A completion delta of a core that does not detokenize (`text` is empty)."""

    stop_token: bool = False  # its last token is the stop token that ends it


@dataclass(slots=True, eq=False)
class PromptLogprobsChunk:
    """A launched chunk's prompt logprobs (`OutputProcessor.prompt_logprobs_chunk`)."""

    request: Request  # the group leader
    start: int
    num_new: int
    pending: PendingLogprobTensors | None  # None: the chunk scores no prompt token


@dataclass(slots=True, eq=False)
class RequestState:
    """What the caller has been shown of one completion, and what comes next."""

    request: Request
    text: CompletionText | None  # None where the caller detokenizes
    stop_token: bool = False  # the last token is the stop token that ends it
    emitted_tokens: int = 0  # how many output tokens have been handed out
    emitted_finish: bool = False  # the finishing output has been handed out
    logprobs: list[Logprob] | None = None  # of the tokens not yet handed out


@dataclass(slots=True, eq=False)
class _GroupState:
    """The n completions of one caller request."""

    request_id: str
    prompt_token_ids: list[int]
    states: list[RequestState]
    prompt_logprobs: list[Logprob | None] | None = None  # set once the prompt is scored
    partial_prompt_logprobs: list[Logprob | None] = field(default_factory=lambda: [None])


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, *, detokenize: bool = True) -> None:
        self.tokenizer = tokenizer
        self.detokenize = detokenize
        self._groups: dict[str, _GroupState] = {}
        self._states: dict[str, RequestState] = {}

    def add(self, requests: list[Request]) -> None:
        """Start following the requests of one group (from the input processor)."""
        states = [self._new_state(r) for r in requests]
        first = requests[0]
        self._groups[first.group_id] = _GroupState(first.group_id, first.prompt_token_ids, states)
        for state in states:
            self._states[state.request.request_id] = state

    def _new_state(self, r: Request) -> RequestState:
        if not self.detokenize:
            return RequestState(r, None)
        return RequestState(r, CompletionText(self.tokenizer, r.prompt_token_ids, r.params))

    def requests_of(self, group_id: str) -> list[Request]:
        """The requests of a group still followed (none once its last output is out)."""
        group = self._groups.get(group_id)
        return [] if group is None else [s.request for s in group.states]

    # ---- prompt logprobs -----------------------------------------------------------------

    def wants_prompt_logprobs(self, r: Request, start: int) -> bool:
        """Whether the chunk of `r` from `start` needs logits at every position."""
        return (
            r.params.prompt_logprobs is not None
            and r.index == 0
            and start < r.num_prompt_tokens
            and self._groups[r.group_id].prompt_logprobs is None
        )

    def prompt_logprobs_chunk(
        self, r: Request, start: int, num_new: int, logits: torch.Tensor
    ) -> PromptLogprobsChunk:
        """Launch the scoring of the prompt tokens after positions
        `start..start+num_new` of the group leader `r` (logits at position p score
        prompt token p + 1; position 0 has none); `add_prompt_logprobs` takes the
        result once the step is finished (nothing here waits for a GPU)."""
        end = min(start + num_new, r.num_prompt_tokens - 1)
        pending = None
        if end > start:
            targets = index_tensor(r.prompt_token_ids[start + 1 : end + 1], logits.device)
            tensors = logprob_tensors(logits[: end - start], targets, r.params.prompt_logprobs or 0)
            pending = PendingLogprobTensors(tensors)
        return PromptLogprobsChunk(r, start, num_new, pending)

    def add_prompt_logprobs(self, chunk: PromptLogprobsChunk) -> None:
        """Take a launched chunk's prompt logprobs, in launch order (ignored once its
        group has left)."""
        r = chunk.request
        group = self._groups.get(r.group_id)
        if group is None:
            return
        if chunk.start == 0:  # the first chunk, or a recomputation after a preemption
            group.partial_prompt_logprobs = [None]
        if chunk.pending is not None:
            group.partial_prompt_logprobs.extend(to_logprob(t) for t in chunk.pending.rows())
        if chunk.start + chunk.num_new >= r.num_prompt_tokens:
            group.prompt_logprobs = group.partial_prompt_logprobs

    # ---- sampled tokens ------------------------------------------------------------------

    def process_token(
        self,
        r: Request,
        token: int,
        lp: TokenLogprobs | None,
        reason: FinishReason | None,
        *,
        stop_token: bool = False,
    ) -> str | None:
        """Take the token just appended to `r` (finishing it for `reason`, if any;
        `stop_token`: it is the stop token that ends `r`, whose text is hidden unless
        include_stop_str_in_output): detokenize it and return the stop string it
        completes, if any (the caller then finishes `r` with STOP)."""
        state = self._states[r.request_id]
        if lp is not None:
            if state.logprobs is None:
                state.logprobs = []
            state.logprobs.append(to_logprob(lp))
        if state.text is None:
            state.stop_token = stop_token
            return None
        return state.text.add(token, final=reason is not None, stop_token=stop_token)

    # ---- outputs -------------------------------------------------------------------------

    def outputs(self, group_ids: Sequence[str]) -> list[RequestOutput]:
        """One delta per listed group with something new; finished groups are forgotten."""
        outputs = []
        for group_id in dict.fromkeys(group_ids):
            group = self._groups.get(group_id)
            if group is None:
                continue
            completions = []
            finished = True
            for state in group.states:
                completion = _delta(state)
                if completion is not None:
                    completions.append(completion)
                finished = finished and state.request.status is RequestStatus.FINISHED
            if completions or finished:
                outputs.append(
                    RequestOutput(
                        group_id,
                        group.prompt_token_ids,
                        completions,
                        finished,
                        group.prompt_logprobs,
                        group.states[0].request.num_cached_tokens or 0,
                    )
                )
            if finished:
                del self._groups[group_id]
                for s in group.states:
                    del self._states[s.request.request_id]
        return outputs


def _delta(state: RequestState) -> CompletionOutput | None:
    """What the completion produced since its last output (None if nothing)."""
    r = state.request
    finished = r.status is RequestStatus.FINISHED
    tokens = r.output_token_ids[state.emitted_tokens :]
    text = "" if state.text is None else state.text.take(finished)
    logprobs, state.logprobs = state.logprobs, None
    if not tokens and not text and not finished:
        return None
    if finished and state.emitted_finish:
        return None
    state.emitted_tokens = len(r.output_token_ids)
    state.emitted_finish = finished
    finish_reason = r.finish_reason.value if r.finish_reason else None
    if state.text is None:
        return TokenDelta(
            r.index, "", tokens, finish_reason, r.stop_reason, logprobs, stop_token=state.stop_token
        )
    return CompletionOutput(r.index, text, tokens, finish_reason, r.stop_reason, logprobs)


def to_logprob(lp: TokenLogprobs) -> Logprob:
    """The sampler's logprobs of one position, as the caller sees them."""
    return Logprob(lp.token_id, lp.logprob, lp.rank, list(lp.top))
