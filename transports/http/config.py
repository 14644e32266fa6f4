"""HTTPConfig: every listening address, limit, timeout and security option of the
HTTP transport in one frozen value. Invariant: a constructed HTTPConfig is valid
(positive limits, TLS files given together, no contradictory CORS settings), so
the rest of the transport never re-checks it; a uid allow-list is only accepted
where the platform can read a Unix-socket peer's uid.
"""

from __future__ import annotations

import ssl
import sys
from dataclasses import dataclass

from transports.http.peers import PEERCRED_SUPPORTED

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class HTTPConfig:
    """Configuration of the h11 HTTP/1.1 server.

    Addresses: TCP `host`/`port` (port 0 picks a free port), or a Unix domain socket
    `uds` (then TCP is not opened) created with `uds_mode`; `uds_allowed_uids`, when
    not empty, lets in only peers with those uids (SO_PEERCRED; others get 403).
    Timeouts are in seconds; sizes in bytes.
    """

    # -- where to listen
    host: str = "127.0.0.1"
    port: int = 8000
    uds: str | None = None
    uds_mode: int = 0o600
    uds_allowed_uids: tuple[int, ...] = ()  # empty: anyone who can open the socket
    backlog: int = 1024
    reuse_port: bool = False  # SO_REUSEPORT: several server processes share host:port

    # -- TLS (both files or neither)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = None
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: int = ssl.CERT_NONE  # CERT_OPTIONAL/CERT_REQUIRED: client certificates
    ssl_ciphers: str | None = None  # OpenSSL cipher list (TLS 1.2 and below)
    tls_handshake_timeout: float = 10.0

    # -- the path prefix a proxy mounts the server under ("/llm"; "" for none): a
    # request path that starts with it is served as if it did not
    root_path: str = ""

    # -- limits
    max_body_size: int = 32 * MiB
    max_header_count: int = 100
    max_header_size: int = 16 * 1024
    max_connections: int | None = 1024
    retry_after: int = 1

    # -- timeouts
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive_timeout: float = 5.0
    send_timeout: float = 60.0

    # -- security
    api_keys: tuple[str, ...] = ()
    public_paths: tuple[str, ...] = ("/health", "/ping", "/version")
    allowed_origins: tuple[str, ...] = ()
    allowed_methods: tuple[str, ...] = ("GET", "POST", "OPTIONS")
    allowed_headers: tuple[str, ...] = (
        "authorization", "content-type", "x-request-id", "x-api-key", "anthropic-version"
    )  # fmt: skip
    allow_credentials: bool = False
    cors_max_age: int = 600
    enable_request_id_headers: bool = False

    # -- logging
    access_log: bool = True

    def __post_init__(self) -> None:
        _check_positive(self, "max_body_size", "max_header_count", "max_header_size", "backlog")
        _check_positive(self, "header_timeout", "body_timeout", "keep_alive_timeout")
        _check_positive(self, "send_timeout", "tls_handshake_timeout")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1 (or None for no limit)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, not {self.port}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile must be given together")
        if self.uds_mode & ~0o777:
            raise ValueError(f"uds_mode must be a permission mode, not {oct(self.uds_mode)}")
        _check_uds_allowed_uids(self)
        if any(isinstance(key, str) and not key for key in self.api_keys):
            raise ValueError("api_keys must not contain an empty key")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path == "/"):
            raise ValueError(f"root_path must start with '/' (e.g. /llm), not {self.root_path!r}")
        if self.ssl_cert_reqs not in (ssl.CERT_NONE, ssl.CERT_OPTIONAL, ssl.CERT_REQUIRED):
            raise ValueError(f"ssl_cert_reqs must be 0, 1 or 2, not {self.ssl_cert_reqs!r}")
        if self.ssl_cert_reqs != ssl.CERT_NONE and self.ssl_ca_certs is None:
            raise ValueError("ssl_cert_reqs needs ssl_ca_certs to check client certificates")
        if self.allow_credentials and "*" in self.allowed_origins:
            raise ValueError("allow_credentials cannot be combined with allowed_origins '*'")

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None


def _check_positive(config: HTTPConfig, *names: str) -> None:
    for name in names:
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be positive")


def _check_uds_allowed_uids(config: HTTPConfig) -> None:
    if not config.uds_allowed_uids:
        return
    if config.uds is None:
        raise ValueError("uds_allowed_uids needs a Unix socket (uds)")
    if not PEERCRED_SUPPORTED:
        raise ValueError(
            f"uds_allowed_uids needs SO_PEERCRED to read a peer's uid, "
            f"which this platform ({sys.platform}) lacks"
        )
    for uid in config.uds_allowed_uids:
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid < 2**32:
            raise ValueError(f"uds_allowed_uids must hold uids (integers >= 0), not {uid!r}")
