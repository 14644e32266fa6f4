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


class UnknownParserError(LLMCoreError):
    """A tool-call or reasoning parser was asked for by a name nobody registered (a
    start-up error: the message lists the known names)."""

    status = 500
    type = "configuration_error"


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


# ---- the service and its transports (statuses other than 400 and 503-dead) ----------------


class AuthenticationError(LLMCoreError):
    """The request carries no valid API key (HTTP 401)."""

    status = 401
    type = "invalid_request_error"
    code: str | None = "invalid_api_key"


class NotFoundError(LLMCoreError):
    """No such route, or no such served model (HTTP 404)."""

    status = 404
    type = "invalid_request_error"
    code: str | None = "not_found"

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = "not_found"
    ) -> None:
        super().__init__(message, param=param)
        self.code = code


class MethodNotAllowedError(LLMCoreError):
    """A known route asked with a method it does not serve (HTTP 405); `allowed`
    lists the methods it does serve (the `Allow` header)."""

    status = 405
    type = "invalid_request_error"
    code: str | None = "method_not_allowed"

    def __init__(self, message: str, *, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed


class PayloadTooLargeError(LLMCoreError):
    """The request body exceeds the configured cap (HTTP 413)."""

    status = 413
    type = "invalid_request_error"
    code: str | None = "payload_too_large"


class UnsupportedMediaTypeError(LLMCoreError):
    """A body route got a body that is not `application/json` (HTTP 415)."""

    status = 415
    type = "invalid_request_error"
    code: str | None = "unsupported_media_type"


class OverloadedError(LLMCoreError):
    """Too much work queued: try again after `retry_after` seconds (HTTP 503, or 429
    when a transport rate-limits a client); transports send a `Retry-After` header."""

    status = 503
    type = "service_unavailable"
    code: str | None = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, status: int = 503) -> None:
        super().__init__(message)
        if status not in (429, 503):
            raise ValueError(f"OverloadedError status must be 429 or 503, not {status}")
        self.retry_after = retry_after
        self.status = status
