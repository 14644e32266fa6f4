"""A `tokenizers.Tokenizer` built from the vocabulary inside a GGUF file.

Owns the translation of llama.cpp's `tokenizer.ggml.*` metadata into a Hugging Face
tokenizer. Invariant: GGUF token id i is tokenizer id i for every token, encoding never
adds BOS/EOS, and text is split the way llama.cpp splits it for the file's model and
`tokenizer.ggml.pre`; a file that does not say enough fails with an llmcore error.

Two vocabulary kinds are supported, by `tokenizer.ggml.model`:

- `gpt2`: byte-level BPE with the file's merges. The text is first cut by the regex
  list llama.cpp uses for the file's `tokenizer.ggml.pre` (each regex subdividing the
  pieces of the previous one, unmatched text kept as its own piece), then byte-mapped.
- `llama`: SentencePiece-style BPE. The file has scores, not merges; merges are
  derived from the scores the way transformers' converters do. Bytes without a token
  fall back to `<0xNN>` tokens.

Control tokens (type 3) and user-defined tokens (type 4) become added tokens, so they
are matched whole in text (control ones as special tokens), as in transformers' GGUF
loader and llama.cpp.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers as pre

from llmcore.errors import CorruptModelFileError, UnsupportedArchitectureError
from llmcore.weights.gguf_file import GGUFFile

SPIECE_UNDERLINE = "\u2581"


class TokenType(enum.IntEnum):
    """llama.cpp's `tokenizer.ggml.token_type` values."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


@dataclass(frozen=True, slots=True)
class GGUFVocab:
    """A GGUF file's tokenizer and the facts about it a server needs."""

    tokenizer: Tokenizer  # adds no BOS/EOS; special-token text is parsed as special
    bos_token_id: int | None
    eos_token_id: int | None
    unk_token_id: int | None
    pad_token_id: int | None
    add_bos: bool
    add_eos: bool
    # Control tokens, and a declared special token the file types as unknown (`<unk>`):
    # what `decode(..., skip_special_tokens=True)` skips.
    special_ids: frozenset[int]
    chat_template: str | None


# ---- pre-tokenizers of byte-level vocabularies ----------------------------------------


@dataclass(frozen=True, slots=True)
class PreTokenizerSpec:
    """How llama.cpp splits text before BPE for one `tokenizer.ggml.pre` family."""

    regexes: tuple[str, ...]  # applied in turn, each subdividing the previous pieces
    ignore_merges: bool = False  # a piece that is a whole token is not merged
    add_bos: bool = False  # llama.cpp's default when the file does not say


