"""Row subsets of a `[B, V]` logits batch, for the sampler's per-row stages.

A stage usually concerns some rows only (those with a penalty, a min_p, a top_k):
`take_rows` and `on_rows` touch just those, and cost no copy when the subset is
every row; `flat_cells` turns (row, token) pairs into indices of the batch viewed
flat, so scattered edits are one indexed write. Invariant: row lists are ascending
and the batch they index is contiguous.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain

import numpy as np
import torch


def index_tensor(values: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


def take_rows(x: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """Rows `idx` (ascending) of `x`: `x` itself when that is all of them, else a copy."""
    return x if len(idx) == x.shape[0] else x[idx]


def on_rows(logits: torch.Tensor, idx: list[int], edit: Callable[[torch.Tensor], object]) -> None:
    """Apply the in-place `edit` to rows `idx` (ascending) of `logits`; no copy for all rows."""
    if len(idx) == logits.shape[0]:
        edit(logits)
        return
    sub = logits[idx]
    edit(sub)
    logits[idx] = sub


def flat_cells(seqs: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """`row * vocab + token` for every token of every sequence (row = its position in
    `seqs`): indices into a contiguous `[len(seqs), vocab]` tensor viewed flat."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    ids = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
    rows = np.repeat(np.arange(len(seqs), dtype=np.int64), lengths)
    return torch.from_numpy(rows * vocab + ids).to(device)
