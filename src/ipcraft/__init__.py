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

from ._channel import Channel as Channel
from ._channel import Listener as Listener
from ._channel import Queue as Queue
from ._connect import connect as connect
from ._connect import listen as listen
from ._connect import pipe as pipe
from ._connect import queue as queue
from ._endpoint import Endpoint as Endpoint
from ._peer import Peer as Peer
from ._relay import relay as relay
from ._version import __version__ as __version__
from .errors import (
    AuthenticationError as AuthenticationError,
)
from .errors import (
    BufferTooSmall as BufferTooSmall,
)
from .errors import (
    Busy as Busy,
)
from .errors import (
    ChannelClosed as ChannelClosed,
)
from .errors import (
    HandleClosed as HandleClosed,
)
from .errors import (
    InvalidEndpoint as InvalidEndpoint,
)
from .errors import (
    IPCError as IPCError,
)
from .errors import (
    LimitExceeded as LimitExceeded,
)
from .errors import (
    MessageTooLarge as MessageTooLarge,
)
from .errors import (
    OwnerDied as OwnerDied,
)
from .errors import (
    PeerVanished as PeerVanished,
)
from .errors import (
    ProtocolError as ProtocolError,
)
from .errors import (
    Timeout as Timeout,
)
from .serializers import JSON as JSON
from .serializers import MSGPACK as MSGPACK
from .serializers import PICKLE as PICKLE
from .serializers import RAW as RAW
from .serializers import Serializer as Serializer

__all__ = (
    "connect", "listen", "queue", "pipe", "relay",
    "Channel", "Listener", "Queue", "Endpoint", "Peer",
    "Serializer", "RAW", "JSON", "MSGPACK", "PICKLE",
    "IPCError", "ChannelClosed", "PeerVanished", "HandleClosed", "Timeout", "Busy", "MessageTooLarge",
    "BufferTooSmall", "OwnerDied", "ProtocolError", "AuthenticationError", "InvalidEndpoint", "LimitExceeded",
    "__version__",
)


def _fixup_module_metadata() -> None:
    """Make tracebacks, reprs and pickles say ipcraft.Channel, not ipcraft._channel.Channel (trio)."""
    for name in ("Channel", "Listener", "Queue", "Endpoint", "Peer", "connect", "listen", "queue", "pipe",
                 "relay"):
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("ipcraft._"):
            obj.__module__ = __name__


_fixup_module_metadata()
