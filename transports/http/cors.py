"""CORS: which origins, methods and request headers a browser may use, the
answer to a preflight, and the headers added to ordinary responses. Invariant: an
origin not configured (the default: none) never gets an Access-Control-Allow-*
header, and every response that depends on Origin says `Vary: Origin`.
"""

from __future__ import annotations

from collections.abc import Iterable

from transports.http.errors import EarlyResponse

WILDCARD = "*"


class CORSPolicy:
    """allowed_origins/methods/headers as configured; "*" allows any."""

    __slots__ = ("_credentials", "_expose", "_headers", "_max_age", "_methods", "_origins")

    def __init__(
        self,
        origins: Iterable[str],
        methods: Iterable[str],
        headers: Iterable[str],
        *,
        allow_credentials: bool = False,
        max_age: int = 600,
        expose_headers: Iterable[str] = (),
    ) -> None:
        self._origins = frozenset(origins)
        self._methods = tuple(m.upper() for m in methods)
        self._headers = tuple(h.lower() for h in headers)
        self._credentials = allow_credentials
        self._max_age = max_age
        self._expose = ", ".join(expose_headers)

    @property
    def enabled(self) -> bool:
        return bool(self._origins)

    def allows_origin(self, origin: str) -> bool:
        return WILDCARD in self._origins or origin in self._origins

    def preflight(
        self, origin: str, request_method: str, request_headers: str | None
    ) -> EarlyResponse:
        """204 with the allow headers, or 403 when the origin, method or a header is
        not allowed."""
        requested = _split_tokens(request_headers)
        if not self.allows_origin(origin):
            return _forbidden(f"CORS origin {origin!r} is not allowed.")
        if not self._allows_method(request_method.upper()):
            return _forbidden(f"CORS method {request_method!r} is not allowed.")
        refused = [h for h in requested if not self._allows_header(h)]
        if refused:
            return _forbidden(f"CORS request headers {refused} are not allowed.")
        headers = self.response_headers(origin)
        methods = ", ".join(self._methods) if WILDCARD not in self._methods else request_method
        allowed = ", ".join(requested) if WILDCARD in self._headers else ", ".join(self._headers)
        headers.append(("access-control-allow-methods", methods))
        if allowed:
            headers.append(("access-control-allow-headers", allowed))
        headers.append(("access-control-max-age", str(self._max_age)))
        return EarlyResponse(204, headers=headers, content_type="")

    def response_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """Headers for a response to a request that carried `origin`."""
        if not self.enabled:
            return []
        if origin is None or not self.allows_origin(origin):
            return [("vary", "Origin")]
        headers = [("access-control-allow-origin", origin), ("vary", "Origin")]
        if self._credentials:
            headers.append(("access-control-allow-credentials", "true"))
        if self._expose:
            headers.append(("access-control-expose-headers", self._expose))
        return headers

    def _allows_method(self, method: str) -> bool:
        return WILDCARD in self._methods or method in self._methods

    def _allows_header(self, header: str) -> bool:
        return WILDCARD in self._headers or header in self._headers


def _split_tokens(value: str | None) -> list[str]:
    if not value:
        return []
    return [token.strip().lower() for token in value.split(",") if token.strip()]


def _forbidden(message: str) -> EarlyResponse:
    response = EarlyResponse.error(403, message)
    response.headers.append(("vary", "Origin"))
    return response
