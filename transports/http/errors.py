"""The answers the transport gives by itself (400, 401, 403, 408, 413, 431, 500,
503, 505)
and their body: OpenAI's error shape {"error": {"message", "type", "param": null,
"code": null}}, or, under Anthropic's paths (/v1/messages...), Anthropic's
{"type": "error", "error": {"type", "message"}}. Invariant: every error the
transport writes goes through `error_json`, so clients see one shape whether the
transport or the service spoke.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    413: "invalid_request_error",
    408: "invalid_request_error",
    431: "invalid_request_error",
    500: "internal_error",
    503: "service_unavailable",
    505: "invalid_request_error",
}

_ANTHROPIC_PREFIX = "/v1/messages"  # the service answers these in Anthropic's shape
_ANTHROPIC_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    500: "api_error",
    503: "api_error",
}

_encoder = msgspec.json.Encoder()


def error_json(status: int, message: str, path: str | None = None) -> bytes:
    """The error JSON for a transport-level failure: OpenAI's, or Anthropic's when
    `path` is one of Anthropic's routes."""
    if path is not None and (path + "/").startswith(_ANTHROPIC_PREFIX + "/"):
        kind = _ANTHROPIC_TYPES.get(status, "invalid_request_error")
        return _encoder.encode({"type": "error", "error": {"type": kind, "message": message}})
    error = {
        "message": message,
        "type": _ERROR_TYPES.get(status, "invalid_request_error"),
        "param": None,
        "code": None,
    }
    return _encoder.encode({"error": error})


@dataclass(slots=True)
class EarlyResponse:
    """A response decided by the transport before (or instead of) the service."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"
    close: bool = False  # the connection cannot be reused afterwards

    @classmethod
    def error(
        cls, status: int, message: str, *, close: bool = False, path: str | None = None
    ) -> EarlyResponse:
        """An error answer, in the error shape of `path`'s API (see `error_json`)."""
        return cls(status, error_json(status, message, path), close=close)


def body_too_large(limit: int, path: str | None = None) -> EarlyResponse:
    """413, and the connection closes: the rest of the body is never read."""
    return EarlyResponse.error(
        413, f"Request body too large: the limit is {limit} bytes.", close=True, path=path
    )
