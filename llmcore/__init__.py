"""llmcore: serve language models behind the OpenAI protocol, in pure asyncio.

The public in-process API. Nothing here imports sockets, HTTP or CuPy.
"""

from __future__ import annotations

from llmcore.chat_template import ChatTemplate
from llmcore.client import Client, SyncClient
from llmcore.engine.async_engine import AsyncEngine
from llmcore.engine.config import EngineConfig
from llmcore.engine.core import EngineStatistics
from llmcore.engine.core_client import ProcessEngine
from llmcore.engine.protocol import Engine
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
from llmcore.llm import LLM
from llmcore.model_config import ModelConfig
from llmcore.model_loader import LoadedModel, load_model
from llmcore.model_runner import ModelRunner, SequenceChunk, greedy_generate
from llmcore.openai import (
    OpenAIService,
    ServedModel,
    ServiceRequest,
    ServiceResponse,
    ServiceStream,
)
from llmcore.outputs import CompletionOutput, Logprob, RequestOutput
from llmcore.pooling import PoolingOutput, PoolingParams
from llmcore.registry import supported_architectures
from llmcore.sampling_params import SamplingParams
from llmcore.structured_outputs import StructuredOutputsParams
from llmcore.tokenization.detokenizer import IncrementalDetokenizer
from llmcore.tokenization.tokenizer import Tokenizer, load_tokenizer

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "AsyncEngine",
    "ChatTemplate",
    "Client",
    "CompletionOutput",
    "ContextLengthExceededError",
    "CorruptModelFileError",
    "Engine",
    "EngineConfig",
    "EngineStatistics",
    "IncrementalDetokenizer",
    "InvalidRequestError",
    "LLMCoreError",
    "LoadedModel",
    "Logprob",
    "ModelConfig",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelRunner",
    "OpenAIService",
    "PoolingOutput",
    "PoolingParams",
    "ProcessEngine",
    "RequestOutput",
    "SamplingParams",
    "SequenceChunk",
    "ServedModel",
    "ServiceRequest",
    "ServiceResponse",
    "ServiceStream",
    "StructuredOutputsParams",
    "SyncClient",
    "Tokenizer",
    "UnsupportedArchitectureError",
    "UnsupportedQuantizationError",
    "__version__",
    "greedy_generate",
    "load_model",
    "load_tokenizer",
    "supported_architectures",
]
