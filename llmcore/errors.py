"""The one error hierarchy of llmcore.

Every error a user can cause or meet derives from `LLMCoreError` and carries the
HTTP status a transport should answer with and the OpenAI error `type`. Code raises
these at the edges (loading, request validation); internal invariants use `assert`.
"""

from __future__ import annotations


class LLMCoreError(Exception):
    """Base class: `status` is the HTTP status, `type` OpenAI's error type."""

    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# ---- model loading (raised before any request exists) --------------------------------


class ModelLoadError(LLMCoreError):
    """A model could not be loaded; the message says what to do about it."""

    status = 500
    type = "model_load_error"


class ModelNotFoundError(ModelLoadError):
    """The model path does not exist, or the default model package is missing."""


class UnsupportedArchitectureError(ModelLoadError):
    """The model's architecture has no plugin; the message lists the supported ones."""


class UnsupportedQuantizationError(ModelLoadError):
    """A GGUF tensor uses a quantization type we cannot dequantize."""


class CorruptModelFileError(ModelLoadError):
    """A weight file is truncated, not of the format it claims, or inconsistent."""


# ---- requests ---------------------------------------------------------------------------


class InvalidRequestError(LLMCoreError):
    """A request is malformed or asks for something impossible (HTTP 400)."""

    status = 400
    type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    """Prompt plus requested tokens do not fit in the model's context."""


class EngineDeadError(LLMCoreError):
    """The engine's step loop has died; nothing can be served (HTTP 503)."""

    status = 503
    type = "service_unavailable"


class NoChatTemplateError(InvalidRequestError):
    """A chat request reached a model that has no chat template (HTTP 400)."""


class ChatTemplateError(InvalidRequestError):
    """The chat template refused the conversation (`raise_exception`) or failed to
    render it (HTTP 400): the message says which and why."""
