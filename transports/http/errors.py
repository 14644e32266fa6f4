"""The answers the transport gives by itself (400, 401, 403, 408, 413, 431, 500,
503, 505)
and their body: OpenAI's error shape {"error": {"message", "type", "param": null,
"code": null}}. Invariant: every error the transport writes goes through
`error_json`, so clients see one shape whether the transport or the service spoke.
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

_encoder = msgspec.json.Encoder()


def error_json(status: int, message: str) -> bytes:
    """OpenAI's error JSON for a transport-level failure."""
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
    def error(cls, status: int, message: str, *, close: bool = False) -> EarlyResponse:
        return cls(status, error_json(status, message), close=close)


def body_too_large(limit: int) -> EarlyResponse:
    """413, and the connection closes: the rest of the body is never read."""
    return EarlyResponse.error(
        413, f"Request body too large: the limit is {limit} bytes.", close=True
    )
