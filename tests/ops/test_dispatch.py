"""The dispatch helper (`ops/dispatch.py`) on its own: an `Op` with made-up
backends asks each backend once per placement, asks `supports` on every call,
and keeps the torch reference as the last candidate."""

from __future__ import annotations

import torch

from ops import dispatch
from ops.dispatch import Backend, Impl, Op

CPU = torch.device("cpu")


def _counting_backend(accepted: bool) -> tuple[Backend, list[tuple[dispatch.Place, ...]]]:
    seen: list[tuple[dispatch.Place, ...]] = []

    def accepts(places: tuple[dispatch.Place, ...]) -> bool:
        seen.append(places)
        return accepted

    return Backend("counting", accepts), seen


def test_choice_is_made_once_per_placement() -> None:
    backend, seen = _counting_backend(True)
    kernel_calls: list[torch.Tensor] = []

    def double(x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    def kernel(x: torch.Tensor) -> torch.Tensor:
        kernel_calls.append(x)
        return x + x

    op = Op("test_double", double, on=lambda x: (x,), kernels=[Impl(backend, kernel)])
    try:
        for _ in range(3):
            assert torch.equal(op(torch.ones(2)), torch.full((2,), 2.0))
        op(torch.ones(2, dtype=torch.float64))
        assert seen == [((CPU, torch.float32),), ((CPU, torch.float64),)]
        assert len(kernel_calls) == 4
        assert op.candidates(((CPU, torch.float32),)) == (op.kernels[0],)  # it takes all
        op.clear_cache()
        op(torch.ones(2))
        assert len(seen) == 3
    finally:
        del dispatch.REGISTRY["test_double"]


def test_supports_is_asked_per_call_and_the_reference_comes_last() -> None:
    backend, _ = _counting_backend(True)
    never, _ = _counting_backend(False)

    def neg(x: torch.Tensor) -> torch.Tensor:
        return -x

    def kernel(x: torch.Tensor) -> torch.Tensor:
        return x.new_full(x.shape, 7.0)

    short = Impl(backend, kernel, lambda x: x.shape[0] < 3)
    op = Op("test_neg", neg, on=lambda x: (x,), kernels=[Impl(never, kernel), short])
    try:
        assert op.candidates(((CPU, torch.float32),)) == (short, op._torch)
        assert op(torch.ones(2)).tolist() == [7.0, 7.0]
        assert op(torch.ones(3)).tolist() == [-1.0, -1.0, -1.0]
        assert op.select(torch.ones(3)).fn is neg
    finally:
        del dispatch.REGISTRY["test_neg"]
