"""Which id a request runs under: the client's X-Request-Id header, else the body's
`request_id` (vLLM's extension), else the id the transport made up.

Invariant: the header wins over the body, as in vLLM; a header the transport does
not take (too long, not visible ASCII) counts as absent; the id chosen is the engine
request id (one per prompt, "-i" appended when a request has several) and appears
in the response id ("chatcmpl-<id>", "cmpl-<id>", "embd-<id>", ...).
"""

from __future__ import annotations

import uuid

from llmcore.errors import InvalidRequestError

MAX_REQUEST_ID_CHARS = 256
MAX_HEADER_REQUEST_ID_CHARS = 128  # as the HTTP transport (transports/http/admission.py)


class HeaderRequestId(str):
    """A request id the client chose in its X-Request-Id header (`ServiceRequest`
    marks it so); a plain `str` is one the transport made up, which the body's
    `request_id` replaces."""

    __slots__ = ()


def resolve_request_id(transport_id: str, body_id: str | None) -> str:
    """The id a request runs under (see the module's invariant)."""
    if not body_id or isinstance(transport_id, HeaderRequestId):
        return str(transport_id)
    if len(body_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidRequestError(
            f"request_id: at most {MAX_REQUEST_ID_CHARS} characters, got {len(body_id)}",
            param="request_id",
        )
    return body_id


def transport_request_id(header: str | None) -> str:
    """The id a transport hands the service for a request whose X-Request-Id header
    is `header`: the header when it is short visible ASCII, else a new uuid4 hex (the
    HTTP transport decides the same way; it keeps its own copy, as it imports no
    llmcore module)."""
    visible = header is not None and all("!" <= ch <= "~" for ch in header)
    if header and visible and len(header) <= MAX_HEADER_REQUEST_ID_CHARS:
        return header
    return uuid.uuid4().hex
