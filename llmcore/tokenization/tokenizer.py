"""The `Tokenizer` interface and its three sources.

One class serves every caller: `encode(text, add_special_tokens)` adds BOS/EOS
exactly as the model's publisher configured it, `decode(ids, skip_special_tokens)`
reproduces transformers' decode. Sources:

- a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`,
  `special_tokens_map.json`) through the `tokenizers` library;
- a SentencePiece `tokenizer.model` through `sentencepiece`;
- the vocabulary inside a GGUF file, built into a `tokenizers` object.

`load_tokenizer(path)` picks the source from what the path holds.
"""

from __future__ import annotations

import functools
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tokenizers

from llmcore.errors import CorruptModelFileError, ModelNotFoundError


class Tokenizer(ABC):
    """What llmcore needs of a tokenizer. Attributes are fixed after construction."""

    vocab_size: int
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    unk_token_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    special_ids: frozenset[int] = frozenset()
    byte_token_ids: frozenset[int] = frozenset()  # byte-fallback pieces "<0x41>"
    chat_template: str | None = None  # a template carried by the tokenizer's own file (GGUF)

    @abstractmethod
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; BOS/EOS added as configured when `add_special_tokens`."""

    @abstractmethod
    def _decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str: ...

    @abstractmethod
    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry (the raw piece, not decoded text) of `token_id`."""

    def decode(
        self,
        ids: Sequence[int],
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = False,
    ) -> str:
        """Text of `ids`. With `spaces_between_special_tokens` (and special tokens
        kept), special tokens are set off from the text around them by one space,
        as transformers' slow tokenizers do."""
        if skip_special_tokens or not spaces_between_special_tokens:
            return self._decode(ids, skip_special_tokens)
        pieces: list[str] = []
        run: list[int] = []
        for token_id in ids:
            if token_id in self.special_ids:
                pieces.append(self._decode(run, False))
                pieces.append(self._decode([token_id], False))
                run = []
            else:
                run.append(token_id)
        pieces.append(self._decode(run, False))
        return " ".join(p for p in pieces if p)

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = True
    ) -> list[list[int]]:
        return [self.encode(t, add_special_tokens) for t in texts]

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters the text of one token spans (special tokens included;
        at least 1): a text of N characters has at least N / max_token_chars tokens
        when the tokenizer keeps every character. Computed at first use (one decode
        per vocabulary entry, ~0.1 s for 50k entries)."""
        longest = max((len(self._decode([i], False)) for i in range(self.vocab_size)), default=1)
        return max(1, longest)

    @property
    def bos_token(self) -> str | None:
        return None if self.bos_token_id is None else self.id_to_token(self.bos_token_id)

    @property
    def eos_token(self) -> str | None:
        return None if self.eos_token_id is None else self.id_to_token(self.eos_token_id)


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (from tokenizer.json, or built from a GGUF vocabulary)."""

    def __init__(
        self,
        tok: tokenizers.Tokenizer,
        *,
        bos_token_id: int | None,
        eos_token_id: int | None,
        pad_token_id: int | None = None,
        unk_token_id: int | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        special_ids: Iterable[int] | None = None,
        chat_template: str | None = None,
        clean_up_spaces: bool = False,
    ) -> None:
        tok.no_padding()
        tok.no_truncation()
        if add_bos or add_eos:
            _set_bos_eos_post_processor(tok, bos_token_id, eos_token_id, add_bos, add_eos)
        self._tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
        self.pad_token_id, self.unk_token_id = pad_token_id, unk_token_id
        self.add_bos, self.add_eos = add_bos, add_eos
        if special_ids is None:
            special_ids = (i for i, t in tok.get_added_tokens_decoder().items() if t.special)
        self.special_ids = frozenset(special_ids)
        self.chat_template = chat_template
        self._clean_up_spaces = clean_up_spaces
        self.byte_token_ids = _byte_fallback_ids(tok)

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying `tokenizers.Tokenizer`."""
        return self._tok

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids  # type: ignore[no-any-return]

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = True
    ) -> list[list[int]]:
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [e.ids for e in encodings]

    def _decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        text: str = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self._clean_up_spaces else text

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)  # type: ignore[no-any-return]


_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


def _byte_fallback_ids(tok: tokenizers.Tokenizer) -> frozenset[int]:
    """Ids of a byte-fallback BPE's byte pieces (none for byte-level BPE or WordPiece):
    their text depends on the bytes that follow, so streams hold them back."""
    model = tok.model
    if not isinstance(model, tokenizers.models.BPE) or not model.byte_fallback:
        return frozenset()
    vocab = tok.get_vocab(with_added_tokens=False)
    return frozenset(i for piece, i in vocab.items() if _BYTE_PIECE.fullmatch(piece))


def _set_bos_eos_post_processor(
    tok: tokenizers.Tokenizer, bos: int | None, eos: int | None, add_bos: bool, add_eos: bool
) -> None:
    """Replace the post-processor with one adding BOS/EOS as the config says (what
    transformers does for llama-style tokenizers whose config sets add_bos/eos)."""
    specials: list[tuple[str, int]] = []
    single = "$A"
    if add_bos and bos is not None:
        bos_text = str(tok.id_to_token(bos))
        specials.append((bos_text, bos))
        single = f"{bos_text}:0 $A:0"
    if add_eos and eos is not None:
        eos_text = str(tok.id_to_token(eos))
        specials.append((eos_text, eos))
        single = f"{single} {eos_text}:0"
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single=single, pair=f"{single} $B:1", special_tokens=specials
    )


_CLEANUP = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]  # fmt: skip


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: drop spaces before punctuation and
    contractions (for tokenizers whose config sets clean_up_tokenization_spaces)."""
    for old, new in _CLEANUP:
        text = text.replace(old, new)
    return text


