"""Publisher and Subscriber: one-to-many messaging, ``ipcraft.publish(url)`` / ``ipcraft.subscribe(url)``.

A :class:`Publisher` has the send side of the channel surface (``send``, ``send_bytes``,
``send_view``), a :class:`Subscriber` the receive side (``recv``, ``recv_bytes``, ``recv_bytes_into``,
``recv_view``, ``poll``, ``fileno``, iteration) plus what only a broadcast has: ``latest()`` and the
``missed`` count.  Every subscriber receives every message published after it joined (``start=``
says from where), each at its own pace.

Both classes are generic over a small *port* interface (the two Protocols below), so another
transport can back them: ``bcast://`` (``_transports/bcast.py``) is the first.  Messages carry ipcraft's
8-byte frame header with the serializer id, as on every message transport, so ``recv`` decodes exactly
what ``send`` encoded and a message of another serializer is a ProtocolError, never a misdecode.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Generic, Protocol, TypeVar, cast

from . import _framing, _native
from ._channel import (
    _NoPublicConstructor,
    bytes_view,
    copy_message,
    decode_message,
    install_fast_method,
    writable_bytes,
)
from ._endpoint import Endpoint
from ._resource import ConflictDetector, Handle
from ._transports._contract import FastBatches, FastPath, TryRecv, TryRecvMany, TrySend, TrySendMany
from ._wait import deadline_after, remaining
from ._zerocopy import recv_lender, send_lender
from .errors import AuthenticationError, ChannelClosed, InvalidEndpoint, MessageTooLarge
from .serializers import MSGPACK, RAW, Serializer

T = TypeVar("T")

__all__ = ("Publisher", "Subscriber", "publish", "subscribe")


class PublisherPort(Protocol):
    """What a transport gives a Publisher."""

    endpoint: Endpoint
    authenticated: bool
    max_payload: int  # the largest message, frame header included
    limit_source: str

    def send(self, sid: int, payload: Any, deadline: float | None, **extra: Any) -> None: ...
    def reserve(self, n: int, deadline: float | None) -> memoryview: ...  # zero copy: fill, then
    def commit(self) -> None: ...                                         # publish it
    def abort(self) -> None: ...                                          # or drop it
    def extra(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


_MAX_LIMIT = 2**32 - 1  # the largest max_message_size (as the max_message_size= option)


class SubscriberPort(Protocol):
    """What a transport gives a Subscriber."""

    endpoint: Endpoint
    authenticated: bool
    missed: int

    def recv(self, deadline: float | None) -> memoryview: ...  # one message, frame header included
    def peek(self, deadline: float | None) -> tuple[memoryview, int]: ...  # zero copy: the next record
    def consume(self) -> None: ...                                          # then drop it
    def latest(self, deadline: float | None) -> memoryview: ...
    def wait_readable(self, deadline: float | None) -> bool: ...
    def fileno(self) -> int: ...
    def extra(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class _PubSubHandle(Handle, metaclass=_NoPublicConstructor):
    _port: Any = None
    _owner = False

    def __init__(self, port: Any, *, serializer: Serializer, max_message_size: int) -> None:
        self._port = port
        if serializer.trusted_only and not port.authenticated:
            port.close()
            self._closed = True
            raise AuthenticationError(
                f"serializer {serializer.name} can run code when loading and is allowed only where the "
                f"writers are authenticated; {port.endpoint} may be written by other users")
        self.serializer = serializer
        self.max_message_size = max_message_size

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint this handle was made for."""
        return self._live().endpoint  # type: ignore[no-any-return]

    @property
    def authenticated(self) -> bool:
        """Whether the other side is authenticated (bcast://: the ring is the user's own, so always;
        ZeroMQ: CURVE admitted it), which pickle requires."""
        return bool(self._live().authenticated)

    @property
    def last_meta(self) -> dict[str, Any]:
        """What the mechanism said of the last message received (ZeroMQ: its ``topic``); empty if nothing."""
        return dict(getattr(self._live(), "last_meta", {}))

    @property
    def owner(self) -> bool:
        """True for the handle that created the ring; its close() removes the name."""
        return bool(getattr(self._live(), "owner", False))

    def unlink(self) -> None:
        """Remove the name now; handles already open keep working."""
        self._live().unlink()

    def extra(self, name: str, default: Any = None) -> Any:
        """A transport-specific fact: ``ring_capacity``, ``on_slow``, ``subscribers`` (pid, lag...) ..."""
        return self._live().extra().get(name, default)

    def _live(self) -> Any:
        port = self._port
        if port is None or self._closed:
            self._raise_closed()
        return port

    def _close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            port.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed or self._port is None else "open"
        where = self._port.endpoint if self._port is not None else "?"
        return f"<{type(self).__name__} {where} serializer={self.serializer.name} {state}>"


