"""The HTTP/1.1 transport: `serve(service, HTTPConfig(...))` or `HTTPServer`.

The public face of the HTTP transport: a raw h11 HTTP/1.1 server over anyio
(TCP, TLS, Unix socket) that hands requests to llmcore's OpenAI service. Invariant:
everything a caller needs is importable from here; the modules behind it may move.
"""

from __future__ import annotations

from transports.http.config import HTTPConfig
from transports.http.listeners import AddressInUseError, Listeners, open_listeners
from transports.http.server import HTTPServer, ServerStatistics, run, serve
from transports.service import (
    RequestFactory,
    Service,
    ServiceResponseLike,
    ServiceStreamLike,
    TransportRequest,
)

__all__ = [
    "AddressInUseError",
    "HTTPConfig",
    "HTTPServer",
    "Listeners",
    "RequestFactory",
    "ServerStatistics",
    "Service",
    "ServiceResponseLike",
    "ServiceStreamLike",
    "TransportRequest",
    "open_listeners",
    "run",
    "serve",
]