# ---- sources ----------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CorruptModelFileError(f"{path}: not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _token_content(value: Any) -> str | None:
    """A special token entry of tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json with special_tokens_map.json filling gaps."""
    config = _read_json(folder / "tokenizer_config.json")
    for key, value in _read_json(folder / "special_tokens_map.json").items():
        config.setdefault(key, value)
    return config


def _token_id(tok: tokenizers.Tokenizer, config: dict[str, Any], key: str) -> int | None:
    text = _token_content(config.get(key))
    return None if text is None else tok.token_to_id(text)


def from_tokenizer_json(path: Path) -> HFTokenizer:
    """A Hugging Face `tokenizer.json`, configured by the files beside it."""
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception type
        raise CorruptModelFileError(f"{path}: not a readable tokenizer.json: {exc}") from exc
    config = _tokenizer_config(path.parent)
    explicit = "add_bos_token" in config or "add_eos_token" in config
    return HFTokenizer(
        tok,
        bos_token_id=_token_id(tok, config, "bos_token"),
        eos_token_id=_token_id(tok, config, "eos_token"),
        pad_token_id=_token_id(tok, config, "pad_token"),
        unk_token_id=_token_id(tok, config, "unk_token"),
        add_bos=bool(config.get("add_bos_token", False)) if explicit else False,
        add_eos=bool(config.get("add_eos_token", False)) if explicit else False,
        clean_up_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
    )


def from_gguf(path: Path) -> HFTokenizer:
    """The vocabulary inside a GGUF file."""
    from llmcore.tokenization.gguf_vocab import vocab_from_gguf
    from llmcore.weights.gguf_file import GGUFFile

    vocab = vocab_from_gguf(GGUFFile.open(path))
    return HFTokenizer(
        vocab.tokenizer,
        bos_token_id=vocab.bos_token_id,
        eos_token_id=vocab.eos_token_id,
        pad_token_id=vocab.pad_token_id,
        unk_token_id=vocab.unk_token_id,
        add_bos=vocab.add_bos,
        add_eos=vocab.add_eos,
        special_ids=vocab.special_ids,
        chat_template=vocab.chat_template,
    )


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer at `path`: a GGUF file, a model folder, a `tokenizer.json` or a
    `tokenizer.model`. A folder prefers tokenizer.json, then tokenizer.model, then
    its one .gguf file."""
    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"tokenizer path {str(p)!r} does not exist")
    if p.is_dir():
        p = _tokenizer_file_in(p)
    if p.suffix == ".gguf":
        return from_gguf(p)
    if p.suffix == ".json":
        return from_tokenizer_json(p)
    if p.suffix == ".model":
        from llmcore.tokenization.spm import from_sentencepiece

        return from_sentencepiece(p)
    raise ModelNotFoundError(
        f"{p}: not a tokenizer (expected a .gguf, tokenizer.json or tokenizer.model)"
    )


def _tokenizer_file_in(folder: Path) -> Path:
    for name in ("tokenizer.json", "tokenizer.model"):
        if (folder / name).is_file():
            return folder / name
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    raise ModelNotFoundError(
        f"{folder}: no tokenizer.json, tokenizer.model or single .gguf file to read a "
        "tokenizer from"
    )