class Publisher(_PubSubHandle, Generic[T]):
    """The sending end of a one-to-many broadcast: every live subscriber receives each message.

    Several publishers may share one name; their messages are serialised (each is published whole, in
    one order every subscriber sees).  Made by :func:`ipcraft.publish`.

    .. versionadded:: 0.2
    """

    def __init__(self, port: PublisherPort, *, serializer: Serializer = MSGPACK,
                 max_message_size: int = _framing.DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__(port, serializer=serializer, max_message_size=max_message_size)
        self._sending = ConflictDetector("sending")
        self._send_lender: _native.Lender | None = None
        self._limit = min(max_message_size, port.max_payload - _framing.HEADER_SIZE)
        self._limit_source = (port.limit_source if self._limit < max_message_size
                              else "this publisher's max_message_size")
        self._fast_send: TrySend | None = None
        self._fast_send_many: TrySendMany | None = None
        if issubclass(type(port), FastPath):
            self._fast_send = cast(FastPath, port).fast_path()[0]
        if issubclass(type(port), FastBatches):
            self._fast_send_many = cast(FastBatches, port).fast_batches()[0]

    def send(self, obj: T, *, timeout: float | None = None, **extra: Any) -> None:
        """Serialize ``obj`` with the serializer and publish it as one message.

        ``extra`` holds the scheme's per-message options (ZeroMQ: ``topic=``); bcast:// takes none.

        Raises:
            MessageTooLarge: larger than max_message_size or half the ring; nothing was sent, usable.
            Timeout: (``on_slow="block"``) the slowest subscriber left no room in time; nothing was sent.
            HandleClosed: this publisher was closed.
        """
        s = self.serializer
        payload = s.dumps(obj)
        push = self._fast_send
        if push is not None and timeout is None and not extra and push(payload, s.id):
            return
        self._publish(s.id, payload, timeout, extra)

    def send_bytes(self, data: Any, offset: int = 0, size: int | None = None, *,
                   timeout: float | None = None, **extra: Any) -> None:
        """Publish the bytes-like ``data`` (or ``size`` bytes of it from ``offset``) as one message.

        Subscribers get exactly these bytes from ``recv_bytes`` (or ``recv``, as ``bytes``).  Raises as
        :meth:`send`.
        """
        push = self._fast_send  # (the C FastMethod installed below does this without a Python frame)
        if push is not None and offset == 0 and size is None and timeout is None and not extra and push(data):
            return  # (the C fast path checks the limits and the frame; anything else goes below)
        self._publish(0, bytes_view(data, offset, size) if offset or size is not None else data, timeout, extra)

    def send_many(self, objs: Iterable[T], *, timeout: float | None = None) -> int:
        """Serialize each of ``objs`` and publish it as its own message, in order; return how many.

        On bcast:// the messages that fit go into the ring together: one hold of the publishers' lock,
        one publication of ``head`` and at most one wake-up of the subscribers per batch (a subscriber,
        or a publisher's death, sees all of a batch or none of it).  ``timeout`` bounds the whole call.
        Raises as :meth:`send`; the messages before the one that failed were published.

        .. versionadded:: 0.2
        """
        s = self.serializer
        payloads = objs if s is RAW and isinstance(objs, list) else [s.dumps(obj) for obj in objs]
        return self._publish_many(s.id, payloads, timeout)

    def _push_now(self, sid: int, payloads: list[Any], start: int) -> int:
        """How many of ``payloads[start:]`` the port's batch fast path published at once (shared with aio)."""
        push = self._fast_send_many
        if push is None:
            return 0
        self._live()
        return push(payloads[start:] if start else payloads, sid)

    def _publish_many(self, sid: int, payloads: list[Any], timeout: float | None) -> int:
        deadline = None if timeout is None else deadline_after(timeout)
        sent = 0
        while sent < len(payloads):
            sent += self._push_now(sid, payloads, sent)
            if sent < len(payloads):  # the general path: waits for room, raises what is wrong
                self._publish(sid, payloads[sent], remaining(deadline))
                sent += 1
        return sent

    def _publish(self, sid: int, payload: Any, timeout: float | None, extra: dict[str, Any] | None = None) -> None:
        port = self._live()
        n = len(payload) if isinstance(payload, bytes) else memoryview(payload).nbytes
        if n > self._limit:
            raise self._too_large(n)
        if extra:
            unknown = set(extra) - getattr(port, "send_options", frozenset())
            if unknown:
                raise TypeError(f"{self!r} takes no per-message option {', '.join(sorted(unknown))}")
            with self._sending:
                port.send(sid, payload, deadline_after(timeout), **extra)
            return
        with self._sending:
            port.send(sid, payload, deadline_after(timeout))

    def _too_large(self, n: int) -> MessageTooLarge:
        return MessageTooLarge(f"a {n}-byte message exceeds the limit of {self._limit} bytes "
                               f"({self._limit_source}) on {self!r}", n, self._limit)

    def send_view(self, n: int, *, timeout: float | None = None) -> AbstractContextManager[memoryview]:
        """Loan ``n`` bytes of the ring to fill in place: ``with pub.send_view(n) as view: ...``.

        When the block exits normally the bytes are published as one message (as ``send_bytes``
        would); when it raises, nothing is published.  Other publishers wait meanwhile: keep the block
        short.  The view must not be used after the block.

        Raises:
            MessageTooLarge: ``n`` exceeds the limit; Timeout: as :meth:`send`.
        """
        port = self._live()
        if n < 0:
            raise ValueError(f"send_view() needs n >= 0, not {n}")
        if n > self._limit:
            raise self._too_large(n)
        lender = self._send_lender
        if lender is None:
            lender = self._send_lender = send_lender(port, self._sending)
        return lender.lend(timeout, n)


class Subscriber(_PubSubHandle, Generic[T]):
    """The receiving end of a one-to-many broadcast, with its own cursor.

    Made by :func:`ipcraft.subscribe`.  ``missed`` counts the messages this subscriber lost because it
    fell behind (drop mode) or was evicted (block mode); each loss is also signalled once, by the
    receive that discovers it raising :class:`~ipcraft.errors.MessagesMissed` (or
    :class:`~ipcraft.errors.SubscriberEvicted`) with the exact number; the next receive returns the
    oldest message still present.

    .. versionadded:: 0.2
    """

    def __init__(self, port: SubscriberPort, *, serializer: Serializer = MSGPACK,
                 max_message_size: int = _framing.DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__(port, serializer=serializer, max_message_size=max_message_size)
        self._receiving = ConflictDetector("receiving")
        self._recv_lender: _native.Lender | None = None
        self._fast_recv: TryRecv | None = None
        self._fast_recv_many: TryRecvMany | None = None
        self._fast_first = True  # a receive may start on the batch fast path (not after fileno())
        self._refresh_fast_paths()

    def _refresh_fast_paths(self) -> None:
        """Take the port's fast paths (again: a port that rejoined after being reaped has new ones).

        Only a port with a ``limit`` (the largest payload its fast paths take, which this handle keeps
        equal to max_message_size) serves them: a longer message then stays in the ring for the general
        path, which consumes it and raises MessageTooLarge, so no batch ever holds one."""
        port = self._port
        self._generation = getattr(port, "generation", 0)
        self._recv_lender = None  # a lender of the old port must not outlive it
        if not hasattr(port, "limit"):
            return
        port.limit = self._max_message_size
        if issubclass(type(port), FastPath):
            self._fast_recv = cast(FastPath, port).fast_path()[1]
        if issubclass(type(port), FastBatches):
            self._fast_recv_many = cast(FastBatches, port).fast_batches()[1]

    @property
    def max_message_size(self) -> int:
        """The largest message this subscriber accepts; a longer one raises MessageTooLarge and is
        discarded (the messages after it are still received).  May be changed on the handle."""
        return self._max_message_size

    @max_message_size.setter
    def max_message_size(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"max_message_size is an integer, not {type(n).__name__}")
        if not 1 <= n <= _MAX_LIMIT:  # (checked before anything changes: the handle and port stay in step)
            raise ValueError(f"max_message_size is an integer from 1 to {_MAX_LIMIT}, not {n}")
        self._max_message_size = n
        port = self._port
        if port is not None and hasattr(port, "limit"):
            port.limit = n  # the fast paths leave a longer message in the ring for the general path

    @property
    def missed(self) -> int:
        """How many messages this subscriber has missed so far (lapped or evicted)."""
        port = self._port
        return int(port.missed) if port is not None else 0

    def fileno(self) -> int:
        """A file descriptor that becomes readable when a message may be ready (select/poll/epoll)."""
        fd = self._live().fileno()
        self._fast_first = False  # receives start on the general path, which re-arms the fd
        return fd  # type: ignore[no-any-return]

    def _next(self, timeout: float | None) -> tuple[int, memoryview]:
        """The general path of every receive: waits, and reports losses, the end and bad frames."""
        port = self._live()
        try:
            msg = port.recv(deadline_after(timeout))
        finally:
            if getattr(port, "generation", 0) != self._generation:
                self._refresh_fast_paths()
        sid, payload = _framing.check_message_header(msg, self.max_message_size)
        if payload.nbytes > self.max_message_size:  # (the size check is the caller's)
            raise self._received_too_large(payload.nbytes)
        return sid, payload

    def _received_too_large(self, n: int) -> MessageTooLarge:
        return MessageTooLarge(f"a {n}-byte message exceeds max_message_size={self.max_message_size}; it was "
                               "discarded", n, self.max_message_size)

    def recv(self, timeout: float | None = None) -> T:
        """Receive the next message and deserialize it (one sent with ``send_bytes`` arrives as bytes).

        Raises:
            MessagesMissed / SubscriberEvicted: this subscriber lost messages (``.missed``); usable,
                the next call returns the oldest message still present.
            ChannelClosed: every publisher closed and every message was received (PeerVanished if
                the last one died); the handle stays open until you close it.
            Timeout: nothing arrived in time; usable.
            ProtocolError: a message of another serializer (discarded), or a corrupt ring.
            HandleClosed: this subscriber was closed.
        """
        s, pop = self.serializer, self._fast_recv_many
        if pop is not None and timeout is None and self._fast_first:
            got = pop(1, s.id)  # a frame of this serializer, within max_message_size; else the general path
            if got:
                return s.decode(got[0])  # type: ignore[no-any-return]
        with self._receiving:
            sid, view = self._next(timeout)
            return self._decode(sid, view)  # type: ignore[no-any-return]

    def recv_bytes(self, maxlength: int | None = None, *, timeout: float | None = None) -> bytes:
        """Receive the next message as ``bytes``; ``maxlength`` refuses (and discards) longer ones.
        Raises as :meth:`recv`."""
        pop = self._fast_recv  # (the C FastMethod installed below does this without a Python frame)
        if pop is not None and maxlength is None and timeout is None:
            data = pop()  # at most max_message_size bytes: the port's limit
            if data is not None:
                return data
        with self._receiving:
            _sid, view = self._next(timeout)
            if maxlength is not None and view.nbytes > maxlength:
                raise MessageTooLarge(f"a {view.nbytes}-byte message exceeds maxlength={maxlength}; it was "
                                      "discarded", view.nbytes, maxlength)
            return view.tobytes()

    def recv_bytes_into(self, buffer: Any, offset: int = 0, *, timeout: float | None = None) -> int:
        """Receive the next message into the writable ``buffer`` at ``offset``; return its length.

        Raises:
            BufferTooSmall: the message does not fit; it is whole in the exception's ``data``.
            and as :meth:`recv`.
        """
        dst = writable_bytes(buffer, offset)
        with self._receiving:
            _sid, view = self._next(timeout)
            return copy_message(view, dst, offset)

    def recv_many(self, max_messages: int, timeout: float | None = None) -> list[T]:
        """Receive between 1 and ``max_messages`` messages, deserialized, in order.

        Waits up to ``timeout`` (None: for ever) for the first message, then takes those that are ready
        at once.  On bcast:// those come out of the ring together, with one publication of this
        subscriber's cursor and at most one wake-up of a waiting publisher.  Raises as :meth:`recv`
        when no message could be taken; a loss, the end or a bad frame met after some were taken ends
        the batch and is raised by the next receive.

        .. versionadded:: 0.2
        """
        return self._recv_many(max_messages, timeout)

    def _recv_many(self, max_messages: int, timeout: float | None) -> list[Any]:
        if max_messages < 1:
            raise ValueError(f"recv_many() needs max_messages >= 1, not {max_messages}")
        s, pop = self.serializer, self._fast_recv_many
        first: list[Any] = []
        out: list[bytes] = []
        with self._receiving:
            if pop is not None and timeout is None and self._fast_first:
                out = pop(max_messages, s.id)
            if not out:
                got_sid, view = self._next(timeout)  # waits; checks the size and the frame
                first = [self._decode(got_sid, view)]
                pop = self._fast_recv_many  # (refreshed if the port rejoined)
                if pop is not None and max_messages > 1:
                    out = pop(max_messages - 1, s.id)
        # The batch stops before a message over max_message_size (the port's limit): the next receive
        # takes it by the general path, which raises, and the messages after it come later.
        return first + [s.decode(p) for p in out]

    def recv_view(self, timeout: float | None = None) -> AbstractContextManager[memoryview]:
        """Borrow the next message without copying: ``with sub.recv_view() as view: ...``.

        ``view`` is a read-only memoryview of the message bytes where they lie in the ring
        (``np.frombuffer(view, dtype)`` works on it).  With ``on_slow="block"`` the record is pinned:
        publishers wait for it until the block exits (or until ``slow_timeout`` evicts this
        subscriber).  With ``on_slow="drop"`` publishers may overwrite it meanwhile, and the exit
        checks: if they did, the exit raises MessagesMissed (with the count), so a result computed from
        the view must be thrown away.  Nothing from the view may be used after the block.

        Raises:
            on entry as :meth:`recv_bytes`; on exit MessagesMissed / SubscriberEvicted as above.
        """
        port = self._live()
        lender = self._recv_lender
        if lender is None:
            lender = self._recv_lender = recv_lender(port, self._receiving)
        return lender.lend(timeout)

    def latest(self, timeout: float | None = 0.0) -> T:
        """The most recent message published, deserialized, without consuming the stream.

        For the "latest frame only" use: ``recv`` and iteration are unaffected.  Waits up to
        ``timeout`` seconds (None: forever) when nothing has been published yet.

        Raises:
            Timeout: nothing was ever published (and none came in time).
            ChannelClosed / PeerVanished: nothing was ever published and the publishers are gone.
        """
        with self._receiving:
            msg = self._live().latest(deadline_after(timeout))
            sid, view = _framing.check_message_header(msg, self.max_message_size)
            return self._decode(sid, view)  # type: ignore[no-any-return]

    def _decode(self, sid: int, view: memoryview) -> Any:
        return decode_message(self.serializer, sid, view, self)

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message (or a loss to report, or the end of the stream) is ready; waits up to
        ``timeout`` seconds (0, the default: check and return; None: until something is)."""
        return bool(self._live().wait_readable(deadline_after(timeout)))

    def __iter__(self) -> Iterator[T]:
        """Yield messages until the publishers are gone.  A loss (MessagesMissed) still raises."""
        while True:
            try:
                yield self.recv()
            except ChannelClosed:
                return


# Publisher.send_bytes(data) -> port.try_send(data); Subscriber.recv_bytes() -> port.try_recv().
install_fast_method(Publisher, "send_bytes", "_fast_send", 1, True)
install_fast_method(Subscriber, "recv_bytes", "_fast_recv", 0, False)


def _ports(ep: Endpoint, verb: str) -> tuple[Any, Any]:
    """The (publisher port, subscriber port) classes of ``ep``'s scheme: bcast:// or ZeroMQ's PUB/SUB."""
    if not ep.info.serves("pubsub"):
        raise InvalidEndpoint(f"{ep.scheme}:// is a {ep.info.family} scheme; {verb}() takes a one-to-many "
                              "scheme (bcast://, zmq+tcp://, zmq+ipc://)")
    if ep.scheme == "bcast":
        from ._transports import bcast

        return bcast.BcastPublisherPort, bcast.BcastSubscriberPort
    from ._transports import module_for  # zmq+tcp, zmq+ipc: names the ipcraft[zmq] extra when pyzmq is missing

    zmq = module_for(ep.scheme)
    return zmq.ZmqPublisherPort, zmq.ZmqSubscriberPort


def _handle_options(ep: Endpoint) -> dict[str, Any]:
    return {"serializer": ep.options.get("serializer", MSGPACK),
            "max_message_size": ep.options.get("max_message_size", _framing.DEFAULT_MAX_MESSAGE_SIZE)}


def _check_create(create: bool | str) -> None:
    if create not in (True, False, "if_missing"):
        raise ValueError(f"create is True, False or 'if_missing', not {create!r}")


def publish(url: str | Endpoint, create: bool | str = "if_missing", **options: Any) -> Publisher[Any]:
    """Open a :class:`Publisher` on a one-to-many ``bcast://name`` (or ZeroMQ PUB, ``zmq+tcp://``/``zmq+ipc://``).

    ``create="if_missing"`` (the default) creates the ring when it does not exist yet, ``True`` only
    creates (FileExistsError if it exists), ``False`` only opens.  The handle that created it owns it
    and removes the name on close.  At creation: ``capacity=`` (bytes, default 4 MiB; a message may take
    half), ``on_slow="drop" | "block"``, ``slow_timeout=`` (seconds, block mode, default 5),
    ``max_subscribers=`` (default 64), ``mode=`` (default 0600).  Per handle: ``wait="block" | "spin"``,
    ``serializer=``, ``max_message_size=``.

    .. versionadded:: 0.2
    """
    _check_create(create)
    ep = Endpoint.parse(url, **options)
    port = _ports(ep, "publish")[0](ep, create)
    try:
        return Publisher._create(port, **_handle_options(ep))  # type: ignore[no-any-return]
    except BaseException:
        port.close()
        raise


def subscribe(url: str | Endpoint, create: bool | str = False, **options: Any) -> Subscriber[Any]:
    """Open a :class:`Subscriber` on a one-to-many ``bcast://name`` (or ZeroMQ SUB, ``zmq+tcp://``/``zmq+ipc://``).

    ``start="next"`` (default) receives what is published from now on, ``"latest"`` also the most
    recent message already there, ``"oldest"`` everything still in the ring (its history is its
    capacity).  ``create`` and the creation options as :func:`publish` (default: open only, so a
    missing ring is FileNotFoundError).

    .. versionadded:: 0.2
    """
    _check_create(create)
    ep = Endpoint.parse(url, **options)
    port = _ports(ep, "subscribe")[1](ep, create)
    try:
        return Subscriber._create(port, **_handle_options(ep))  # type: ignore[no-any-return]
    except BaseException:
        port.close()
        raise
