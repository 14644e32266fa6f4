"""Test helper: run the public ops on their torch paths (the C library reported
missing), for comparing a kernel with its op's reference."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from ops import dispatch
from ops.cpu import _build


@contextlib.contextmanager
def torch_path() -> Iterator[None]:
    """Every public op takes its torch path inside this block."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_build, "library", lambda: None)
        dispatch.clear_caches()
        try:
            yield
        finally:
            dispatch.clear_caches()
