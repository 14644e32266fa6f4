"""Response heads as h11 events: the status line's reason phrase, the headers
every response carries (date, content type, length, `connection: close`), and
the filtering of a service's headers.

Invariant: framing belongs to the transport: a service's own headers can never
set Content-Length, Transfer-Encoding, Connection or Keep-Alive.
"""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import formatdate
from functools import lru_cache
from http import HTTPStatus
from time import time

import h11

_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


def response_headers(
    content_type: str,
    extra: Iterable[tuple[str, str]],
    *,
    length: int | None,
    close: bool,
) -> list[tuple[bytes, bytes]]:
    """Headers of a response: date, content type and length (None: streamed), the
    service's and transport's extras, and `connection: close` when closing."""
    headers = [(b"date", _http_date(int(time())))]
    if content_type:
        headers.append((b"content-type", content_type.encode("latin-1")))
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    for name, value in extra:
        if name.lower() not in _HOP_BY_HOP:
            headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    if close:
        headers.append((b"connection", b"close"))
    return headers


def response_head(status: int, headers: list[tuple[bytes, bytes]]) -> h11.Response:
    """An h11 Response with the standard reason phrase."""
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    return h11.Response(status_code=status, headers=headers, reason=reason)


def complete_response(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> list[h11.Event]:
    """The events of a whole response: head, body (if any), end."""
    events: list[h11.Event] = [response_head(status, headers)]
    if body:
        events.append(h11.Data(data=body))
    events.append(h11.EndOfMessage())
    return events


@lru_cache(maxsize=2)
def _http_date(second: int) -> bytes:
    return formatdate(second, usegmt=True).encode()
