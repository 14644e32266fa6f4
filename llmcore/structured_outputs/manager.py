"""`StructuredOutputManager`: the engine's side of structured outputs.

It builds the grammar backend at the first constrained request (so an engine that
never sees one never imports llguidance), compiles constraints on the caller's
thread (`compile`, cached by the backend), and computes a step's token masks on a
worker thread while the model runs (`start_masks` before the forward pass,
`PendingMasks.wait` before sampling): the backend releases the GIL, so a
constrained batch costs little more than an unconstrained one.

Invariants: masks are computed from matcher states that are final for the step
(every matcher has accepted the previous step's token before `start_masks`); the
time spent computing masks, and the part of it the step had to wait for, are
counted for `statistics()`.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmcore.errors import InvalidRequestError
from llmcore.structured_outputs.backend import (
    CompiledGrammar,
    GrammarBackend,
    GrammarMatcher,
    bitmask_words,
)
from llmcore.structured_outputs.params import StructuredOutputsParams
from llmcore.tokenization.tokenizer import Tokenizer

BACKENDS = ("guidance",)  # names a request or flag may give; "auto" and "llguidance" mean it


@dataclass(slots=True)
class StructuredOutputStatistics:
    num_compiled: int  # constraints compiled (cache hits included)
    num_mask_rows: int  # rows masked, summed over steps
    mask_seconds: float  # worker time computing masks
    mask_wait_seconds: float  # step time spent waiting for masks (not overlapped)


class PendingMasks:
    """One step's masks, being computed: `wait()` gives the bitmask (row `j` for
    `rows[j]`, the constrained rows' positions in the step's sampling order)."""

    __slots__ = ("_future", "_manager", "bitmask", "rows")

    def __init__(
        self,
        manager: StructuredOutputManager,
        future: concurrent.futures.Future[float],
        bitmask: torch.Tensor,
        rows: list[int],
    ) -> None:
        self._manager, self._future = manager, future
        self.bitmask, self.rows = bitmask, rows

    def wait(self) -> torch.Tensor:
        start = time.perf_counter()
        seconds = self._future.result()
        self._manager._count(len(self.rows), seconds, time.perf_counter() - start)
        return self.bitmask


class StructuredOutputManager:
    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.eos_token_ids = tuple(eos_token_ids)
        self._backend: GrammarBackend | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._num_compiled = self._num_rows = 0
        self._mask_seconds = self._wait_seconds = 0.0

    @property
    def backend(self) -> GrammarBackend:
        with self._lock:
            if self._backend is None:
                from llmcore.structured_outputs.llguidance_backend import LLGuidanceBackend

                self._backend = LLGuidanceBackend(
                    self.tokenizer, self.vocab_size, self.eos_token_ids
                )
            return self._backend

    # ---- the caller's thread -------------------------------------------------------------

    def compile(self, spec: StructuredOutputsParams) -> CompiledGrammar:
        """Validate and compile a request's constraint (raises InvalidRequestError)."""
        spec.validate()
        try:
            backend = self.backend
        except ImportError as exc:  # pragma: no cover - llguidance is a dependency
            raise InvalidRequestError(
                f"{spec.param}: structured outputs need the llguidance package ({exc})",
                param=spec.param,
            ) from None
        compiled = backend.compile(spec)
        self._num_compiled += 1
        return compiled

    # ---- the engine's thread -------------------------------------------------------------

    def start_masks(self, matchers: Sequence[GrammarMatcher | None]) -> PendingMasks | None:
        """Start computing the masks of the rows that have a matcher (None when no
        row has one)."""
        rows = [i for i, m in enumerate(matchers) if m is not None]
        if not rows:
            return None
        backend = self.backend
        bitmask = torch.empty((len(rows), bitmask_words(self.vocab_size)), dtype=torch.int32)
        pairs: list[tuple[GrammarMatcher, int]] = []
        for j, i in enumerate(rows):
            matcher = matchers[i]
            assert matcher is not None
            pairs.append((matcher, j))
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "llmcore-grammar")
        future = self._pool.submit(_fill, backend, pairs, bitmask)
        return PendingMasks(self, future, bitmask, rows)

    def _count(self, rows: int, seconds: float, waited: float) -> None:
        self._num_rows += rows
        self._mask_seconds += seconds
        self._wait_seconds += waited

    def statistics(self) -> StructuredOutputStatistics:
        return StructuredOutputStatistics(
            self._num_compiled, self._num_rows, self._mask_seconds, self._wait_seconds
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def _fill(
    backend: GrammarBackend, pairs: list[tuple[GrammarMatcher, int]], bitmask: torch.Tensor
) -> float:
    start = time.perf_counter()
    backend.fill_bitmasks(pairs, bitmask)
    return time.perf_counter() - start
