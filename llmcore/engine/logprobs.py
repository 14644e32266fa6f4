"""Logprobs as the OpenAI API reports them: of the raw model distribution (vLLM's
default, before any sampling parameter acts), with the chosen token's rank and the
top-k alternatives.

Invariant: a row's result depends on that row's logits alone, so logprobs are the
same whatever shares the batch; `sampled_logprobs` asks for the batch's largest k
once and trims each row to its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from llmcore.engine.logits_rows import index_tensor, to_pinned

if TYPE_CHECKING:
    from llmcore.engine.sampler import SamplingRow


@dataclass(slots=True)
class TokenLogprobs:
    token_id: int
    logprob: float
    rank: int  # 1-based: how many tokens have a logprob >= this one's (vLLM's rank)
    top: list[tuple[int, float]]  # the top-k (token_id, logprob), best first


@dataclass(slots=True)
class LogprobTensors:
    """`logprobs_of`'s figures as tensors, on the logits' device until `to_host`:
    the chosen ids, their logprobs and ranks, the top-k ids and logprobs."""

    token_ids: torch.Tensor  # [n]
    chosen: torch.Tensor  # [n]
    ranks: torch.Tensor  # [n]
    top_ids: torch.Tensor  # [n, k]
    top_values: torch.Tensor  # [n, k]

    def to_host(self, copy: Callable[[torch.Tensor], torch.Tensor]) -> LogprobTensors:
        """Each tensor through `copy` (a pinned, non-blocking copy on a GPU)."""
        return LogprobTensors(*(copy(t) for t in (self.token_ids, self.chosen, self.ranks,
                                                  self.top_ids, self.top_values)))  # fmt: skip

    def rows(self) -> list[TokenLogprobs]:
        """The rows as `TokenLogprobs` (reads the tensors: a sync on a GPU)."""
        return [
            TokenLogprobs(token, logprob, rank, list(zip(ids, values, strict=True)))
            for token, logprob, rank, ids, values in zip(
                self.token_ids.tolist(),
                self.chosen.tolist(),
                self.ranks.tolist(),
                self.top_ids.tolist(),
                self.top_values.tolist(),
                strict=True,
            )
        ]


def logprob_tensors(logits: torch.Tensor, token_ids: torch.Tensor, k: int) -> LogprobTensors:
    """`logprobs_of` without reading the results (nothing waits for a GPU)."""
    logprobs = logits.float().log_softmax(dim=-1)
    ids = token_ids.to(device=logprobs.device, dtype=torch.long).view(-1, 1)
    chosen = logprobs.gather(1, ids)
    ranks = (logprobs >= chosen).sum(dim=-1)
    k = min(k, logprobs.shape[1])
    top_values, top_ids = logprobs.topk(k, dim=-1) if k > 0 else (chosen[:, :0], ids[:, :0])
    return LogprobTensors(ids.view(-1), chosen.view(-1), ranks, top_ids, top_values)


class PendingLogprobTensors:
    """`LogprobTensors` on their way to the host: on a GPU, copied into pinned
    memory behind the kernels that make them, with an event to wait for."""

    __slots__ = ("_event", "_tensors")

    def __init__(self, tensors: LogprobTensors) -> None:
        self._tensors = tensors
        self._event: torch.cuda.Event | None = None
        if tensors.token_ids.device.type == "cuda":
            self._tensors = tensors.to_host(to_pinned)
            self._event = torch.cuda.Event()
            self._event.record()

    def rows(self) -> list[TokenLogprobs]:
        """The rows (waiting for the GPU, if they come from one)."""
        if self._event is not None:
            self._event.synchronize()
        return self._tensors.rows()


def logprobs_of(logits: torch.Tensor, token_ids: torch.Tensor, k: int) -> list[TokenLogprobs]:
    """Raw log_softmax logprobs of `token_ids` (one per row of `logits`), ranks and top-k."""
    return logprob_tensors(logits, token_ids, k).rows()


@dataclass(slots=True)
class PendingLogprobs:
    """A step's sampled logprobs before they are read: the rows that asked, each
    row's k, and the batch's tensors (its largest k)."""

    wanted: list[int]  # rows of the step that asked for logprobs
    ks: list[int]
    tensors: LogprobTensors

    def rows(self, num_rows: int) -> list[TokenLogprobs | None]:
        out: list[TokenLogprobs | None] = [None] * num_rows
        for i, k, lp in zip(self.wanted, self.ks, self.tensors.rows(), strict=True):
            lp.top = lp.top[:k]
            out[i] = lp
        return out


def sampled_logprobs(
    raw: torch.Tensor, token_ids: torch.Tensor, rows: Sequence[SamplingRow]
) -> PendingLogprobs | None:
    """The logprobs of the rows whose parameters ask for them (None: no row does),
    launched, not read."""
    wanted = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    if not wanted:
        return None
    ks = [rows[i].params.logprobs or 0 for i in wanted]
    index = None if len(wanted) == len(rows) else index_tensor(wanted, raw.device)
    logits = raw if index is None else raw.index_select(0, index)
    ids = token_ids if index is None else token_ids.index_select(0, index)
    return PendingLogprobs(wanted, ks, logprob_tensors(logits, ids, max(ks)))
