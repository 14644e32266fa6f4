"""Who is on the other end of a Unix-socket connection: the peer's pid, uid and
gid read with SO_PEERCRED when the connection is accepted, and the decision of
HTTPConfig.uds_allowed_uids. Invariant: with a non-empty allow-list a connection is
let in only if its peer's uid was read and is on the list (it fails closed); with
an empty one every peer that could open the socket is let in.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from anyio.abc import AnyByteStream, SocketAttribute

PEERCRED_SUPPORTED = hasattr(socket, "SO_PEERCRED")  # Linux; not macOS or Windows
_UCRED = struct.Struct("iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid (unsigned)


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The process that connected, as the kernel saw it at connect() time."""

    pid: int
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"pid={self.pid} uid={self.uid} gid={self.gid}"


@dataclass(frozen=True, slots=True)
class PeerVerdict:
    """What to do with one accepted connection."""

    peer: PeerCredentials | None  # None: not a Unix socket, or unreadable
    refusal: str | None = None  # the 403 message when the peer is not let in


def check_peer(stream: AnyByteStream, allowed_uids: tuple[int, ...]) -> PeerVerdict:
    """Read the peer of `stream` and judge it against `allowed_uids` (empty: anyone)."""
    try:
        peer = read_peer_credentials(stream)
    except OSError as exc:
        if allowed_uids:
            return PeerVerdict(None, f"the peer's credentials could not be read: {exc}")
        return PeerVerdict(None)
    if not allowed_uids:
        return PeerVerdict(peer)
    if peer is None:
        return PeerVerdict(None, "the peer's credentials are unknown")
    if peer.uid not in allowed_uids:
        return PeerVerdict(peer, f"uid {peer.uid} may not use this socket")
    return PeerVerdict(peer)


def read_peer_credentials(stream: AnyByteStream) -> PeerCredentials | None:
    """SO_PEERCRED of a Unix-socket stream; None for any other stream, or where the
    platform lacks SO_PEERCRED. Raises OSError if the kernel refuses."""
    if not PEERCRED_SUPPORTED:
        return None
    sock: socket.socket | None = stream.extra(SocketAttribute.raw_socket, None)
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)
