"""The grammar backend interface: constraints compile to grammars, grammars make
matchers, matchers say which tokens may come next.

The engine sees only these protocols; llguidance is one implementation
(`llguidance_backend`), chosen by name, so that another (xgrammar) could be added
without touching the engine. Invariants: `compile` refuses a bad constraint with
`InvalidRequestError` naming the request field, before any token is generated; a
matcher's state is the tokens it accepted, nothing else (so a request preempted
and recomputed keeps its matcher as is).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from llmcore.structured_outputs.params import StructuredOutputsParams


class GrammarMatcher(Protocol):
    """The state of one sequence in one grammar."""

    def accept_token(self, token_id: int) -> bool:
        """Advance by the sampled token; False if the grammar does not allow it (the
        matcher is then in an error state and stays there)."""
        ...

    def is_terminated(self) -> bool:
        """True when the grammar is complete and allows nothing more (except EOS)."""
        ...

    def rollback(self, num_tokens: int) -> None:
        """Forget the last `num_tokens` accepted tokens."""
        ...


class CompiledGrammar(Protocol):
    def new_matcher(self) -> GrammarMatcher:
        """A matcher at the grammar's start (cheap: a copy of a pristine one)."""
        ...


class GrammarBackend(Protocol):
    name: str

    def compile(self, spec: StructuredOutputsParams) -> CompiledGrammar:
        """Compile a validated constraint (cached by its text); raises
        InvalidRequestError naming `spec.param` when it does not compile."""
        ...

    def fill_bitmasks(
        self, matchers: Sequence[tuple[GrammarMatcher, int]], bitmask: torch.Tensor
    ) -> None:
        """Write each matcher's allowed next tokens into row `i` of `bitmask`
        (int32 `[B, ceil(V / 32)]`, bit `t % 32` of word `t // 32` set when token
        `t` is allowed). Releases the GIL while it works where the backend can."""
        ...


assert sys.byteorder == "little", "bitmask words are read as little-endian bytes"


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


# A row allowing fewer tokens than this fraction of the vocabulary is rebuilt from
# its allowed tokens (fill with -inf, put those back): far less memory traffic than
# masking every token, and a JSON grammar mostly allows a handful.
SPARSE_FRACTION = 1 / 16


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: Sequence[int]) -> None:
    """Set to -inf, in place, the logits of rows `rows` whose tokens the bitmask rows
    (in the same order) do not allow. The bits are unpacked by numpy (little-endian
    words, so byte `b` of word `w` holds tokens `32w + 8b ...`), far faster than
    shifting int32 tensors. Rows that allow few tokens keep just those (gathered and
    put back after a fill); the others are masked whole."""
    if not rows:
        return
    vocab = logits.shape[1]
    words = bitmask[: len(rows)].numpy().view(np.uint8)  # [k, 4W], little-endian
    allowed = np.unpackbits(words, axis=1, count=vocab, bitorder="little").view(np.bool_)
    counts = allowed.sum(axis=1)
    sparse = counts < vocab * SPARSE_FRACTION
    for j in np.flatnonzero(sparse).tolist():
        # non-blocking (fresh pageable memory, staged before the call returns): a
        # blocking copy would make the launch wait for the step's forward pass
        ids = torch.from_numpy(np.flatnonzero(allowed[j])).to(logits.device, non_blocking=True)
        row = logits[rows[j]]
        kept = row[ids]
        row.fill_(float("-inf"))
        row[ids] = kept
    dense = np.flatnonzero(~sparse).tolist()
    if not dense:
        return
    banned = torch.from_numpy(~allowed[dense]).to(logits.device, non_blocking=True)
    for i, j in enumerate(dense):  # in place, row by row: no gather and scatter
        logits[rows[j]].masked_fill_(banned[i], float("-inf"))
