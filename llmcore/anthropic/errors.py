"""Errors in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`.

Invariant: an exception gets the status and message the OpenAI routes give it
(`llmcore.openai.errors.error_info`: the same 400s, the same logged 500s), with
Anthropic's error type for that status; only overload moves, from 503 to
Anthropic's 529 `overloaded_error` (429 stays `rate_limit_error`), keeping its
`retry-after` header.
"""

from __future__ import annotations

import msgspec

from llmcore.anthropic.responses import ErrorDetail, ErrorEvent
from llmcore.errors import OverloadedError
from llmcore.openai.errors import error_headers, error_info

_ENCODER = msgspec.json.Encoder()
OVERLOADED = 529  # Anthropic's status for an overloaded service
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",  # the engine is dead: not an overload to wait out
    OVERLOADED: "overloaded_error",
}


def error_event(status: int, message: str) -> ErrorEvent:
    fallback = "invalid_request_error" if status < 500 else "api_error"
    return ErrorEvent(ErrorDetail(ERROR_TYPES.get(status, fallback), message))


def exception_event(exc: BaseException) -> tuple[int, ErrorEvent]:
    """The status and error body of `exc` on an Anthropic route."""
    status, info = error_info(exc)
    if isinstance(exc, OverloadedError) and status == 503:
        status = OVERLOADED
    return status, error_event(status, info.message)


def anthropic_error(exc: BaseException) -> tuple[int, bytes, list[tuple[str, str]]]:
    """(status, body, extra headers) of `exc` on an Anthropic route."""
    status, event = exception_event(exc)
    return status, _ENCODER.encode(event), error_headers(exc)
