"""Row subsets of a `[B, V]` logits batch, for the sampler's per-row stages.

A stage usually concerns some rows only (those with a penalty, a min_p, a top_k):
`take_rows` and `on_rows` touch just those, and cost no copy when the subset is
every row; `flat_cells` turns (row, token) pairs into indices of the batch viewed
flat, so scattered edits are one indexed write. Invariants: row lists are
ascending and the batch they index is contiguous; nothing here waits for a GPU
(host values reach the device by non-blocking copies, `to_device`), so a step's
sampling launches behind its forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain

import numpy as np
import torch


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A fresh host tensor on `device` without waiting for the device: on CUDA a
    blocking copy synchronizes the stream (a step's launch would wait for its own
    forward pass); a non-blocking one from pageable memory stages the bytes before
    it returns, so `host` may go at once."""
    return host if device.type == "cpu" else host.to(device, non_blocking=True)


def to_pinned(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of a device tensor in pinned host memory, made behind the kernels
    before it (read it once an event recorded after it has passed)."""
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host


def device_tensor(
    values: Sequence[float], device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """`torch.tensor(values)` on `device`, without waiting for it (`to_device`)."""
    return to_device(torch.tensor(values, dtype=dtype), device)


def index_tensor(values: Sequence[int], device: torch.device) -> torch.Tensor:
    return device_tensor(values, device, torch.long)


def take_rows(x: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """Rows `idx` (ascending) of `x`: `x` itself when that is all of them, else a copy."""
    return x if len(idx) == x.shape[0] else x.index_select(0, index_tensor(idx, x.device))


def put_rows(x: torch.Tensor, idx: list[int], values: torch.Tensor) -> None:
    """`x[idx] = values`, with the index built as `index_tensor` builds it (a Python
    list as an index is copied to the device blocking)."""
    x.index_copy_(0, index_tensor(idx, x.device), values)


def on_rows(logits: torch.Tensor, idx: list[int], edit: Callable[[torch.Tensor], object]) -> None:
    """Apply the in-place `edit` to rows `idx` (ascending) of `logits`; no copy for all rows."""
    if len(idx) == logits.shape[0]:
        edit(logits)
        return
    rows = index_tensor(idx, logits.device)
    sub = logits.index_select(0, rows)
    edit(sub)
    logits.index_copy_(0, rows, sub)


def flat_cells(seqs: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """`row * vocab + token` for every token of every sequence (row = its position in
    `seqs`): indices into a contiguous `[len(seqs), vocab]` tensor viewed flat."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    ids = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
    rows = np.repeat(np.arange(len(seqs), dtype=np.int64), lengths)
    return to_device(torch.from_numpy(rows * vocab + ids), device)
