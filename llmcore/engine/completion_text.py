"""`CompletionText`: the text of one completion, as the caller sees it.

Each generated token is detokenized incrementally (`IncrementalDetokenizer`) and
the new text searched for the request's stop strings; the first one found cuts
the text (keeping it when `include_stop_str_in_output`) and is reported, so that
whoever follows the completion finishes it. The engine core's output processor
keeps one per completion when it detokenizes (`AsyncEngine`, `LLM`); with the
core in its own process the API process keeps them (`ProcessEngine`), so the core
only sends token ids.

Invariants: the text handed out (`take`) is never taken back: while the completion
runs, the last `longest stop string - 1` characters are held back (they might
begin a stop string); a stop token's text is not shown unless
`include_stop_str_in_output`.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmcore.sampling_params import SamplingParams
from llmcore.tokenization.detokenizer import IncrementalDetokenizer
from llmcore.tokenization.tokenizer import Tokenizer


class CompletionText:
    __slots__ = ("_detokenizer", "_emitted", "_hold", "_keep_stop", "_stops", "text")

    def __init__(
        self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int], params: SamplingParams
    ) -> None:
        self._detokenizer = IncrementalDetokenizer(
            tokenizer,
            prompt_token_ids,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens,
        )
        self._stops = params.stop
        self._keep_stop = params.include_stop_str_in_output
        self._hold = max(len(s) for s in self._stops) - 1 if self._stops else 0
        self.text = ""  # detokenized output, stop strings applied
        self._emitted = 0  # how much of `text` has been handed out

    def add(self, token: int, *, final: bool, stop_token: bool = False) -> str | None:
        """Take the completion's next token (`final`: it ends the completion;
        `stop_token`: it is the stop token that ends it, whose text is hidden unless
        include_stop_str_in_output) and return the stop string it completes, if any
        (the completion then ends with it)."""
        hide = stop_token and not self._keep_stop
        delta = "" if hide else self._detokenizer.step((token,))
        if final:
            delta += self._detokenizer.finish()
        self.text += delta
        return self._cut_at_stop_string(len(delta))

    def take(self, finished: bool) -> str:
        """The text not yet handed out (while running, less what might begin a stop
        string)."""
        end = max(self._emitted, len(self.text) - (0 if finished else self._hold))
        new = self.text[self._emitted : end]
        self._emitted = end
        return new

    def _cut_at_stop_string(self, new_chars: int) -> str | None:
        """Cut the text at the first stop string that the new text completes."""
        if not self._stops or not new_chars:
            return None
        search_from = max(0, len(self.text) - new_chars - self._hold)
        best: tuple[int, str] | None = None
        for stop in self._stops:
            at = self.text.find(stop, search_from)
            if at != -1 and (best is None or at < best[0]):
                best = (at, stop)
        if best is None:
            return None
        at, stop = best
        self.text = self.text[: at + len(stop) if self._keep_stop else at]
        return stop
