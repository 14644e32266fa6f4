"""`IncrementalDetokenizer`: text deltas for a stream of generated token ids.

Invariant: after every `step`, the concatenation of all deltas equals
`tokenizer.decode(all ids)` unless a tail is held back (`pending`): text that does
not yet decode to whole characters (a partial multi-token emoji shows as U+FFFD)
or a run of byte-fallback tokens, whose rendering depends on the bytes that
follow. The joined deltas are then a prefix of the full decode, and `finish()`
releases the tail, after which they equal it. Each step decodes only a short
window of recent tokens (from the last point where the text was known to be
stable), so its cost is O(new tokens), not O(sequence).

The window trick (as in vLLM and the `tokenizers` DecodeStream): decode
`ids[prefix:]` and `ids[prefix:read]`; the new text is the first minus the second.
Decoding the window on its own may differ from decoding it in context only at its
start (e.g. SentencePiece strips a leading space there), and both decodes share
that start, so the difference is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmcore.tokenization.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"
# Tokens of context kept before the read point, so the window's first decoded
# token is never the one whose rendering depends on its position.
CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    __slots__ = (
        "_ids",
        "_read",
        "_skip_special",
        "_spaces_between",
        "tokenizer",
    )

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int] = (),
        *,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = False,
    ) -> None:
        """`prompt_ids` give context only (their text is not emitted): the first
        generated token then renders as it does after the prompt."""
        self.tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._spaces_between = spaces_between_special_tokens
        self._ids: list[int] = list(prompt_ids[-CONTEXT_TOKENS:])
        self._read = len(self._ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(
            ids,
            skip_special_tokens=self._skip_special,
            spaces_between_special_tokens=self._spaces_between,
        )

    def step(self, new_ids: Sequence[int]) -> str:
        """Append `new_ids`; return the text that became final ("" if none)."""
        self._ids.extend(new_ids)
        return self._emit(final=False)

    def finish(self) -> str:
        """Release whatever is held back (an incomplete character renders as U+FFFD)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        prefix_text = self._decode(self._ids[: self._read])
        window_text = self._decode(self._ids)
        if not final and (
            len(window_text) <= len(prefix_text)
            or window_text.endswith(REPLACEMENT)
            or self._ends_in_byte_token()
        ):
            return ""
        delta = window_text[len(prefix_text) :]
        # The tokens just emitted become the next window's context; older ones go.
        del self._ids[: self._read]
        self._read = len(self._ids)
        return delta

    def _ends_in_byte_token(self) -> bool:
        """Whether the last visible token (skipped special tokens are invisible: the
        bytes around them decode as one run) is a byte-fallback piece."""
        byte_ids = self.tokenizer.byte_token_ids
        if not byte_ids:
            return False
        special = self.tokenizer.special_ids if self._skip_special else frozenset()
        for token_id in reversed(self._ids):
            if token_id not in special:
                return token_id in byte_ids
        return False

    @property
    def pending(self) -> bool:
        """Whether tokens are held back (their text not yet emitted)."""
        return self._read < len(self._ids)

    @property
    def window(self) -> int:
        """Tokens currently held (context + not yet emitted): bounded, not O(sequence)."""
        return len(self._ids)
