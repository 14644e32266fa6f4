"""Logits processors: the edits of a step's logits that come before the greedy/random
split, because they can change the argmax. In vLLM v1's order: allowed token ids,
bad words, min_tokens (stop tokens banned until then), logit bias, then the
repetition, frequency and presence penalties.

Invariants: the caller's logits are never modified (one copy, made only when some
row needs an edit); only the (row, token) cells concerned are edited, never
whole-batch passes; each row's edits depend on that row alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from llmcore.engine.logits_rows import device_tensor, flat_cells, index_tensor, on_rows
from llmcore.sampling_params import SamplingParams

if TYPE_CHECKING:
    from llmcore.engine.sampler import SamplingRow

_NEG_INF = float("-inf")


def processed_logits(raw: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Allowed ids, bad words, min_tokens, logit bias, penalties; `raw` if none applies.

    One copy, then edits of the (row, token) cells concerned, never whole-batch passes.
    """
    if not any(r.edits for r in rows):  # the common batch: nothing to look at per row
        return raw
    allowed = [i for i, r in enumerate(rows) if r.params.allowed_token_ids is not None]
    banned = _banned_cells(rows)
    biases = [(i, t, b) for i, r in enumerate(rows) for t, b in (r.params.logit_bias or {}).items()]
    penalized = [i for i, r in enumerate(rows) if _has_penalties(r.params)]
    if not (allowed or banned or biases or penalized):
        return raw
    logits = raw.clone(memory_format=torch.contiguous_format)
    flat, vocab = logits.view(-1), logits.shape[1]
    if allowed:
        _keep_only_allowed(logits, rows, allowed)
    if banned:
        flat[index_tensor([i * vocab + t for i, t in banned], logits.device)] = _NEG_INF
    if biases:
        cells = index_tensor([i * vocab + t for i, t, _ in biases], logits.device)
        flat.index_add_(0, cells, device_tensor([b for *_, b in biases], logits.device))
    if penalized:
        _apply_penalties(logits, rows, penalized)
    return logits


def _keep_only_allowed(logits: torch.Tensor, rows: Sequence[SamplingRow], idx: list[int]) -> None:
    ids = [rows[i].params.allowed_token_ids or [] for i in idx]
    cells = flat_cells(ids, logits.shape[1], logits.device)

    def keep(sub: torch.Tensor) -> None:
        flat = sub.view(-1)
        kept = flat[cells]
        flat.fill_(_NEG_INF)
        flat[cells] = kept

    on_rows(logits, idx, keep)


def _banned_cells(rows: Sequence[SamplingRow]) -> list[tuple[int, int]]:
    """(row, token) pairs banned this step by bad words and by min_tokens."""
    banned: list[tuple[int, int]] = []
    for i, row in enumerate(rows):
        for token in _bad_word_tokens(row.output_token_ids, row.bad_words_token_ids):
            banned.append((i, token))
        if len(row.output_token_ids) < row.params.min_tokens:
            banned.extend((i, token) for token in row.stop_token_ids)
    return banned


def _bad_word_tokens(output: Sequence[int], words: list[list[int]]) -> list[int]:
    """A word's last token is banned when the output ends with the rest of the word."""
    banned = []
    n = len(output)
    for word in words:
        prefix = word[:-1]
        if (
            word
            and len(prefix) <= n
            and all(output[n - len(prefix) + j] == token for j, token in enumerate(prefix))
        ):
            banned.append(word[-1])
    return banned


def may_edit(p: SamplingParams, bad_words_token_ids: list[list[int]]) -> bool:
    """Whether any processor here may edit a row with these parameters (at some step)."""
    return bool(
        p.allowed_token_ids is not None
        or bad_words_token_ids
        or p.min_tokens > 0
        or p.logit_bias
        or _has_penalties(p)
    )


def reads_output(row: SamplingRow) -> bool:
    """Whether a processor here reads the row's output so far at its next step
    (penalties, bad words, min_tokens not yet reached): the last sampled token must
    be on the host before the row samples again."""
    if not row.edits:
        return False
    p = row.params
    return bool(
        row.bad_words_token_ids or len(row.output_token_ids) < p.min_tokens or _has_penalties(p)
    )


def _has_penalties(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0


def _apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow], idx: list[int]) -> None:
    """Repetition penalty on tokens of the prompt or output (positive logits divided,
    negative multiplied), then OpenAI's frequency (x count) and presence (once) penalties
    on tokens of the output. Edits only the cells of those tokens: a cell listed twice
    gets the same new value twice, and frequency accumulates per occurrence."""
    device, vocab = logits.device, logits.shape[1]
    params = [rows[i].params for i in idx]
    output = flat_cells([rows[i].output_token_ids for i in idx], vocab, device)
    output_row = output // vocab
    frequency = device_tensor([p.frequency_penalty for p in params], device)
    presence = device_tensor([p.presence_penalty for p in params], device)
    repetition = device_tensor([p.repetition_penalty for p in params], device)
    repeats = [p.repetition_penalty != 1.0 for p in params]
    any_frequency = any(p.frequency_penalty != 0.0 for p in params)
    any_presence = any(p.presence_penalty != 0.0 for p in params)

    def penalize(sub: torch.Tensor) -> None:
        flat = sub.view(-1)
        if any(repeats):
            prompts = [
                rows[i].prompt_token_ids if r else () for i, r in zip(idx, repeats, strict=True)
            ]
            seen = torch.cat([output, flat_cells(prompts, vocab, device)])
            factor = repetition[seen // vocab]
            values = flat[seen]
            flat[seen] = torch.where(values > 0, values / factor, values * factor)
        if any_frequency:
            flat.index_add_(0, output, -frequency[output_row])
        if any_presence:
            flat[output] = flat[output] - presence[output_row]

    on_rows(logits, idx, penalize)
