"""Logprobs as the OpenAI API reports them: of the raw model distribution (vLLM's
default, before any sampling parameter acts), with the chosen token's rank and the
top-k alternatives.

Invariant: a row's result depends on that row's logits alone, so logprobs are the
same whatever shares the batch; `sampled_logprobs` asks for the batch's largest k
once and trims each row to its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from llmcore.engine.sampler import SamplingRow


@dataclass(slots=True)
class TokenLogprobs:
    token_id: int
    logprob: float
    rank: int  # 1-based: how many tokens have a logprob >= this one's (vLLM's rank)
    top: list[tuple[int, float]]  # the top-k (token_id, logprob), best first


def logprobs_of(logits: torch.Tensor, token_ids: torch.Tensor, k: int) -> list[TokenLogprobs]:
    """Raw log_softmax logprobs of `token_ids` (one per row of `logits`), ranks and top-k."""
    logprobs = logits.float().log_softmax(dim=-1)
    token_ids = token_ids.to(device=logprobs.device, dtype=torch.long).view(-1, 1)
    chosen = logprobs.gather(1, token_ids)
    ranks = (logprobs >= chosen).sum(dim=-1).tolist()
    k = min(k, logprobs.shape[1])
    top_values, top_ids = logprobs.topk(k, dim=-1) if k > 0 else (chosen[:, :0], token_ids[:, :0])
    return [
        TokenLogprobs(token, logprob, rank, list(zip(ids, values, strict=True)))
        for token, logprob, rank, ids, values in zip(
            token_ids.view(-1).tolist(),
            chosen.view(-1).tolist(),
            ranks,
            top_ids.tolist(),
            top_values.tolist(),
            strict=True,
        )
    ]


def sampled_logprobs(
    raw: torch.Tensor, token_ids: torch.Tensor, rows: Sequence[SamplingRow]
) -> list[TokenLogprobs | None]:
    out: list[TokenLogprobs | None] = [None] * len(rows)
    wanted = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    if not wanted:
        return out
    k = max(rows[i].params.logprobs or 0 for i in wanted)
    for i, lp in zip(wanted, logprobs_of(raw[wanted], token_ids[wanted], k), strict=True):
        lp.top = lp.top[: rows[i].params.logprobs]
        out[i] = lp
    return out
