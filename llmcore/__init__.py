"""llmcore: serve language models behind the OpenAI protocol, in pure asyncio.

The public in-process API. Nothing here imports sockets, HTTP or CuPy.
"""

from __future__ import annotations

from llmcore.config import ModelConfig
from llmcore.errors import (
    ContextLengthExceededError,
    CorruptModelFileError,
    InvalidRequestError,
    LLMCoreError,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
    UnsupportedQuantizationError,
)
from llmcore.model_loader import LoadedModel, load_model
from llmcore.model_runner import ModelRunner, SequenceChunk, greedy_generate
from llmcore.registry import supported_architectures

__version__ = "0.1.0"

__all__ = [
    "ContextLengthExceededError",
    "CorruptModelFileError",
    "InvalidRequestError",
    "LLMCoreError",
    "LoadedModel",
    "ModelConfig",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelRunner",
    "SequenceChunk",
    "UnsupportedArchitectureError",
    "UnsupportedQuantizationError",
    "__version__",
    "greedy_generate",
    "load_model",
    "supported_architectures",
]
