"""Peer: what the kernel knows about the other end of a channel (a value shared by every layer)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    """What the kernel knows about the other end of a channel.

    pid, uid and gid come from SO_PEERCRED (Unix sockets, shm rendezvous); ``address`` is the socket
    address for TCP/UDP.  Fields the mechanism cannot tell are None.

    .. versionadded:: 0.1
    """

    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    address: object = None
