"""ipcraft: every classic Unix IPC mechanism behind one API, and the fastest way for two Python
processes on one machine to talk.

Layers, top to bottom (send flows down, receive flows up).  A module imports only modules of its
own layer or of the layers below it, and no import cycle exists anywhere under ``ipcraft``; the
layering test (``tests/test_exports.py``) reads this table and enforces it file by file.  Names are
modules relative to ``ipcraft`` (``ipcraft`` itself is this file); ``x.*`` is every module under ``x``;
an exact name wins over a pattern::

    command     __main__ _cli _cli.* _bench _bench.* _tour
    checks      testing _child _conformance _conformance.*
    facade      ipcraft aio _aio_pubsub inventory limits
    channels    _connect _channel _zerocopy _pubsub _relay
    transports  _transports.*
    seam        _transports _transports._contract _transports._framed _transports._io _transports._sockets
    rings       _rings _rings.*
    primitives  primitives primitives.*
    values      _endpoint serializers _framing _auth _names _unix_diag
    foundation  errors _errors _wait _resource _peer _version _native

* **command**: the ``ipcraft`` command (click and rich are imported only here), its benchmark and
  its tour.
* **checks**: ``ipcraft.testing`` (forked children with timeouts, unique names) and the conformance
  suite every scheme passes.
* **facade**: ``connect``/``listen``/``queue``/``pipe``/``publish``/``subscribe`` (this file), mirrored
  by ``ipcraft.aio`` (the pub/sub half in ``_aio_pubsub``); ``ipcraft.inventory`` and ``ipcraft.limits``.
* **channels**: Channel, Queue and Listener: serializers on top of one message port per channel, one
  send path and one receive path; ``send_view``/``recv_view``; ``relay`` between two of them.
  Publisher and Subscriber (``_pubsub``): the one-to-many pair, over a publisher port and a
  subscriber port.
* **transports**: one module per scheme (unix, tcp, shm, fifo, mq, sysvmq, dgram, ring, pipe, bcast,
  zeromq).
* **seam**: the typed contract between channels and transports (ByteStream, MessagePort, Message, the
  capability protocols), the framing adapter, fd byte streams, and the socket helpers every socket
  scheme shares (addresses, handshakes as resumable steps, concurrent listeners).
* **rings**: the shared-memory ring engines over ``_native`` (SPSC for shm://, MPMC for ring://
  and file://, the broadcast ring for bcast://).
* **primitives**: one faithful wrapper per kernel facility, usable alone.
* **values**: sans-I/O values and formats: endpoints, serializers, frames, the authkey handshake's
  messages, name rules.
* **foundation**: what every layer may use: errors and their translation, deadlines and fd waits,
  the handle lifecycle, ``Peer``, and ``ipcraft._native`` (the only C).
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
from ._pubsub import Publisher as Publisher
from ._pubsub import Subscriber as Subscriber
from ._pubsub import publish as publish
from ._pubsub import subscribe as subscribe
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
    MessagesMissed as MessagesMissed,
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
    SubscriberEvicted as SubscriberEvicted,
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
    "connect", "listen", "queue", "pipe", "relay", "publish", "subscribe",
    "Channel", "Listener", "Queue", "Publisher", "Subscriber", "Endpoint", "Peer",
    "Serializer", "RAW", "JSON", "MSGPACK", "PICKLE",
    "IPCError", "ChannelClosed", "PeerVanished", "HandleClosed", "Timeout", "Busy", "MessageTooLarge",
    "BufferTooSmall", "OwnerDied", "ProtocolError", "AuthenticationError", "InvalidEndpoint", "LimitExceeded",
    "MessagesMissed", "SubscriberEvicted",
    "__version__",
)


def _fixup_module_metadata() -> None:
    """Make tracebacks, reprs and pickles say ipcraft.Channel, not ipcraft._channel.Channel (trio)."""
    for name in ("Channel", "Listener", "Queue", "Endpoint", "Peer", "connect", "listen", "queue", "pipe",
                 "relay", "Publisher", "Subscriber", "publish", "subscribe"):
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("ipcraft._"):
            obj.__module__ = __name__


_fixup_module_metadata()
