"""Logprobs in OpenAI's two shapes (completions: parallel lists; chat: one entry per
token with its UTF-8 bytes), and vLLM's `prompt_logprobs`.

Invariant: a token's string is the decoded text of that single token
(`decode([id], skip_special_tokens=False)`), the same in every shape, streamed or
not; its `bytes` are the raw token's bytes, so that a character split across
tokens can be put back together by concatenating them. Logprobs are finite in
JSON (-inf is sent as -9999.0, as vLLM does).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import cache

from llmcore.openai.protocol import (
    ChatChoiceLogprobs,
    ChatLogprob,
    CompletionLogprobs,
    PromptLogprob,
    PromptLogprobs,
    TopLogprob,
)
from llmcore.outputs import Logprob
from llmcore.tokenization.tokenizer import Tokenizer

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_FLOOR = -9999.0


@cache
def _byte_level_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte -> printable character alphabet (byte-level BPE)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


class TokenStrings:
    """The text and bytes of single tokens of one tokenizer, cached (at most one
    entry per vocabulary id)."""

    __slots__ = ("_bytes", "_text", "tokenizer")

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._text: dict[int, str] = {}
        self._bytes: dict[int, list[int]] = {}

    def text(self, token_id: int) -> str:
        text = self._text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._text[token_id] = text
        return text

    def bytes(self, token_id: int) -> list[int]:
        raw = self._bytes.get(token_id)
        if raw is None:
            raw = self._raw_bytes(token_id)
            self._bytes[token_id] = raw
        return raw

    def _raw_bytes(self, token_id: int) -> list[int]:
        text = self.text(token_id)
        if "\ufffd" not in text:  # whole characters: the text is the token
            return list(text.encode("utf-8"))
        piece = self.tokenizer.id_to_token(token_id) or ""
        if match := _BYTE_PIECE.fullmatch(piece):  # byte fallback "<0xE6>"
            return [int(match.group(1), 16)]
        alphabet = _byte_level_decoder()
        if piece and all(char in alphabet for char in piece):  # byte-level BPE "ĠæĹ"
            return [alphabet[char] for char in piece]
        return list(text.encode("utf-8"))


class TokenIdStrings:
    """`TokenStrings` with "token_id:N" as every token's text (vLLM's
    `return_tokens_as_token_ids`, for tokens that are not valid text alone); a
    token's `bytes` stay its own."""

    __slots__ = ("_strings",)

    def __init__(self, strings: TokenStrings) -> None:
        self._strings = strings

    def text(self, token_id: int) -> str:
        return f"token_id:{token_id}"

    def bytes(self, token_id: int) -> list[int]:
        return self._strings.bytes(token_id)


Strings = TokenStrings | TokenIdStrings


def finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else _FLOOR


def _padded(logprobs: Sequence[Logprob | None] | None, n: int) -> list[Logprob | None]:
    items = list(logprobs or [])[:n]
    return items + [None] * (n - len(items))


def completion_logprobs(
    strings: Strings,
    token_ids: Sequence[int],
    logprobs: Sequence[Logprob | None] | None,
    offset: int = 0,
) -> tuple[CompletionLogprobs, int]:
    """The completions shape for `token_ids`; `offset` is where the first token's text
    starts (the sum of earlier token strings' lengths). Returns the next offset."""
    out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for token_id, lp in zip(token_ids, _padded(logprobs, len(token_ids)), strict=True):
        text = strings.text(token_id)
        out.tokens.append(text)
        out.text_offset.append(offset)
        offset += len(text)
        if lp is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        out.token_logprobs.append(finite(lp.logprob))
        top = {strings.text(i): finite(value) for i, value in lp.top}
        top.setdefault(text, finite(lp.logprob))  # the sampled token is always there
        out.top_logprobs.append(top)
    return out, offset


def chat_logprobs(
    strings: Strings, token_ids: Sequence[int], logprobs: Sequence[Logprob | None] | None
) -> ChatChoiceLogprobs:
    """The chat shape: one entry per token (with `top_logprobs` the top-k asked for)."""
    content = []
    for token_id, lp in zip(token_ids, _padded(logprobs, len(token_ids)), strict=True):
        if lp is None:
            continue
        top = [TopLogprob(strings.text(i), finite(v), strings.bytes(i)) for i, v in lp.top]
        content.append(
            ChatLogprob(
                token=strings.text(token_id),
                logprob=finite(lp.logprob),
                bytes=strings.bytes(token_id),
                top_logprobs=top,
            )
        )
    return ChatChoiceLogprobs(content=content)


def prompt_logprobs(
    strings: TokenStrings, logprobs: Sequence[Logprob | None] | None
) -> PromptLogprobs | None:
    """vLLM's `prompt_logprobs`: per position, the prompt token and the top-k by id."""
    if logprobs is None:
        return None
    out: PromptLogprobs = []
    for lp in logprobs:
        if lp is None:
            out.append(None)
            continue
        entry = {
            str(lp.token_id): PromptLogprob(finite(lp.logprob), lp.rank, strings.text(lp.token_id))
        }
        for rank, (token_id, value) in enumerate(lp.top, start=1):
            entry.setdefault(
                str(token_id), PromptLogprob(finite(value), rank, strings.text(token_id))
            )
        out.append(entry)
    return out
