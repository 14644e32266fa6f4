"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Invariant: every exception maps to exactly one response: an `LLMCoreError` keeps its
own status, type and param; a msgspec decode or validation error is a 400 with
msgspec's message (which names the field's path); anything else is a 500 with a
generic message, and is logged with its traceback (never shown to the client).
"""

from __future__ import annotations

import logging
import re

import msgspec

from llmcore.errors import (
    ContextLengthExceededError,
    LLMCoreError,
    MethodNotAllowedError,
    OverloadedError,
)
from llmcore.openai.protocol import ErrorInfo, ErrorResponse

log = logging.getLogger("llmcore.openai")

_ENCODER = msgspec.json.Encoder()
# msgspec names the failing field as "... - at `$.messages[0].content`"
_PATH = re.compile(r"at `\$\.([A-Za-z_][A-Za-z0-9_]*)")


def error_info(exc: BaseException) -> tuple[int, ErrorInfo]:
    """The HTTP status and OpenAI error object for `exc`."""
    if isinstance(exc, LLMCoreError):
        return exc.status, ErrorInfo(exc.message, exc.type, exc.param, _code(exc))
    if isinstance(exc, msgspec.ValidationError | msgspec.DecodeError):
        message = str(exc)
        match = _PATH.search(message)
        param = match.group(1) if match else None
        return 400, ErrorInfo(message, "invalid_request_error", param, None)
    log.error("unexpected error while serving a request", exc_info=exc)
    return 500, ErrorInfo("internal server error", "internal_error", None, None)


def error_body(exc: BaseException) -> tuple[int, bytes]:
    status, info = error_info(exc)
    return status, _ENCODER.encode(ErrorResponse(info))


def error_headers(exc: BaseException) -> list[tuple[str, str]]:
    """Extra headers an error calls for: `retry-after` (503/429), `allow` (405)."""
    if isinstance(exc, OverloadedError):
        return [("retry-after", str(exc.retry_after))]
    if isinstance(exc, MethodNotAllowedError):
        return [("allow", ", ".join(exc.allowed))]
    return []


def _code(exc: LLMCoreError) -> str | None:
    if isinstance(exc, ContextLengthExceededError):
        return "context_length_exceeded"
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) else None
