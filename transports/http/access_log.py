"""The access log: one INFO line per request on logger "llmcore.http" with the
method, path, status, duration and request id (and, on a Unix socket, the peer's
uid). Invariant: a request that got no complete response is logged once too, with
the status sent (or 499 when none was) and the reason it ended early.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("llmcore.http")

NO_RESPONSE = 499  # nginx's "client closed request": nothing was sent


def log_access(
    method: str,
    path: str,
    status: int | None,
    started: float,
    request_id: str,
    *,
    interrupted: str | None = None,
    uid: int | None = None,
) -> None:
    """Log one request; `started` is a time.monotonic() reading; `uid` is the peer's
    on a Unix socket."""
    if not logger.isEnabledFor(logging.INFO):
        return
    duration_ms = (time.monotonic() - started) * 1000.0
    peer = "" if uid is None else f" uid={uid}"
    note = f" ({interrupted})" if interrupted else ""
    logger.info(
        '"%s %s" %d %.1fms request_id=%s%s%s',
        method,
        path,
        NO_RESPONSE if status is None else status,
        duration_ms,
        request_id,
        peer,
        note,
        extra={
            "request_id": request_id,
            "status": status,
            "duration_ms": duration_ms,
            "uid": uid,
        },
    )
