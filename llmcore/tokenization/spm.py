"""A SentencePiece `tokenizer.model` as an llmcore `Tokenizer`.

The model is read through `sentencepiece` (pieces, scores, piece types) and built
into a `tokenizers` BPE the way transformers' `LlamaTokenizer` builds it, so
encode and decode match transformers: merges derived from the scores, byte
fallback, a Metaspace pre-tokenizer that prepends "▁" to the first piece of text
only (`prepend_scheme="first"`), control and unknown pieces as special added
tokens. Only BPE-type SentencePiece models (the llama family's) are supported;
a Unigram model is refused with a clear error.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from llmcore.errors import CorruptModelFileError, UnsupportedArchitectureError
from llmcore.tokenization.gguf_vocab import spm_merges
from llmcore.tokenization.tokenizer import HFTokenizer, _tokenizer_config

SPIECE_UNDERLINE = "▁"
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> dict[int, int | bytes]:
    """The last value of each field of a protobuf message (varints and bytes only)."""
    out: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number], pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            out[number], pos = data[pos : pos + size], pos + size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return out


def _model_type_and_prefix(proto: bytes) -> tuple[str, bool]:
    """`trainer_spec.model_type` (field 2.3) and `normalizer_spec.add_dummy_prefix`
    (field 3.3, default true) of a serialized ModelProto."""
    top = _fields(proto)
    trainer = top.get(2, b"")
    normalizer = top.get(3, b"")
    assert isinstance(trainer, bytes) and isinstance(normalizer, bytes)
    model_type = _fields(trainer).get(3, 1)
    prefix = _fields(normalizer).get(3, 1)
    return _MODEL_TYPES.get(int(model_type), "?"), bool(prefix)


def from_sentencepiece(path: Path) -> HFTokenizer:
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.Load(str(path))
        model_type, add_prefix = _model_type_and_prefix(sp.serialized_model_proto())
    except (OSError, RuntimeError, ValueError, IndexError) as exc:
        raise CorruptModelFileError(f"{path}: not a readable SentencePiece model: {exc}") from exc
    if model_type != "bpe":
        raise UnsupportedArchitectureError(
            f"{path}: SentencePiece {model_type} models are not supported (only BPE, as the "
            "llama family uses); a tokenizer.json beside it would be used instead"
        )
    n = sp.get_piece_size()
    pieces = [sp.IdToPiece(i) for i in range(n)]
    vocab = {piece: i for i, piece in reversed(list(enumerate(pieces)))}
    unk = sp.unk_id()
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=spm_merges(pieces, [sp.GetScore(i) for i in range(n)]),
            unk_token=pieces[unk] if unk >= 0 else None,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    scheme = "first" if add_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(SPIECE_UNDERLINE, scheme, split=False)
    steps = [decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    special = [i for i in range(n) if sp.IsControl(i) or sp.IsUnknown(i)]
    tok.add_special_tokens([AddedToken(pieces[i], normalized=False, special=True) for i in special])
    config = _tokenizer_config(path.parent)

    def known(i: int) -> int | None:
        return i if i >= 0 else None

    return HFTokenizer(
        tok,
        bos_token_id=known(sp.bos_id()),
        eos_token_id=known(sp.eos_id()),
        pad_token_id=known(sp.pad_id()),
        unk_token_id=known(unk),
        add_bos=bool(config.get("add_bos_token", True)),
        add_eos=bool(config.get("add_eos_token", False)),
        special_ids=special,
    )
