"""`ops.linear.Linear`: oneDNN where present; else MKL prepacking after a steady row
count, F.linear otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ops import linear
from ops.linear import MIN_ROWS, STREAK, Linear, mkl_packing_available, onednn_available

needs_mkl = pytest.mark.skipif(not mkl_packing_available(), reason="MKL packing unavailable")


@needs_mkl
@pytest.mark.parametrize("bias", [False, True])
def test_packs_after_a_streak_and_matches_f_linear(bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 40, generator=g)
    b = torch.randn(96, generator=g) if bias else None
    mm = Linear(w, b)
    mm.onednn = False  # the MKL path, as on a machine without oneDNN
    assert mm.enable_packing()
    rows = MIN_ROWS + 3
    for i in range(STREAK + 2):
        x = torch.randn(rows, 40, generator=g)
        torch.testing.assert_close(mm(x), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        assert (mm._packed is not None) == (i + 1 >= STREAK)
    packed = mm._packed
    other = torch.randn(rows + 1, 40, generator=g)  # another count: the plain path
    torch.testing.assert_close(mm(other), F.linear(other, w, b), rtol=1e-5, atol=1e-5)
    assert mm._packed is packed and mm._packed_rows == rows


def test_small_counts_and_other_dtypes_stay_plain() -> None:
    w = torch.randn(32, 16)
    mm = Linear(w)
    mm.onednn = False
    mm.enable_packing()
    for _ in range(STREAK + 1):
        mm(torch.randn(MIN_ROWS - 1, 16))
    assert mm._packed is None
    half = Linear(w.to(torch.bfloat16))
    assert not half.enable_packing()
    disabled = Linear(w)  # packing is off until enabled
    disabled.onednn = False
    for _ in range(STREAK + 1):
        x = torch.randn(MIN_ROWS, 16)
        assert torch.equal(disabled(x), F.linear(x, w))
    assert disabled._packed is None


@pytest.mark.skipif(not onednn_available(), reason="oneDNN unavailable")
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 64, 300])
def test_onednn_matches_f_linear_and_needs_no_packing(bias: bool, rows: int) -> None:
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(96, 40, generator=g)
    b = torch.randn(96, generator=g) if bias else None
    mm = Linear(w, b)
    assert mm.onednn and not mm.enable_packing()
    x = torch.randn(rows + 5, 40, generator=g)[5:]  # a view, not at offset 0
    torch.testing.assert_close(mm(x), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    assert mm._packed is None
    assert not Linear(w.to(torch.bfloat16)).onednn  # float32 only


def test_onednn_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCORE_ONEDNN_LINEAR", "0")
    assert linear.onednn_available.__wrapped__() is False
    monkeypatch.setattr(linear, "onednn_available", lambda: False)
    assert not Linear(torch.randn(4, 3)).onednn
