"""`OutputProcessor`: sampled tokens in, what the caller sees out.

It owns everything about a completion that the scheduler does not need: one
`RequestState` per engine request (its `IncrementalDetokenizer`, its text with
stop strings applied, what was already handed out, logprobs not yet handed out)
and one group per caller request (its n completions and prompt logprobs). Each
step the core hands it every sampled token (`process_token`), which it
detokenizes and searches for stop strings, reporting the stop string it found so
the core finishes that request in the same step; then `outputs` builds one
`RequestOutput` delta per group that progressed. Tool-call and reasoning parsers
will run here, on each `RequestState`'s new text.

Invariants: the text handed out is never taken back: while a request runs, the
last `longest stop string - 1` characters are held back (they might begin a stop
string); a request's finishing delta is handed out exactly once, and then its
group is forgotten once all its completions have finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from llmcore.engine.logprobs import TokenLogprobs, logprobs_of
from llmcore.engine.request import FinishReason, Request
from llmcore.outputs import CompletionOutput, Logprob, RequestOutput
from llmcore.tokenization.detokenizer import IncrementalDetokenizer
from llmcore.tokenization.tokenizer import Tokenizer


@dataclass(slots=True, eq=False)
class RequestState:
    """What the caller has been shown of one completion, and what comes next."""

    request: Request
    detokenizer: IncrementalDetokenizer
    hold: int  # characters held back while running: the longest stop string's - 1
    text: str = ""  # detokenized output, stop strings applied
    emitted_chars: int = 0  # how much of `text` has been handed out
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
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
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
        detokenizer = IncrementalDetokenizer(
            self.tokenizer,
            r.prompt_token_ids,
            skip_special_tokens=r.params.skip_special_tokens,
            spaces_between_special_tokens=r.params.spaces_between_special_tokens,
        )
        stops = r.params.stop
        hold = max(len(s) for s in stops) - 1 if stops else 0
        return RequestState(r, detokenizer, hold)

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

    def add_prompt_logprobs(
        self, r: Request, start: int, num_new: int, logits: torch.Tensor
    ) -> None:
        """Score the prompt tokens after positions `start..start+num_new` of the group
        leader `r` (logits at position p score prompt token p + 1; position 0 has none)."""
        group = self._groups[r.group_id]
        if start == 0:  # the first chunk, or a recomputation after a preemption
            group.partial_prompt_logprobs = [None]
        end = min(start + num_new, r.num_prompt_tokens - 1)
        if end > start:
            targets = torch.tensor(r.prompt_token_ids[start + 1 : end + 1])
            k = r.params.prompt_logprobs or 0
            group.partial_prompt_logprobs.extend(
                to_logprob(t) for t in logprobs_of(logits[: end - start], targets, k)
            )
        if start + num_new >= r.num_prompt_tokens:
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
        hide_token = stop_token and not r.params.include_stop_str_in_output
        delta = "" if hide_token else state.detokenizer.step([token])
        if reason is not None:
            delta += state.detokenizer.finish()
        state.text += delta
        return _cut_at_stop_string(state, len(delta))

    # ---- outputs -------------------------------------------------------------------------

    def outputs(self, group_ids: Sequence[str]) -> list[RequestOutput]:
        """One delta per listed group with something new; finished groups are forgotten."""
        outputs = []
        for group_id in dict.fromkeys(group_ids):
            group = self._groups.get(group_id)
            if group is None:
                continue
            completions = [c for s in group.states if (c := _delta(s)) is not None]
            finished = all(s.request.is_finished for s in group.states)
            if completions or finished:
                outputs.append(
                    RequestOutput(
                        request_id=group_id,
                        prompt_token_ids=group.prompt_token_ids,
                        outputs=completions,
                        finished=finished,
                        prompt_logprobs=group.prompt_logprobs,
                        num_cached_tokens=group.states[0].request.num_cached_tokens or 0,
                    )
                )
            if finished:
                del self._groups[group_id]
                for s in group.states:
                    del self._states[s.request.request_id]
        return outputs


def _cut_at_stop_string(state: RequestState, new_chars: int) -> str | None:
    """Cut `state.text` at the first stop string that the new text completes."""
    r = state.request
    stops = r.params.stop
    if not stops or not new_chars:
        return None
    search_from = max(0, len(state.text) - new_chars - state.hold)
    best: tuple[int, str] | None = None
    for stop in stops:
        at = state.text.find(stop, search_from)
        if at != -1 and (best is None or at < best[0]):
            best = (at, stop)
    if best is None:
        return None
    at, stop = best
    keep = at + len(stop) if r.params.include_stop_str_in_output else at
    state.text = state.text[:keep]
    return stop


def _delta(state: RequestState) -> CompletionOutput | None:
    """What the completion produced since its last output (None if nothing)."""
    r = state.request
    hold = 0 if r.is_finished else state.hold  # might be a stop string's start
    text_end = max(state.emitted_chars, len(state.text) - hold)
    tokens = r.output_token_ids[state.emitted_tokens :]
    text = state.text[state.emitted_chars : text_end]
    logprobs, state.logprobs = state.logprobs, None
    if not tokens and not text and not r.is_finished:
        return None
    if r.is_finished and state.emitted_finish:
        return None
    state.emitted_chars, state.emitted_tokens = text_end, len(r.output_token_ids)
    state.emitted_finish = r.is_finished
    return CompletionOutput(
        index=r.index,
        text=text,
        token_ids=tokens,
        finish_reason=r.finish_reason.value if r.finish_reason else None,
        stop_reason=r.stop_reason,
        logprobs=logprobs,
    )


def to_logprob(lp: TokenLogprobs) -> Logprob:
    """The sampler's logprobs of one position, as the caller sees them."""
    return Logprob(lp.token_id, lp.logprob, lp.rank, list(lp.top))
