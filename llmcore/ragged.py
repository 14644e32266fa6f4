"""Ragged lists of ints (a step's block tables, its chunks' token ids) laid into
numpy arrays, the host side of a step's batch: built from the real entries only,
so the cost grows with what the lists hold, not with a padded `rows x width`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def scatter_rows(out: np.ndarray, lists: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
    """Write list i at the start of `out[i]` (the rest of each row is left as it
    is); the lists' lengths. Every list must fit `out`'s width. Numpy rows (the KV
    cache manager's tables) are joined in C; Python lists are read one by one."""
    n = len(lists)
    lengths = np.fromiter(map(len, lists), np.int64, n)
    if n and all(isinstance(row, np.ndarray) for row in lists):
        flat = np.concatenate(lists).astype(out.dtype, copy=False)
    else:
        flat = np.fromiter(itertools.chain.from_iterable(lists), out.dtype, int(lengths.sum()))
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[np.repeat(np.arange(n), lengths), np.arange(flat.size) - starts] = flat
    return lengths


def concatenated(lists: Sequence[Sequence[int]], dtype: type = np.int64) -> np.ndarray:
    """The lists one after another, as one array."""
    total = sum(map(len, lists))
    return np.fromiter(itertools.chain.from_iterable(lists), dtype, total)
