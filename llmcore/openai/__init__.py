"""The OpenAI service: transport-agnostic, msgspec Structs in, Structs or chunk
streams out. Transports call `OpenAIService.handle(ServiceRequest)`; in-process
callers use `create_chat_completion` / `create_completion`.

Invariant: nothing here opens a socket or imports an HTTP library.
"""

from __future__ import annotations

from llmcore.openai.interface import (
    ServedModel,
    ServiceRequest,
    ServiceResponse,
    ServiceStream,
    default_name,
)
from llmcore.openai.options import ServiceOptions
from llmcore.openai.service import OpenAIService

__all__ = [
    "OpenAIService",
    "ServedModel",
    "ServiceOptions",
    "ServiceRequest",
    "ServiceResponse",
    "ServiceStream",
    "default_name",
]
