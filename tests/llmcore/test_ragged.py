"""`llmcore.ragged`: ragged block tables laid into a padded numpy table the same
way from Python lists and from the KV cache manager's numpy rows."""

from __future__ import annotations

import numpy as np
import pytest

from llmcore.ragged import concatenated, scatter_rows

TABLES = [[7, 3, 9], [], [1], [4, 4, 2, 8, 6]]


@pytest.mark.parametrize("kind", ["lists", "numpy", "mixed"])
def test_scatter_rows_fills_each_row_and_leaves_the_rest(kind: str) -> None:
    rows: list[list[int] | np.ndarray] = [list(t) for t in TABLES]
    if kind != "lists":
        rows = [np.array(t, np.int32) for t in TABLES]
    if kind == "mixed":
        rows[0] = list(TABLES[0])
    out = np.full((len(TABLES), 6), -1, np.int32)
    lengths = scatter_rows(out, rows)
    assert lengths.tolist() == [len(t) for t in TABLES]
    for row, table in zip(out.tolist(), TABLES, strict=True):
        assert row == table + [-1] * (6 - len(table))


def test_concatenated_joins_in_order() -> None:
    joined = concatenated(TABLES)
    assert joined.dtype == np.int64 and joined.tolist() == [t for table in TABLES for t in table]
