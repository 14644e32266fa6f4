"""API-key authentication: `Authorization: Bearer <key>`, or `x-api-key: <key>` (how
Anthropic's clients send it), checked against every configured key with
hmac.compare_digest. Invariant: with keys configured, only the public paths are
served without a matching key (either header may carry it), and the comparison
time does not depend on which key (if any) matched.
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

    def check(
        self, path: str, authorization: str | None, x_api_key: str | None = None
    ) -> EarlyResponse | None:
        """None when the request may pass, else the 401 to send (in the error shape
        of `path`'s API)."""
        if not self._keys or path in self._public_paths:
            return None
        tokens = [t for t in (_bearer_token(authorization), _stripped(x_api_key)) if t]
        matched = False
        for token in tokens:  # both, no early exit
            matched |= self._matches(token.encode("latin-1"))
        if matched:
            return None
        message = "Incorrect API key provided." if tokens else "Missing API key."
        response = EarlyResponse.error(401, message, path=path)
        response.headers.append(("www-authenticate", "Bearer"))
        return response

    def _matches(self, token: bytes) -> bool:
        matched = False
        for key in self._keys:  # every key, no early exit
            matched |= hmac.compare_digest(token, key)
        return matched


def _stripped(value: str | None) -> str | None:
    return (value.strip() or None) if value is not None else None


def _bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None
