"""API-key authentication: `Authorization: Bearer <key>` checked against every
configured key with hmac.compare_digest. Invariant: with keys configured, only the
public paths are served without a matching key, and the comparison time does not
depend on which key (if any) matched.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from transports.http.errors import EarlyResponse


class APIKeyAuth:
    """Decides from the path and the Authorization header whether a request may pass."""

    __slots__ = ("_keys", "_public_paths")

    def __init__(self, api_keys: Iterable[str], public_paths: Iterable[str]) -> None:
        self._keys = [key.encode("utf-8") for key in api_keys]
        self._public_paths = frozenset(public_paths)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, path: str, authorization: str | None) -> EarlyResponse | None:
        """None when the request may pass, else the 401 to send."""
        if not self._keys or path in self._public_paths:
            return None
        token = _bearer_token(authorization)
        if token is not None and self._matches(token.encode("latin-1")):
            return None
        message = "Missing API key." if token is None else "Incorrect API key provided."
        response = EarlyResponse.error(401, message)
        response.headers.append(("www-authenticate", "Bearer"))
        return response

    def _matches(self, token: bytes) -> bool:
        matched = False
        for key in self._keys:  # every key, no early exit
            matched |= hmac.compare_digest(token, key)
        return matched


def _bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None
