"""The typed seam between a channel and its transports.

Every transport is a :class:`Transport` (the facts a channel reports and the lifecycle) and exactly
one of two data contracts:

* :class:`ByteStream` moves bytes without boundaries: ``send_all(parts, deadline)``,
  ``write_some(views)`` (never blocks), ``recv_into(buf, deadline, exact) -> n`` (0 at end of stream).
  unix://, tcp://, ipcraft.pipe().
* :class:`MessagePort` keeps boundaries: ``send_message(sid, payload, deadline, **extra)`` and
  ``recv_message(deadline, **extra) -> Message``.  A :class:`Message` carries its serializer id and
  the mechanism's metadata (``priority``, ``type``, the sender's ``address``) as fields, so the channel
  never parses bytes a port already understood.  unix+seqpacket://, unix+dgram://, udp://, mq://,
  sysvmq://, shm://, ring://, file://, fifo://.

The channel turns a byte stream into a message port with :class:`~._framed.FramedStream` (ipcraft's
frames on the stream), so it has one send path and one receive path.

Optional capabilities are small protocols checked once, with ``isinstance``, when a channel is made:

* :class:`FastPath`: ``fast_path() -> (try_send, try_recv)``, calls in C (or one primitive call) that
  finish the common case at once and return False/None for the general path to do the rest.
* :class:`FastBatches`: ``fast_batches() -> (try_send_many, try_recv_many)``, the same for many
  messages per call (Channel.send_many()/recv_many()): one cursor publication and one wake-up per
  batch in the shared-memory rings.
* :class:`FastRecvInto`: ``fast_recv_into() -> (try_recv_into, limit)``, Channel.recv_bytes_into()'s
  common case in C: one copy from the ring into the caller's buffer, None for the general path.
* :class:`BatchWriter` / :class:`BufferedReader`: ``send_messages(sid, payloads, deadline)`` writes a
  batch's frames together (one system call for small ones); ``take_buffered(out, limit, decode)`` decodes
  the whole frames one read already brought, without another system call (byte streams, fifo://).
* :class:`ZeroCopy`: ``reserve``/``commit``/``abort`` and ``peek``/``consume`` (Channel.send_view()
  and recv_view()), the verbs of the ring ports down to C.
* :class:`SendParts`: ``send_parts(sid, parts, deadline)``, one message from many parts copied once
  into shared memory (PICKLE's out-of-band buffers, Serializer.dumps_oob).
* :class:`NativeLends`: ``native_lends()``, the C ports behind ZeroCopy, so that recv_view()/send_view()
  finish the common case in C (``_native.Lender``).
* :class:`BoundEndpoint`: a listener that knows the address it is bound to (a port 0 resolved).

Deadlines are absolute ``time.monotonic()`` values or None (wait forever; see ``_wait``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from .._peer import Peer

if TYPE_CHECKING:
    from .._endpoint import Endpoint

#: The metadata of a message whose mechanism has none.
NO_META: Mapping[str, Any] = MappingProxyType({})

#: ``try_send(data, sid=0) -> bool``: sent at once, or False with nothing sent.
TrySend = Callable[..., bool]
#: ``try_recv() -> bytes | None``: a payload taken at once, or None with nothing taken.
TryRecv = Callable[[], "bytes | None"]

#: ``try_send_many(payloads, sid=0) -> int``: how many of the leading payloads were sent at once,
#: each whole (0 when none could be).
TrySendMany = Callable[..., int]
#: ``try_recv_many(max_messages, sid) -> list[bytes]``: payloads of serializer ``sid`` taken at once
#: (spinning briefly on an empty ring first); it stops before anything else.
TryRecvMany = Callable[..., "list[bytes]"]
#: ``try_recv_into(buffer, offset=0) -> int | None``: a payload copied into ``buffer`` at ``offset`` and
#: taken at once (its length), or None with nothing taken (empty, too large, does not fit, the end...).
TryRecvInto = Callable[..., "int | None"]


class Message(NamedTuple):
    """One message as a port receives it."""

    #: The wire id of the serializer that made ``payload`` (0: raw bytes).
    sid: int
    #: The message bytes; valid until the next receive on the same port.
    payload: memoryview
    #: What the mechanism tells about it: ``priority`` (mq://), ``type`` (sysvmq://), ``address``
    #: and credentials of the sender (datagrams); empty where there is nothing.
    meta: Mapping[str, Any] = NO_META


class Transport:
    """What every transport has: the facts a channel reports and the lifecycle.

    A transport is also a :class:`ByteStream` or a :class:`MessagePort`.
    """

    peer: Peer = Peer()
    #: True when the peer is authenticated, so a serializer that can run code may be decoded.
    authenticated: bool = False
    #: Largest frame (header included) one message may carry, None if unlimited.
    max_payload: int | None = None
    #: Where max_payload comes from, for error messages.
    limit_source: str = ""
    #: True for the queue handle that created (and will unlink) the named object.
    owner: bool = False
    #: The metadata of the last message received (see Message.meta); kept by the transport itself.
    last_meta: Mapping[str, Any] = NO_META

    def close(self) -> None:
        raise NotImplementedError

    def fileno(self) -> int:
        raise NotImplementedError

    def wait_readable(self, deadline: float | None) -> bool:
        """Whether a message (or end of stream) is ready, waiting until ``deadline``."""
        raise NotImplementedError

    def unlink(self) -> None:
        """Remove the named object now (queues); a no-op where nothing is named."""

    def extra(self) -> dict[str, Any]:
        """Transport-specific facts for Channel.extra (typed attributes, anyio style)."""
        return {}


@runtime_checkable
class ByteStream(Protocol):
    """Bytes without boundaries, over one fd."""

    #: True when write_some() may write part of a buffer without blocking (False for TLS, whose
    #: interrupted writes must be retried with the same buffer).
    splits_writes: bool

    def send_all(self, parts: Sequence[bytes | memoryview], deadline: float | None) -> None:
        """Write every byte of ``parts``.  A Timeout after part of them went out closes the stream
        (``Timeout.closed``), since a frame cannot be resumed in the middle."""

    def write_some(self, views: list[memoryview]) -> int:
        """Write a prefix of ``views`` without blocking; BlockingIOError when no byte fits yet."""

    def recv_into(self, buf: memoryview, deadline: float | None, exact: bool = False) -> int:
        """Read into ``buf``; 0 at end of stream.  ``exact`` with no deadline: fill it if possible."""

    def wait_readable(self, deadline: float | None) -> bool: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class MessagePort(Protocol):
    """Whole messages, each with its serializer id and metadata."""

    def send_message(self, sid: int, payload: memoryview, deadline: float | None, **extra: Any) -> None:
        """Send one message whole, or nothing (a Timeout leaves the port usable)."""

    def recv_message(self, deadline: float | None, **extra: Any) -> Message:
        """Receive one whole message."""

    def wait_readable(self, deadline: float | None) -> bool: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class FastPath(Protocol):
    """A transport that can finish the common send and receive without the general path."""

    def fast_path(self) -> tuple[TrySend, TryRecv]:
        """``(try_send(data, sid=0) -> bool, try_recv() -> bytes | None)``."""


@runtime_checkable
class FastRecvInto(Protocol):
    """A transport that can finish the common recv_bytes_into() with one copy out of shared memory."""

    def fast_recv_into(self) -> tuple[TryRecvInto, int]:
        """``(try_recv_into(buffer, offset=0) -> int | None, limit)``: ``limit`` bounds the payloads it
        takes, and those the ``try_recv`` of :meth:`FastPath.fast_path` takes (larger ones are left to
        the general path, which refuses them with MessageTooLarge)."""


@runtime_checkable
class FastBatches(Protocol):
    """A transport that moves many messages per call in C, publishing once per batch."""

    def fast_batches(self) -> tuple[TrySendMany, TryRecvMany]:
        """``(try_send_many(payloads, sid=0) -> int, try_recv_many(max_messages, sid) -> list[bytes])``."""


@runtime_checkable
class BatchWriter(Protocol):
    """A port that writes many frames together (Channel.send_many over a byte stream or fifo://)."""

    def send_messages(self, sid: int, payloads: Sequence[Any], deadline: float | None) -> None:
        """Send each bytes-like of ``payloads`` as one whole message, in order, in as few system calls
        as the mechanism allows.  Raises as send_message (a Timeout may come after whole messages)."""


@runtime_checkable
class BufferedReader(Protocol):
    """A port that reads ahead: the frames one read brought can be taken without a system call."""

    def take_buffered(self, out: list[Any], limit: int, decode: Callable[[int, memoryview], Any]) -> None:
        """Append ``decode(sid, payload)`` to ``out``, until it holds ``limit`` items, for the whole
        messages already read, in order, without a system call; raises as recv_message for a bad or
        oversized frame met there.  A message whose decode raises is consumed; ``out`` keeps the
        ones before it."""


@runtime_checkable
class ZeroCopy(Protocol):
    """A transport that lends its shared memory: fill a record in place, read one in place."""

    def reserve(self, n: int, deadline: float | None) -> memoryview:
        """``n`` writable bytes inside the ring, until commit() or abort()."""

    def commit(self) -> None:
        """Publish the reserved bytes as one raw message."""

    def abort(self) -> None:
        """Drop the reserved bytes unpublished."""

    def peek(self, deadline: float | None) -> tuple[memoryview, int]:
        """The next message in place, ``(read-only view, serializer id)``, until consume()."""

    def consume(self) -> None:
        """Drop the peeked message."""


@runtime_checkable
class SendParts(Protocol):
    """A shared-memory transport that writes one message from many parts, each copied once."""

    def send_parts(self, sid: int, parts: Sequence[Any], deadline: float | None) -> None:
        """Send the concatenation of ``parts`` (bytes-like, flat) as one message of serializer ``sid``."""


#: ``(C port, fail(-errno) -> exception)``: one direction's C lending (see _native.Lender).
NativeLend = tuple[Any, Callable[[int], Exception]]


@runtime_checkable
class NativeLends(Protocol):
    """A ZeroCopy transport whose rings are C ports that _native.Lender can lend from directly."""

    def native_lends(self) -> tuple[NativeLend, NativeLend]:
        """``(receiving, sending)`` C lending parts."""


@runtime_checkable
class BoundEndpoint(Protocol):
    """A listener that knows the address it is bound to (a port 0 resolved)."""

    endpoint: Endpoint
