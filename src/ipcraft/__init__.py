"""ipcraft: every classic Unix IPC mechanism behind one API, and the fastest way for two Python
processes on one machine to talk.

Layers (send flows down, receive flows up; imports only point down)::

    ipcraft.connect / listen / queue / pipe     facade (this file), mirrored by ipcraft.aio
           |  URL -> Endpoint                                      _endpoint.py
           v
    Channel / Listener / Queue                                     _channel.py, _connect.py
           |  object <-> bytes      serializers                    serializers.py
           |  bytes  <-> frames     byte streams only, sans-I/O    _framing.py, _auth.py
           v
    transports: one adapter per scheme                             _transports/*.py
           v
    primitives: one faithful wrapper per kernel facility           primitives/*.py
           v
    the kernel: os/socket/mmap/fcntl/signal, posix_ipc, sysv_ipc, ipcraft._native (the only C)
"""

from __future__ import annotations

from ._channel import Channel as Channel, Listener as Listener, Queue as Queue
from ._connect import connect as connect, listen as listen, pipe as pipe, queue as queue
from ._endpoint import Endpoint as Endpoint
from ._version import __version__ as __version__
from .errors import (
    AuthenticationError as AuthenticationError,
    BufferTooSmall as BufferTooSmall,
    Busy as Busy,
    ChannelClosed as ChannelClosed,
    HandleClosed as HandleClosed,
    InvalidEndpoint as InvalidEndpoint,
    IPCError as IPCError,
    LimitExceeded as LimitExceeded,
    MessageTooLarge as MessageTooLarge,
    OwnerDied as OwnerDied,
    PeerVanished as PeerVanished,
    ProtocolError as ProtocolError,
    Timeout as Timeout,
)
from ._peer import Peer as Peer
from .serializers import JSON as JSON, MSGPACK as MSGPACK, PICKLE as PICKLE, RAW as RAW, Serializer as Serializer

__all__ = (
    "connect", "listen", "queue", "pipe",
    "Channel", "Listener", "Queue", "Endpoint", "Peer",
    "Serializer", "RAW", "JSON", "MSGPACK", "PICKLE",
    "IPCError", "ChannelClosed", "PeerVanished", "HandleClosed", "Timeout", "Busy", "MessageTooLarge",
    "BufferTooSmall", "OwnerDied", "ProtocolError", "AuthenticationError", "InvalidEndpoint", "LimitExceeded",
    "__version__",
)


def _fixup_module_metadata() -> None:
    """Make tracebacks, reprs and pickles say ipcraft.Channel, not ipcraft._channel.Channel (trio)."""
    for name in ("Channel", "Listener", "Queue", "Endpoint", "Peer", "connect", "listen", "queue", "pipe"):
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("ipcraft._"):
            obj.__module__ = __name__


_fixup_module_metadata()
