"""The listening sockets: TCP on host:port (port 0 picks a free one) or a Unix
domain socket created with a restrictive mode, and their URLs. Invariant: a Unix
socket path is only ever replaced when no server answers on it, and it is removed
on close only if it is still the socket this server created.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import quote

import anyio
import anyio.to_thread
from anyio.abc import SocketAttribute, SocketListener

from transports.http.config import HTTPConfig

_PROBE_TIMEOUT = 1.0


class AddressInUseError(OSError):
    """Another live server holds the address (for a Unix socket: answers on the path)."""


@dataclass(slots=True)
class Listeners:
    """The bound listeners of one server and what clients use to reach them."""

    sockets: list[SocketListener]
    urls: list[str]
    port: int | None = None  # the bound TCP port
    uds_path: str | None = None
    _uds_inode: int | None = field(default=None, repr=False)

    async def aclose(self) -> None:
        """Close every listener (new connections are refused) and remove our socket file."""
        with anyio.CancelScope(shield=True):
            for listener in self.sockets:
                await listener.aclose()
        if self.uds_path is not None:
            _unlink_if_ours(self.uds_path, self._uds_inode)


async def open_listeners(config: HTTPConfig) -> Listeners:
    """Bind what `config` asks for: its Unix socket when `uds` is set, else TCP."""
    scheme = "https" if config.tls else "http"
    if config.uds is not None:
        return await _open_unix(config.uds, config.uds_mode, config.backlog, scheme)
    return await _open_tcp(config.host, config.port, config.backlog, scheme, config.reuse_port)


async def _open_tcp(
    host: str, port: int, backlog: int, scheme: str, reuse_port: bool = False
) -> Listeners:
    multi = await anyio.create_tcp_listener(
        local_host=host, local_port=port, backlog=backlog, reuse_port=reuse_port
    )
    sockets = [cast(SocketListener, listener) for listener in multi.listeners]
    bound = sockets[0].extra(SocketAttribute.local_port)
    shown = f"[{host}]" if ":" in host else host
    return Listeners(sockets, [f"{scheme}://{shown}:{bound}"], port=bound)


async def _open_unix(path: str, mode: int, backlog: int, scheme: str) -> Listeners:
    sock = await anyio.to_thread.run_sync(_bind_unix_socket, path, mode, backlog)
    inode = os.stat(path).st_ino
    listener = await SocketListener.from_socket(sock)
    url = f"{scheme}+unix://{quote(path, safe='')}"
    return Listeners([listener], [url], uds_path=path, _uds_inode=inode)


def _bind_unix_socket(path: str, mode: int, backlog: int) -> socket.socket:
    """A listening Unix socket at `path` whose file never has looser permissions
    than `mode` (bound under a 0o177 umask, then chmod-ed to `mode`)."""
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket file left by a dead server; refuse a live one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: a stale file
        return
    except FileNotFoundError:
        return
    except TimeoutError:
        pass  # a full backlog: a live server
    finally:
        probe.close()
    raise AddressInUseError(f"another server is listening on {path}")


def _unlink_if_ours(path: str, inode: int | None) -> None:
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
