"""Channel, Queue and Listener: one message API over every transport.

Method names follow ``multiprocessing.connection.Connection``: ``send``/``recv`` move objects through
the channel's serializer, ``send_bytes``/``recv_bytes``/``recv_bytes_into`` move raw bytes, ``poll``
says whether a message is ready, ``fileno`` serves select/poll/epoll.  Mechanism extras are keyword
arguments (``priority=`` for mq://, ``type=`` for sysvmq://), never new method names.

Every frame carries its serializer's id.  ``recv`` decodes a frame made by the channel's serializer or
by RAW (``send_bytes``; it returns ``bytes``); any other id is a ProtocolError, never a misdecode.  A
serializer that can run code (pickle) is decoded only when the transport authenticated the peer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar, cast

from . import _framing, _native
from ._endpoint import Endpoint
from ._peer import Peer
from ._resource import ConflictDetector, Handle
from ._transports._contract import (
    BatchWriter,
    BoundEndpoint,
    BufferedReader,
    ByteStream,
    FastBatches,
    FastPath,
    FastRecvInto,
    MessagePort,
    SendParts,
    Transport,
    TryRecv,
    TryRecvInto,
    TryRecvMany,
    TrySend,
    TrySendMany,
    ZeroCopy,
)
from ._transports._framed import FramedStream, RawStream
from ._wait import deadline_after, remaining
from ._zerocopy import recv_lender, send_lender
from .errors import (
    AuthenticationError,
    BufferTooSmall,
    ChannelClosed,
    HandleClosed,
    MessageTooLarge,
    ProtocolError,
    Timeout,
)
from .serializers import MSGPACK, RAW, Serializer, by_id

T = TypeVar("T")

__all__ = ("Channel", "Queue", "Listener")


class _NoPublicConstructor(type):
    """Channels come from ipcraft.connect/listen/queue/pipe, never from calling the class (trio)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no public constructor; use "
                        "ipcraft.connect(), listen(), queue() or pipe()")

    def _create(cls, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **kwargs)