# The regexes are llama.cpp's (llama-vocab.cpp). Where llama.cpp rewrote a model's
# regex for its own regex engine, the original from the model's tokenizer.json is used:
# Hugging Face tokenizers runs Oniguruma, which reads the original as written.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
_TEKKEN = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTION}"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTION}"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# DeepSeek's character classes, written as escapes: several of these characters have
# look-alikes in other Unicode blocks.
_DEEPSEEK_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_DEEPSEEK_LETTERS = (
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf"
    "\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d"
    "\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-"
    "\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8"
    "-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79"
    "-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50"
    "-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc"
    "\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0"
    "-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115"
    "\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c"
    "-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
    "\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f"
    "\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17"
    "\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
    "\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)
_DEEPSEEK_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
_PORO = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"

_LLAMA3_SPEC = PreTokenizerSpec((_LLAMA3,), ignore_merges=True, add_bos=True)
_GPT2_SPEC = PreTokenizerSpec((_GPT2,))
_DIGITS_GPT2_SPEC = PreTokenizerSpec((r"\p{N}", _GPT2))
_QWEN2_SPEC = PreTokenizerSpec((_QWEN2,))
_SMAUG_SPEC = PreTokenizerSpec((_LLAMA3,))
_GPT4O_SPEC = PreTokenizerSpec((_GPT4O,))

PRE_TOKENIZERS: dict[str, PreTokenizerSpec] = {
    "default": PreTokenizerSpec((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"),
        _LLAMA3_SPEC,
    ),
    **dict.fromkeys(("dbrx", "smaug-bpe", "chatglm-bpe", "glm4"), _SMAUG_SPEC),
    "deepseek-llm": PreTokenizerSpec(
        ("[\r\n]", _DEEPSEEK_LETTERS, _DEEPSEEK_PUNCT, r"\s+$", _DEEPSEEK_CJK, r"\p{N}+")
    ),
    "deepseek-coder": PreTokenizerSpec(
        ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _DEEPSEEK_CJK, r"\p{N}")
    ),
    "falcon": PreTokenizerSpec((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")),
    **dict.fromkeys(
        ("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"),
        _DIGITS_GPT2_SPEC,
    ),
    **dict.fromkeys(
        (
            *("gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4", "trillion", "granite-docling"),
            *("jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "gigachat", "a.x-4.0", "mellum"),
        ),
        _GPT2_SPEC,
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "megrez", "stablelm2"), _QWEN2_SPEC),
    "poro-chat": PreTokenizerSpec((_PORO,)),
    "viking": PreTokenizerSpec((_PORO, r"\p{N}")),
    "tekken": PreTokenizerSpec((_TEKKEN,), ignore_merges=True, add_bos=True),
    **dict.fromkeys(("gpt-4o", "llama4", "minimax-m2"), _GPT4O_SPEC),
}

SUPPORTED_MODELS = ("gpt2", "llama")


# ---- reading the metadata ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Metadata:
    """The `tokenizer.*` keys of one file, checked for consistency."""

    model: str
    tokens: list[str]
    types: list[int]
    md: dict[str, Any]
    gguf: GGUFFile

    def special_id(self, name: str, default: int | None = None) -> int | None:
        """The file's `{name}_token_id`, else llama.cpp's default if the vocabulary has it."""
        value = self.md.get(f"tokenizer.ggml.{name}_token_id")
        if value is None:
            return default if default is not None and default < len(self.tokens) else None
        if not 0 <= int(value) < len(self.tokens):
            raise CorruptModelFileError(
                f"{self.gguf.path}: tokenizer.ggml.{name}_token_id = {value} is outside "
                f"the vocabulary of {len(self.tokens)} tokens"
            )
        return int(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.md.get(f"tokenizer.ggml.{name}")
        return default if value is None else bool(value)

    def ids_of_type(self, *kinds: TokenType) -> list[int]:
        return [i for i, kind in enumerate(self.types) if kind in kinds]


def _read_metadata(gguf: GGUFFile) -> _Metadata:
    md = gguf.metadata
    model = md.get("tokenizer.ggml.model")
    tokens = gguf.array("tokenizer.ggml.tokens")
    if model is None or tokens is None:
        missing = "tokenizer.ggml.model" if model is None else "tokenizer.ggml.tokens"
        raise CorruptModelFileError(
            f"{gguf.path}: the GGUF file has no tokenizer ({missing} is missing); "
            "llmcore needs the vocabulary that llama.cpp's converter writes"
        )
    types = gguf.array("tokenizer.ggml.token_type") or [TokenType.NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise CorruptModelFileError(
            f"{gguf.path}: tokenizer.ggml.token_type has {len(types)} entries "
            f"for {len(tokens)} tokens"
        )
    return _Metadata(str(model), [str(t) for t in tokens], [int(t) for t in types], md, gguf)


# ---- byte-level BPE ("gpt2") -------------------------------------------------------------


@cache
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's map from each byte to the printable character that spells it."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    spelled = {b: chr(b) for b in printable}
    extra = (b for b in range(256) if b not in spelled)
    spelled.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return dict(sorted(spelled.items()))


def _pre_tokenizer_spec(meta: _Metadata) -> PreTokenizerSpec:
    name = str(meta.md.get("tokenizer.ggml.pre") or "default")  # llama.cpp's fallback
    spec = PRE_TOKENIZERS.get(name)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"{meta.gguf.path}: unknown pre-tokenizer tokenizer.ggml.pre = {name!r}; "
            f"supported: {', '.join(sorted(PRE_TOKENIZERS))}"
        )
    return spec


def _byte_level_vocab(meta: _Metadata) -> dict[str, int]:
    """Token -> id. Model tokens outside the byte alphabet are respelled byte by byte
    (as transformers does); added tokens keep their text, since they match raw text."""
    spell = _byte_alphabet()
    alphabet = set(spell.values())
    added = (TokenType.CONTROL, TokenType.USER_DEFINED)
    vocab: dict[str, int] = {}
    for i, (token, kind) in enumerate(zip(meta.tokens, meta.types, strict=True)):
        if kind not in added and not set(token) <= alphabet:
            token = "".join(spell[b] for b in token.encode("utf-8"))
        vocab.setdefault(token, i)
    return vocab


def _gguf_merges(meta: _Metadata) -> list[tuple[str, str]]:
    merges = meta.gguf.array("tokenizer.ggml.merges")
    if merges is None:
        raise CorruptModelFileError(
            f"{meta.gguf.path}: a 'gpt2' tokenizer needs tokenizer.ggml.merges, which is missing"
        )
    pairs = []
    for merge in map(str, merges):
        cut = merge.find(" ", 1)  # as llama.cpp: the first space after the first character
        if cut < 0:
            raise CorruptModelFileError(f"{meta.gguf.path}: malformed merge {merge!r}")
        pairs.append((merge[:cut], merge[cut + 1 :]))
    return pairs


def _byte_level_tokenizer(meta: _Metadata) -> tuple[Tokenizer, bool]:
    """The tokenizer and llama.cpp's default for add_bos."""
    spec = _pre_tokenizer_spec(meta)
    model = _bpe(
        meta, _byte_level_vocab(meta), _gguf_merges(meta), ignore_merges=spec.ignore_merges
    )
    tokenizer = Tokenizer(model)
    splits: list[pre.PreTokenizer] = [
        pre.Split(Regex(regex), behavior="isolated") for regex in spec.regexes
    ]
    splits.append(pre.ByteLevel(add_prefix_space=False, use_regex=False))
    tokenizer.pre_tokenizer = pre.Sequence(splits)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer, spec.add_bos


def _bpe(
    meta: _Metadata, vocab: dict[str, int], merges: list[tuple[str, str]], **kw: Any
) -> models.BPE:
    try:
        return models.BPE(vocab=vocab, merges=merges, **kw)
    except Exception as exc:  # tokenizers raises a bare Exception for a bad merge
        raise CorruptModelFileError(
            f"{meta.gguf.path}: the vocabulary is inconsistent: {exc}"
        ) from exc


# ---- SentencePiece-style BPE ("llama") ---------------------------------------------------


def spm_merges(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """Merges implied by a scored vocabulary: every split of a piece into two pieces of
    the vocabulary, best merged score first; ties go to the longer left part, then the
    longer right part, then vocabulary order (transformers' `generate_merges` order)."""
    first_id: dict[str, int] = {}
    for i, token in enumerate(tokens):
        first_id.setdefault(token, i)
    ranked: list[tuple[float, int, int, int, str, str]] = []
    for piece, i in first_id.items():
        score = -float(scores[i])
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in first_id and right in first_id:
                ranked.append((score, -cut, cut - len(piece), i, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _spm_tokenizer(meta: _Metadata) -> Tokenizer:
    scores = meta.gguf.array("tokenizer.ggml.scores") or [0.0] * len(meta.tokens)
    if len(scores) != len(meta.tokens):
        raise CorruptModelFileError(
            f"{meta.gguf.path}: tokenizer.ggml.scores has {len(scores)} entries "
            f"for {len(meta.tokens)} tokens"
        )
    vocab: dict[str, int] = {}
    for i, token in enumerate(meta.tokens):
        vocab.setdefault(token, i)
    unk_id = meta.special_id("unknown", 0)
    unk = None if unk_id is None else meta.tokens[unk_id]
    model = _bpe(
        meta,
        vocab,
        spm_merges(meta.tokens, scores),
        unk_token=unk,
        fuse_unk=True,
        byte_fallback=True,
    )
    tokenizer = Tokenizer(model)
    prefix = meta.flag("add_space_prefix", True)
    replace = normalizers.Replace(" ", SPIECE_UNDERLINE)
    tokenizer.normalizer = (
        normalizers.Sequence([normalizers.Prepend(SPIECE_UNDERLINE), replace])
        if prefix
        else replace
    )
    steps: list[decoders.Decoder] = [
        decoders.Replace(SPIECE_UNDERLINE, " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
    ]
    if prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


# ---- putting it together -----------------------------------------------------------------


def _add_tokens(tokenizer: Tokenizer, meta: _Metadata, special: frozenset[int]) -> None:
    """Control (and declared unknown) tokens as special added tokens, user-defined ones
    as plain added tokens: both are then matched whole in text, never merged into."""
    vocab = tokenizer.get_vocab(with_added_tokens=False)

    def added(ids: Sequence[int], is_special: bool) -> list[AddedToken]:
        return [
            AddedToken(meta.tokens[i], normalized=False, special=is_special)
            for i in ids
            if vocab.get(meta.tokens[i]) == i  # a duplicate spelling cannot be added twice
        ]

    tokenizer.add_special_tokens(added(sorted(special), True))
    tokenizer.add_tokens(added(meta.ids_of_type(TokenType.USER_DEFINED), False))


def _special_ids(meta: _Metadata, declared: Sequence[int | None]) -> frozenset[int]:
    """Control tokens, and declared special tokens that the file types as unknown
    (SentencePiece's `<unk>`): transformers treats both as special, and llama.cpp
    matches both in text only when it parses special tokens."""
    control = meta.ids_of_type(TokenType.CONTROL)
    unknown = [i for i in declared if i is not None and meta.types[i] == TokenType.UNKNOWN]
    return frozenset(control + unknown)


def vocab_from_gguf(gguf: GGUFFile) -> GGUFVocab:
    """The tokenizer a GGUF file describes; raises CorruptModelFileError if it has
    none and UnsupportedArchitectureError for a vocabulary kind we cannot build."""
    meta = _read_metadata(gguf)
    if meta.model == "gpt2":
        tokenizer, add_bos_default = _byte_level_tokenizer(meta)
        defaults: tuple[int | None, int | None, int | None] = (None, None, None)
    elif meta.model == "llama":
        tokenizer, add_bos_default = _spm_tokenizer(meta), True
        defaults = (1, 2, 0)  # llama.cpp's defaults for a SentencePiece vocabulary
    else:
        raise UnsupportedArchitectureError(
            f"{gguf.path}: tokenizer.ggml.model = {meta.model!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_MODELS)}"
        )
    bos, eos, unk = (
        meta.special_id(name, default)
        for name, default in zip(("bos", "eos", "unknown"), defaults, strict=True)
    )
    pad = meta.special_id("padding")
    special = _special_ids(meta, (bos, eos, unk, pad))
    _add_tokens(tokenizer, meta, special)
    template = gguf.metadata.get("tokenizer.chat_template")
    return GGUFVocab(
        tokenizer=tokenizer,
        bos_token_id=bos,
        eos_token_id=eos,
        unk_token_id=unk,
        pad_token_id=pad,
        add_bos=meta.flag("add_bos_token", add_bos_default),
        add_eos=meta.flag("add_eos_token", False),
        special_ids=special,
        chat_template=None if template is None else str(template),
    )
