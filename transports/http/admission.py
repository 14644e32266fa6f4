"""The decisions made from a request's head alone, before any body byte is read:
header limits (431), CORS preflight (204/403), API keys (401), the declared body
size (413) and the request id. Invariant: a request whose head is refused never
reaches the service, and its body is never read.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from transports.http.auth import APIKeyAuth
from transports.http.config import HTTPConfig
from transports.http.cors import CORSPolicy
from transports.http.errors import EarlyResponse, body_too_large

REQUEST_ID_HEADER = "x-request-id"
_MAX_REQUEST_ID_LENGTH = 128


@dataclass(slots=True)
class RequestHead:
    """An h11 Request as text: header names lower-case, values decoded as latin-1
    (so each character is one byte of the wire)."""

    method: str
    path: str  # without the query string
    headers: list[tuple[str, str]]

    @classmethod
    def from_h11(cls, request: h11.Request, root_path: str = "") -> RequestHead:
        """The head of `request`; a path under `root_path` ("/llm/v1/models") is
        served as the path below it ("/v1/models"), as uvicorn's root_path does."""
        target = request.target.decode("latin-1")
        if not target.startswith("/") and "://" in target:  # absolute-form
            target = urlsplit(target).path or "/"
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers]
        path = target.partition("?")[0]
        if root_path and (path == root_path or path.startswith(root_path + "/")):
            path = path[len(root_path) :] or "/"
        return cls(request.method.decode("latin-1"), path, headers)

    def get(self, name: str) -> str | None:
        """The first value of header `name` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class Admission:
    """What the head decided: the request id, the headers every response to this
    request carries, and the early response when the request is refused."""

    request_id: str
    response_headers: list[tuple[str, str]]
    refusal: EarlyResponse | None = None


class RequestAdmission:
    """Applies the configured limits and security options to a request head."""

    __slots__ = ("_auth", "_config", "_cors")

    def __init__(self, config: HTTPConfig) -> None:
        self._config = config
        expose = (REQUEST_ID_HEADER,) if config.enable_request_id_headers else ()
        self._cors = CORSPolicy(
            config.allowed_origins,
            config.allowed_methods,
            config.allowed_headers,
            allow_credentials=config.allow_credentials,
            max_age=config.cors_max_age,
            expose_headers=expose,
        )
        self._auth = APIKeyAuth(config.api_keys, config.public_paths)

    def admit(self, head: RequestHead) -> Admission:
        request_id = _request_id(head.get(REQUEST_ID_HEADER))
        headers = self._cors.response_headers(head.get("origin"))
        if self._config.enable_request_id_headers:
            headers.append((REQUEST_ID_HEADER, request_id))
        return Admission(request_id, headers, self._refusal(head))

    def _refusal(self, head: RequestHead) -> EarlyResponse | None:
        return (
            self._check_header_limits(head)
            or self._check_preflight(head)
            or self._auth.check(head.path, head.get("authorization"), head.get("x-api-key"))
            or self._check_content_length(head)
        )

    def _check_header_limits(self, head: RequestHead) -> EarlyResponse | None:
        if len(head.headers) > self._config.max_header_count:
            return EarlyResponse.error(431, "Too many request headers.", close=True)
        size = sum(len(name) + len(value) + 4 for name, value in head.headers)
        if size > self._config.max_header_size:
            return EarlyResponse.error(431, "Request headers too large.", close=True)
        return None

    def _check_preflight(self, head: RequestHead) -> EarlyResponse | None:
        origin = head.get("origin")
        request_method = head.get("access-control-request-method")
        if origin is None or request_method is None or head.method != "OPTIONS":
            return None
        return self._cors.preflight(
            origin, request_method, head.get("access-control-request-headers")
        )

    def _check_content_length(self, head: RequestHead) -> EarlyResponse | None:
        declared = head.get("content-length")
        if declared is not None and int(declared) > self._config.max_body_size:
            return body_too_large(self._config.max_body_size, head.path)
        return None


def _request_id(offered: str | None) -> str:
    """The client's X-Request-Id when it is short visible ASCII, else a new uuid4 hex."""
    if offered and len(offered) <= _MAX_REQUEST_ID_LENGTH and _visible_ascii(offered):
        return offered
    return uuid.uuid4().hex


def _visible_ascii(text: str) -> bool:
    return all("!" <= ch <= "~" for ch in text)