class _MessageIO(Handle, Generic[T], metaclass=_NoPublicConstructor):
    """The surface Channel and Queue share.

    ``_transport`` is the transport (its facts and lifecycle); ``_port`` is the message port every
    message goes through: the transport itself, or a FramedStream over it when it is a byte stream.
    One send path (``_send_frame``) and one receive path (``_recv_frame``) serve every scheme.
    """

    _transport: Transport | None = None
    _port: MessagePort
    #: A channel that saw its peer close stays at end of stream; a queue has no end of stream (a
    #: vanished writer loses its message, and the next writer's messages still arrive).
    _latch_eof = True
    # A message transport may offer a fast path in C (shm://): try_send(data, sid) -> bool and
    # try_recv() -> bytes | None, which finish the common case at once and otherwise return
    # False/None, leaving the general path below to do the same call with its full semantics.
    _fast_send: TrySend | None = None
    _fast_recv: TryRecv | None = None
    # The same for batches (send_many/recv_many) where the transport moves many messages per call.
    _fast_send_many: TrySendMany | None = None
    _fast_recv_many: TryRecvMany | None = None
    # recv_bytes_into's: try_recv_into(buffer, offset) -> int | None, one copy out of a shared-memory ring
    _fast_recv_into: TryRecvInto | None = None
    # _fast_recv when it refuses every payload over max_message_size itself (a shared-memory ring's
    # port, whose limit is the channel's): recv_bytes() then needs no check after it, and its
    # FastMethod (below) calls it with no Python frame.
    _fast_recv_checked: TryRecv | None = None
    # recv_view()/send_view()'s context-manager factories (_zerocopy), made on first use
    _recv_lender: _native.Lender | None = None
    _send_lender: _native.Lender | None = None
    #: An error a recv_many() met after it had taken messages: raised by the next recv_many().
    _batch_error: BaseException | None = None
    # A port that writes a batch's frames together / takes the frames one read brought (byte streams, fifo://).
    _batch_writer: BatchWriter | None = None
    _buffered_reader: BufferedReader | None = None

    @property
    def max_message_size(self) -> int:
        """The largest payload this handle accepts, in bytes (``max_message_size=`` when it was opened).

        Fixed for the handle's life: the framing of byte streams and the C fast paths of the
        shared-memory rings were set up with it, so a new value could not apply to every path alike.
        Open a new channel with another ``max_message_size=`` instead."""
        return self._max_message_size

    def __init__(self, transport: Transport, endpoint: Endpoint | None, *,
                 serializer: Serializer = MSGPACK,
                 max_message_size: int = _framing.DEFAULT_MAX_MESSAGE_SIZE, framing: str = "ipcraft") -> None:
        self._transport = transport
        self._endpoint = endpoint
        if serializer.trusted_only and not transport.authenticated:
            transport.close()
            self._closed = True
            raise AuthenticationError(
                f"serializer {serializer.name} can run code when loading and is allowed only on an "
                f"authenticated channel; {endpoint or 'this channel'} does not authenticate its peer "
                "(use an authkey= for tcp://, or the default msgpack)")
        self.serializer = serializer
        self._max_message_size = max_message_size
        if transport.max_payload is not None and transport.max_payload - _framing.HEADER_SIZE < max_message_size:
            self._send_limit = transport.max_payload - _framing.HEADER_SIZE
            self._send_limit_source = transport.limit_source
        else:
            self._send_limit = max_message_size
            self._send_limit_source = "this channel's max_message_size"
        # issubclass on the class: the ABC cache makes it ~0.1 us, isinstance on a protocol costs ~20 us.
        if issubclass(type(transport), MessagePort):
            self._port, self._framed = cast(MessagePort, transport), False
        elif isinstance(transport, ByteStream):
            self._port = (FramedStream(transport, max_message_size, repr(self)) if framing == "ipcraft"
                          else RawStream(transport, framing, max_message_size, repr(self)))
            self._framed = True
        else:
            transport.close()
            self._closed = True
            raise TypeError(f"{transport!r} is neither a ByteStream nor a MessagePort")
        self._sending = ConflictDetector("sending")
        self._receiving = ConflictDetector("receiving")
        self._eof = False
        if issubclass(type(transport), FastPath):
            self._fast_send, self._fast_recv = cast(FastPath, transport).fast_path()
        if issubclass(type(transport), FastBatches):
            self._fast_send_many, self._fast_recv_many = cast(FastBatches, transport).fast_batches()
        if issubclass(type(transport), FastRecvInto):
            into, limit = cast(FastRecvInto, transport).fast_recv_into()
            if limit <= max_message_size:  # it leaves larger payloads to the general path's refusal
                self._fast_recv_into = into
                self._fast_recv_checked = self._fast_recv  # the same port and limit (FastRecvInto)
        if issubclass(type(self._port), BatchWriter):
            self._batch_writer = cast(BatchWriter, self._port)
        if issubclass(type(self._port), BufferedReader):
            self._buffered_reader = cast(BufferedReader, self._port)
        # Checked once, on the class: isinstance against a runtime protocol costs ~20 us a call.
        self._lends: ZeroCopy | None = cast(ZeroCopy, transport) if issubclass(type(transport), ZeroCopy) else None
        self._parts: SendParts | None = (cast(SendParts, transport) if issubclass(type(transport), SendParts)
                                         else None)

    # -- facts -------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> Endpoint | None:
        """The endpoint this handle was made for (None for ipcraft.pipe())."""
        return self._endpoint

    @property
    def peer(self) -> Peer:
        """What the kernel knows of the other side: pid/uid/gid (Unix), address (TCP/UDP)."""
        return self._live().peer

    @property
    def authenticated(self) -> bool:
        """True when the peer is authenticated (same-uid Unix peer, or a TCP authkey handshake)."""
        return self._live().authenticated

    @property
    def last_meta(self) -> dict[str, Any]:
        """Mechanism facts about the last message received: ``priority`` (mq://), ``type``
        (sysvmq://), ``address`` of the sender (udp://, unix+dgram://); empty where there are none."""
        return dict(self._live().last_meta)

    def extra(self, name: str, default: Any = None) -> Any:
        """A transport-specific fact, e.g. ``extra("ring_capacity")``; ``default`` if it has none."""
        return self._live().extra().get(name, default)

    def fileno(self) -> int:
        """A file descriptor that becomes readable when a message may be ready (select/poll/epoll)."""
        return self._live().fileno()

    def _live(self) -> Transport:
        t = self._transport
        if t is None or self._closed:
            self._raise_closed()
        return t

    def _open_port(self) -> MessagePort:
        """The message port every message goes through (HandleClosed once closed); ipcraft.aio drives
        it directly where it must not block: a FramedStream's ``stream.write_some``."""
        self._live()
        return self._port

    def _close(self) -> None:
        self._fast_send = self._fast_recv = self._fast_send_many = self._fast_recv_many = None
        self._fast_recv_into = self._fast_recv_checked = None
        self._recv_lender = self._send_lender = None
        t, self._transport = self._transport, None
        if t is not None:
            t.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        where = str(self._endpoint) if self._endpoint is not None else "pipe"
        return f"<{type(self).__name__} {where} serializer={self.serializer.name} {state}>"

    # -- sending -----------------------------------------------------------------------------------

    def send(self, obj: T, *, timeout: float | None = None, **extra: Any) -> None:
        """Serialize ``obj`` with the channel's serializer and send it as one message.

        Raises:
            MessageTooLarge: the serialized object exceeds the channel's or the mechanism's limit;
                nothing was sent, the channel is usable.
            Timeout: the peer did not make room in time (see Timeout for the state).
            ChannelClosed / PeerVanished: the peer is gone.
            HandleClosed: this channel was closed.
        """
        s = self.serializer
        if s.dumps_oob is not None and self._parts is not None:  # pickle 5 out of band, into shared memory
            parts = s.dumps_oob(obj)
            if len(parts) > 1:
                self._send_parts(s.id, parts, timeout, extra)
                return
            payload = parts[0]
        else:
            payload = s.dumps(obj)
        push = self._fast_send
        if push is not None and timeout is None and not extra and push(payload, s.id):
            return
        self._send_frame(s.id, payload, timeout, extra)

    def send_bytes(self, data: Any, offset: int = 0, size: int | None = None, *,
                   timeout: float | None = None, **extra: Any) -> None:
        """Send the bytes-like ``data`` (or ``size`` bytes of it from ``offset``) as one message.

        The receiver gets exactly these bytes from ``recv_bytes`` (or from ``recv``, as ``bytes``).
        Raises as :meth:`send`.
        """
        push = self._fast_send
        if push is not None and offset == 0 and size is None and timeout is None and not extra and push(data):
            return
        self._send_frame(0, bytes_view(data, offset, size), timeout, extra)

    def send_many(self, objs: Iterable[T], *, timeout: float | None = None) -> int:
        """Serialize each of ``objs`` and send it as its own message, in order; return how many.

        Every message is whole, as with :meth:`send`.  On shm://, ring:// and file:// the messages
        that fit go into the ring together, with one publication of its cursor and at most one
        wake-up of the receiver; elsewhere they are sent one by one.  ``timeout`` bounds the whole
        call.  Raises as :meth:`send`; the messages before the one that failed were sent.

        .. versionadded:: 0.2
        """
        s = self.serializer
        # RAW's dumps only checks that an item is bytes-like, which sending checks anyway.
        payloads = objs if s is RAW and isinstance(objs, list) else [s.dumps(obj) for obj in objs]
        return self._send_payloads(s.id, payloads, None if timeout is None else deadline_after(timeout))

    def _send_payloads(self, sid: int, payloads: list[Any], deadline: float | None) -> int:
        """send_many's sending, of payloads already encoded with serializer ``sid`` (shared with the relay)."""
        if self._batch_writer is not None:
            return self._send_frames(self._batch_writer, sid, payloads, deadline)
        sent = 0
        while sent < len(payloads):
            sent += self._push_now(sid, payloads, sent)
            if sent < len(payloads):  # the general path: waits for room, raises what is wrong
                self._send_frame(sid, payloads[sent], remaining(deadline), {})
                sent += 1
        return sent

    def _send_frames(self, port: BatchWriter, sid: int, payloads: list[Any], deadline: float | None) -> int:
        """send_many over a port that writes frames together (a byte stream: one system call for a
        batch of small messages); the ones before a message over the limit are sent, then that one
        raises."""
        count, too_large = self._batch_prefix(payloads)
        if count:
            self._live()
            with self._sending:
                try:
                    port.send_messages(sid, payloads if too_large is None else payloads[:count], deadline)
                except Timeout as exc:
                    if exc.closed:  # the stream was cut mid-frame and its transport closed
                        self.close()
                    raise
        if too_large is not None:
            raise too_large
        return count

    def _batch_prefix(self, payloads: list[Any]) -> tuple[int, MessageTooLarge | None]:
        """How many of ``payloads`` fit the send limit before the first that does not, and that one's
        error (None if all fit); shared with ipcraft.aio."""
        limit = self._send_limit
        if payloads and set(map(type, payloads)) == {bytes} and max(map(len, payloads)) <= limit:
            return len(payloads), None  # the common case, checked without a Python loop
        for count, payload in enumerate(payloads):
            n = len(payload) if payload.__class__ is bytes else memoryview(payload).nbytes
            if n > limit:
                return count, self._too_large(n)
        return len(payloads), None

    def _push_now(self, sid: int, payloads: list[Any], start: int) -> int:
        """How many of ``payloads[start:]`` the transport's batch fast path sent at once (shared with aio)."""
        push = self._fast_send_many
        if push is None:
            return 0
        return push(payloads[start:] if start else payloads, sid)

    def _outgoing(self, payload: Any) -> memoryview:
        """``payload`` as a memoryview, checked against the send limit (shared with ipcraft.aio)."""
        mv = payload if isinstance(payload, memoryview) else memoryview(payload)
        n = mv.nbytes
        if n > self._send_limit:
            raise self._too_large(n)
        return mv

    def _send_frame(self, sid: int, payload: Any, timeout: float | None, extra: dict[str, Any]) -> None:
        self._live()
        mv = self._outgoing(payload)
        deadline = None if timeout is None else deadline_after(timeout)
        with self._sending:
            try:
                if extra:
                    self._port.send_message(sid, mv, deadline, **extra)
                else:
                    self._port.send_message(sid, mv, deadline)
            except Timeout as exc:
                if exc.closed:  # the stream was cut mid-frame and its transport closed
                    self.close()
                raise

    def _send_parts(self, sid: int, parts: list[Any], timeout: float | None, extra: dict[str, Any]) -> None:
        """One message from ``parts`` (Serializer.dumps_oob), each copied once into shared memory."""
        t = self._parts
        assert t is not None
        if extra:
            raise TypeError(f"{self!r} takes no per-message option {', '.join(sorted(extra))}")
        self._live()
        n = sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in parts)
        if n > self._send_limit:
            raise self._too_large(n)
        with self._sending:
            t.send_parts(sid, parts, deadline_after(timeout))

    def _too_large(self, n: int) -> MessageTooLarge:
        return MessageTooLarge(f"a {n}-byte message exceeds the limit of {self._send_limit} bytes "
                               f"({self._send_limit_source}) on {self!r}", n, self._send_limit)

    # -- receiving ---------------------------------------------------------------------------------

    def recv(self, timeout: float | None = None, **extra: Any) -> T:
        """Receive one message and deserialize it.

        A message sent with ``send_bytes`` arrives as ``bytes``.

        Raises:
            ChannelClosed: the peer closed and every message has been received (PeerVanished if it
                died); the handle stays open until you close it.
            Timeout: nothing arrived in time; the channel is usable.
            MessageTooLarge: the message exceeded max_message_size; it was discarded, the channel is
                usable.
            ProtocolError: a frame of another serializer, or a malformed frame (a byte-stream channel
                is then closed: it cannot be resynchronised).
            HandleClosed: this channel was closed.
        """
        with self._receiving:
            sid, view = self._recv_frame(timeout, extra)
            return self._decode(sid, view)  # type: ignore[no-any-return]

    def recv_bytes(self, maxlength: int | None = None, *, timeout: float | None = None,
                   **extra: Any) -> bytes:
        """Receive one message as ``bytes`` (the serialized form, if it was sent with ``send``).

        ``maxlength`` refuses longer messages with MessageTooLarge (the message is discarded, the
        channel stays usable).  Raises as :meth:`recv`.
        """
        # On shm://, ring:// and file:// recv_bytes() alone is tried in one C call by the FastMethod
        # installed below (it comes here when that returned None); elsewhere the fast path is tried here.
        pop = self._fast_recv
        if pop is not None and self._fast_recv_checked is None and maxlength is None and timeout is None \
                and not extra:
            data = pop()
            if data is not None:
                if len(data) > self._max_message_size:
                    raise self._received_too_large(len(data))
                return data
        with self._receiving:
            _sid, view = self._recv_frame(timeout, extra)
            if maxlength is not None and view.nbytes > maxlength:
                raise MessageTooLarge(f"a {view.nbytes}-byte message exceeds maxlength={maxlength}; it was "
                                      "discarded", view.nbytes, maxlength)
            return view.tobytes()

    def recv_many(self, max_messages: int, timeout: float | None = None) -> list[T]:
        """Receive between 1 and ``max_messages`` messages, deserialized, in order.

        Waits up to ``timeout`` (None: for ever) for the first message, then takes those that are
        ready at once.  On shm://, ring:// and file:// those come out of the ring together, with
        one publication of its cursor and at most one wake-up of the sender; elsewhere one by one.
        Raises as :meth:`recv` when no message could be taken; an error met after some were taken
        ends the batch and is raised by the next recv_many().

        .. versionadded:: 0.2
        """
        if max_messages < 1:
            raise ValueError(f"recv_many() needs max_messages >= 1, not {max_messages}")
        err, self._batch_error = self._batch_error, None
        if err is not None:
            raise err
        s, pop = self.serializer, self._fast_recv_many
        with self._receiving:
            out: list[T] = []
            if pop is not None and timeout is None and not self._eof:
                got = pop(max_messages, s.id)
                if got:
                    return cast("list[T]", got) if s is RAW else [s.loads(p) for p in got]  # RAW loads: bytes()
            sid, view = self._recv_frame(timeout, {})
            out.append(self._decode(sid, view))
            port = self._port
            buffered = self._buffered_reader
            if buffered is not None:  # the frames its last read brought, parsed in one loop
                try:
                    buffered.take_buffered(out, max_messages, self._decode)
                except Exception as exc:  # noqa: BLE001 - kept for the next recv_many(), then raised
                    self._batch_error = exc
                    if isinstance(exc, ProtocolError) and exc.closed:  # as _recv_frame does
                        self.close()
                return out
            while len(out) < max_messages and port.wait_readable(deadline_after(0)):
                got = pop(max_messages - len(out), s.id) if pop is not None else []
                if got:
                    out += [s.loads(p) for p in got]
                    continue
                try:  # one at a time: a frame of another serializer, or no batch fast path
                    sid, view = self._recv_frame(0, {})
                    out.append(self._decode(sid, view))
                except (Timeout, ChannelClosed):
                    break  # nothing after all (another consumer took it), or the end: next call says
                except Exception as exc:  # noqa: BLE001 - kept for the next recv_many(), then raised
                    self._batch_error = exc
                    break
            return out

    def recv_bytes_into(self, buffer: Any, offset: int = 0, *, timeout: float | None = None,
                        **extra: Any) -> int:
        """Receive one message into the writable ``buffer`` at ``offset``; return its length.

        On shared-memory channels (shm://, ring://, file://) the message is copied straight from the
        ring into ``buffer`` (in one C call when it is ready, as ``recv_view`` lends it otherwise), so
        nothing is allocated per message: a loop over one reused buffer does not make the allocator map
        and fault in fresh pages for every large message, as a fresh ``bytes`` from :meth:`recv_bytes`
        may.

        Raises:
            BufferTooSmall: the message does not fit; it is kept whole in the exception's ``data``
                (nothing is lost), the channel is usable.
            and as :meth:`recv`.
        """
        # shm://, ring://, file://: recv_bytes_into(buffer) alone is tried in one C call by the FastMethod
        # installed below (it comes here when that returned None); this tries the other forms.
        into = self._fast_recv_into
        if into is not None and offset and timeout is None and not extra:
            n = into(buffer, offset)
            if n is not None:
                return n
        dst = writable_bytes(buffer, offset)
        if self._lends is not None and not extra:
            return self._recv_lent_into(dst, offset, timeout)
        with self._receiving:
            _sid, view = self._recv_frame(timeout, extra)
            return copy_message(view, dst, offset)

    def _recv_lent_into(self, dst: memoryview, offset: int, timeout: float | None) -> int:
        """recv_bytes_into on a shared-memory channel: one copy out of the lent record, which is consumed
        when the copy is done (or refused: BufferTooSmall keeps it, MessageTooLarge discards it)."""
        self._live()
        if self._eof:
            raise ChannelClosed(f"the peer closed {self!r}")
        try:
            with self.recv_view(timeout) as view:
                n = view.nbytes
                if n > self._max_message_size:
                    raise self._received_too_large(n)
                return copy_message(view, dst, offset)
        except ChannelClosed:
            self._eof = self._latch_eof
            raise

    def recv_view(self, timeout: float | None = None) -> AbstractContextManager[memoryview]:
        """Look at the next message in place, without copying: ``with ch.recv_view() as view: ...``.

        ``view`` is a read-only memoryview of the message bytes (as ``recv_bytes`` would return them)
        where they lie in shared memory; the message is consumed when the block exits, normally or
        not.  Nothing from the view may be used after the block, including arrays made over it
        (``np.frombuffer(view, dtype)``): the sender reuses that memory.  Copy what you keep.

        Only shared-memory channels (shm://, ring://, file://) can lend their buffer; others raise
        NotImplementedError.  On ring:// and file:// the receiving lock is held meanwhile (other
        receivers of the queue wait), and a message the ring cannot show in place (every message with
        ``sync=true`` or after ``fileno()``; one that wraps around the end of the ring where the ring
        could not be mapped twice in a row) is lent from a copy.

        Raises:
            as :meth:`recv_bytes`.

        .. versionadded:: 0.1
        """
        lender = self._recv_lender  # None until the first call, and again once closed
        if lender is None or self._closed:
            t = self._lender("recv_view", "recv_bytes_into for a reusable buffer")
            lender = self._recv_lender = recv_lender(t, self._receiving)
        return lender.lend(timeout)

    def send_view(self, n: int, *, timeout: float | None = None) -> AbstractContextManager[memoryview]:
        """Reserve ``n`` bytes of shared memory to fill in place: ``with ch.send_view(n) as view: ...``.

        ``view`` is a writable memoryview of exactly ``n`` bytes inside the ring.  When the block
        exits normally the bytes are published as one message (the receiver gets them from
        ``recv_bytes``/``recv_view``, or as ``bytes`` from ``recv``); when it raises, nothing is sent.
        The view must not be used after the block.

        Only shared-memory channels (shm://, ring://, file://) can lend their buffer; others raise
        NotImplementedError.  On ring:// and file:// the sending lock is held meanwhile (other senders
        of the queue wait); when the ring cannot lend the bytes in place (no room now, ``sync=true``, a
        record that wraps around the end of a ring that could not be mapped twice in a row) the block
        fills a copy that the exit sends.

        Raises:
            MessageTooLarge: ``n`` exceeds the channel's limit (half the ring); the channel is usable.
            Timeout: no room came in time; nothing was sent, the channel is usable.
            ChannelClosed / PeerVanished: the peer is gone.

        .. versionadded:: 0.1
        """
        lender = self._send_lender  # None until the first call, and again once closed
        if lender is None or self._closed:
            lender = self._send_lender = send_lender(self._lender("send_view", "send_bytes"), self._sending)
        if not 0 <= n <= self._send_limit:
            if n < 0:
                raise ValueError(f"send_view() needs n >= 0, not {n}")
            raise self._too_large(n)
        return lender.lend(timeout, n)

    def _lender(self, method: str, instead: str) -> ZeroCopy:
        self._live()
        t = self._lends
        if t is None:
            raise NotImplementedError(f"{method}() lends shared memory and needs shm://, ring:// or file://; "
                                      f"{self!r} has none (use {instead})")
        return t

    def _recv_frame(self, timeout: float | None, extra: dict[str, Any]) -> tuple[int, memoryview]:
        self._live()
        if self._eof:
            raise ChannelClosed(f"the peer closed {self!r}")
        deadline = None if timeout is None else deadline_after(timeout)
        try:
            msg = self._port.recv_message(deadline, **extra) if extra else self._port.recv_message(deadline)
        except ChannelClosed:
            self._eof = self._latch_eof
            raise
        except ProtocolError as exc:
            if exc.closed:  # a byte stream cannot be resynchronised after a bad frame
                self.close()
            raise
        if msg.payload.nbytes > self._max_message_size:  # a byte stream's FrameReader refused it already
            raise self._received_too_large(msg.payload.nbytes)
        return msg.sid, msg.payload

    def _received_too_large(self, n: int) -> MessageTooLarge:
        """A whole message over max_message_size arrived on a message transport; it is discarded (it was
        already taken from the mechanism) and the channel stays usable."""
        return MessageTooLarge(f"a {n}-byte message arrived on {self!r}, whose max_message_size is "
                               f"{self._max_message_size} (the message is discarded; raise max_message_size= "
                               "to allow it)", n, self._max_message_size)

    def _decode(self, sid: int, view: memoryview) -> Any:
        return decode_message(self.serializer, sid, view, self)

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message (or the end of the stream) is ready; waits up to ``timeout`` seconds.

        ``timeout=0`` (the default) checks and returns at once; None waits until something arrives.
        """
        self._live()
        deadline = deadline_after(timeout)
        if self._eof:
            return True
        if not self._framed:
            return self._port.wait_readable(deadline)
        with self._receiving:  # a framed stream reads ahead into its frame reader
            return self._port.wait_readable(deadline)

    def __iter__(self) -> Iterator[T]:
        """Yield received messages until the peer closes."""
        while True:
            try:
                yield self.recv()
            except ChannelClosed:
                return


def install_fast_method(cls: type, name: str, fast_attr: str, nargs: int, sent: bool) -> None:
    """Put a C FastMethod in place of ``cls.name`` (shared with _pubsub): called with exactly ``nargs``
    positional arguments it calls the instance's ``fast_attr`` (the port's C fast path) with no Python
    frame in between, and the Python method (on the class, still the documented one) for everything
    else."""
    setattr(cls, name, _native.FastMethod(getattr(cls, name), fast_attr, nargs, sent))


# recv_bytes_into(buffer) -> transport's try_recv_into(buffer), with no Python frame (see fastmethod.c).
# The C port refuses payloads over the max_message_size the channel was made with, which it keeps.
install_fast_method(_MessageIO, "recv_bytes_into", "_fast_recv_into", 1, False)
# send_bytes(data) -> transport's try_send(data), and recv_bytes() -> try_recv() where it checks the limit
# itself: the Python methods' frames, defaults and **extra dicts cost about as much as the C calls.
install_fast_method(_MessageIO, "send_bytes", "_fast_send", 1, True)
install_fast_method(_MessageIO, "recv_bytes", "_fast_recv_checked", 0, False)


def decode_message(s: Serializer, sid: int, view: memoryview, who: Any) -> Any:
    """A received payload of serializer ``sid`` decoded by the handle ``who`` that uses ``s`` (shared
    with _pubsub): ``s``'s own frames are loaded, RAW ones returned as bytes, anything else refused.
    Nothing about ``who`` is looked at (its ``authenticated``, its repr) unless the message is refused."""
    if sid == s.id:
        return s.decode(view)
    if sid == 0:
        return view.tobytes()
    other = by_id(sid)
    name = other.name if other is not None else f"unknown id {sid}"
    if other is not None and other.trusted_only and not who._live().authenticated:
        raise AuthenticationError(f"the peer sent a {name} message on an unauthenticated channel; it "
                                  "was discarded without being decoded")
    raise ProtocolError(f"the peer sent a {name} message but {who!r} uses {s.name}; the message "
                        "was discarded (use the same serializer= on both sides)")


def writable_bytes(buffer: Any, offset: int) -> memoryview:
    """``buffer`` as a writable flat byte view with room from ``offset`` (recv_bytes_into's checks)."""
    if not isinstance(offset, int):
        raise TypeError(f"recv_bytes_into needs an int offset, not {type(offset).__name__}")
    dst = memoryview(buffer).cast("B")
    if dst.readonly:
        raise TypeError("recv_bytes_into needs a writable buffer")
    if not 0 <= offset <= len(dst):
        raise ValueError(f"offset {offset} is outside the {len(dst)}-byte buffer")
    return dst


def copy_message(view: memoryview, dst: memoryview, offset: int) -> int:
    """Copy a received message into ``dst`` at ``offset``; BufferTooSmall (keeping it) if it does not fit."""
    n = view.nbytes
    if n > len(dst) - offset:
        raise BufferTooSmall(f"a {n}-byte message does not fit the {len(dst) - offset} bytes left "
                             "in the buffer; the message is in this exception's .data",
                             view.tobytes(), len(dst) - offset)
    dst[offset:offset + n] = view
    return n


def bytes_view(data: Any, offset: int = 0, size: int | None = None) -> memoryview:
    """``size`` bytes of ``data`` from ``offset`` as a flat byte view (send_bytes; shared with aio)."""
    mv = memoryview(data)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    if offset or size is not None:
        n = len(mv)
        if offset < 0 or offset > n:
            raise ValueError(f"offset {offset} is outside the {n}-byte buffer")
        end = n if size is None else offset + size
        if size is not None and (size < 0 or end > n):
            raise ValueError(f"size {size} at offset {offset} leaves the {n}-byte buffer")
        mv = mv[offset:end]
    return mv


def _no_extras(obj: object, extra: dict[str, Any]) -> None:
    raise TypeError(f"{obj!r} takes no mechanism options; got {', '.join(sorted(extra))}")


class Channel(_MessageIO[T]):
    """A duplex, point-to-point message channel, from :func:`ipcraft.connect`, ``Listener.accept``
    or :func:`ipcraft.pipe`.

    ``with channel:`` closes it on exit.  Iterating yields messages until the peer closes.  Closing
    one end makes the other's ``recv`` raise ChannelClosed after the last message.

    .. versionadded:: 0.1
    """


class Queue(_MessageIO[T]):
    """A many-to-many message queue over a named kernel object, from :func:`ipcraft.queue`.

    The handle that created the object is its ``owner`` and removes it on ``close()``; handles that
    only opened it never do.  Unlike a channel, a queue has no end of stream: ``recv`` waits until a
    message arrives or the timeout passes.

    .. versionadded:: 0.1
    """

    _latch_eof = False

    @property
    def owner(self) -> bool:
        """True if this handle created the named object and will unlink it on close()."""
        return self._transport is not None and self._transport.owner

    def unlink(self) -> None:
        """Remove the named object now; handles already open keep working until they close."""
        self._live().unlink()


class Listener(Handle, Generic[T], metaclass=_NoPublicConstructor):
    """Accepts channels on a bound endpoint, from :func:`ipcraft.listen`.

    ``endpoint`` is the bound address (a port 0 resolved); ``str(listener.endpoint)`` is the URL a
    client connects to.  Iterating accepts forever.  ``close()`` stops listening and removes the
    socket file it created; channels already accepted stay open.

    .. versionadded:: 0.1
    """

    _impl: Any = None

    def __init__(self, impl: Any, endpoint: Endpoint, channel_options: dict[str, Any]) -> None:
        self._impl = impl
        bound = impl.endpoint if isinstance(impl, BoundEndpoint) else None
        self.endpoint: Endpoint = bound or endpoint
        self._channel_options = channel_options

    def accept(self, timeout: float | None = None) -> Channel[T]:
        """Wait for the next client and return its channel.

        Raises:
            Timeout: no client came in time; the listener is usable.
            HandleClosed: the listener was closed.
        """
        if self._closed:
            self._raise_closed()
        transport = self._impl.accept(deadline_after(timeout))
        return Channel._create(transport, self.endpoint, **self._channel_options)  # type: ignore[no-any-return]

    def _handshake_expiry(self) -> float | None:
        """When the earliest pending client handshake expires (monotonic; None if none is pending):
        ipcraft.aio wakes then, so that accept() drops that client on time."""
        if self._closed:
            return None
        expiry: float | None = self._impl.next_deadline()
        return expiry

    def fileno(self) -> int:
        """Readable when a client is waiting to be accepted."""
        if self._closed:
            self._raise_closed()
        return int(self._impl.fileno())

    def _close(self) -> None:
        impl, self._impl = self._impl, None
        if impl is not None:
            impl.close()

    def __iter__(self) -> Iterator[Channel[T]]:
        while True:
            try:
                yield self.accept()
            except HandleClosed:
                return

    def __repr__(self) -> str:
        return f"<Listener {self.endpoint} {'closed' if self._closed else 'open'}>"
