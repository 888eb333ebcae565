"""asyncio mirror of ipcraft's facade: the same names, with ``async`` methods.

::

    ch = await ipcraft.aio.connect("unix:///run/app.sock")
    await ch.send({"op": "ping"})
    reply = await ch.recv(timeout=5)

    async with await ipcraft.aio.listen("unix:///run/app.sock") as listener:
        async for ch in listener: ...

Decisions:

* **A mirror, not a second implementation.**  Each wrapper holds the sync Channel/Listener/Queue.
  A receive is the sync operation with ``timeout=0``, and on Timeout the task sleeps in
  ``loop.add_reader(fileno)`` until the fd is readable, then tries again.  A byte-stream channel keeps
  a partly received frame in its reader between tries, so nothing is lost and **cancelling a pending
  receive leaves the channel usable**.
* **Sends never cut a frame.**  On a message transport (seqpacket, datagrams, queues) one try sends a
  whole message or nothing, so the task waits in ``add_writer`` and tries again.  On a byte stream
  (pipes, unix://, tcp://) ipcraft writes the frame's parts itself with non-blocking ``writev`` /
  ``sendmsg`` and waits in ``add_writer`` between partial writes.  A send cancelled or timed out
  after part of its frame went out closes the channel (a stream cannot be resumed mid-frame), as the
  sync Timeout does; one cancelled before any byte went out leaves it usable.
* **Worker threads only where there is no fd.**  Mechanisms without a file descriptor (System V
  queues) wait in a worker thread (asyncio.to_thread) in slices of 50 ms, so a cancelled wait ends
  soon and never consumes a message; the operation itself still runs on the loop.  TLS streams send in
  a worker thread (their writes cannot be split safely by hand).  ``queue()`` runs in a worker
  thread too (opening a FIFO may wait for its reader); a queue such a thread produces after its
  caller was cancelled is closed, not leaked.
* **Handshakes on the loop.**  ``connect()`` and ``accept()`` run their handshakes on the event loop
  (the resumable steps of ``_transports._sockets``), never on a thread pool: any number of clients
  and a listener in one loop cannot starve each other.  A cancelled connect closes its socket.
* ``close()`` is a plain method: closing never waits.  A task waiting on the channel then gets
  HandleClosed.

.. versionadded:: 0.1
"""

from __future__ import annotations

import asyncio
import errno
import io
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from . import _connect, _framing
from ._aio_pubsub import Publisher as Publisher
from ._aio_pubsub import Subscriber as Subscriber
from ._aio_pubsub import publish as publish
from ._aio_pubsub import subscribe as subscribe
from ._channel import Listener as _SyncListener
from ._channel import Queue as _SyncQueue
from ._channel import _MessageIO, _no_extras, _NoPublicConstructor, bytes_view
from ._endpoint import Endpoint
from ._errors import os_error
from ._framing import batch_parts, frame_parts
from ._peer import Peer
from ._resource import ConflictDetector
from ._transports._framed import FramedStream, RawStream
from ._transports._io import IOV_MAX, consume
from ._transports._sockets import run_async
from ._wait import deadline_after, remaining
from .errors import ChannelClosed, HandleClosed, Timeout
from .serializers import MSGPACK, Serializer

__all__ = ("connect", "listen", "queue", "pipe", "publish", "subscribe", "Channel", "Listener", "Queue", "Publisher",
           "Subscriber")

#: The message ports that are adapters over a byte stream (their reader belongs to the receiving task).
_STREAM_PORTS = (FramedStream, RawStream)

_T = TypeVar("_T")
_R = TypeVar("_R")

_SLICE = 0.05  # seconds a worker-thread wait sleeps before checking whether it was cancelled


def _wake(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class _FdWaiter:
    """Waits for readiness of one fd on the running loop; close() wakes every waiter with HandleClosed."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self._futures: set[asyncio.Future[bool]] = set()
        self._closed = False

    async def wait(self, write: bool, deadline: float | None) -> bool:
        """True when the fd is ready, False when ``deadline`` passed first."""
        left = remaining(deadline)
        if left == 0:
            return False
        assert self.fd is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
        add(self.fd, _wake, fut, True)
        timer = loop.call_later(left, _wake, fut, False) if left is not None else None
        self._futures.add(fut)
        try:
            return await fut
        finally:
            self._futures.discard(fut)
            if timer is not None:
                timer.cancel()
            if not self._closed:  # after close() the fd number may already belong to someone else
                remove(self.fd)

    def close(self, what: str) -> None:
        self._closed = True
        if not self._futures or self.fd is None:
            return
        loop = next(iter(self._futures)).get_loop()
        loop.remove_reader(self.fd)
        loop.remove_writer(self.fd)
        for fut in list(self._futures):
            if not fut.done():
                fut.set_exception(HandleClosed(f"{what} was closed while a task waited on it"))


def _fd_of(sync: Any) -> int | None:
    try:
        return int(sync.fileno())
    except (NotImplementedError, AttributeError, io.UnsupportedOperation, OSError):
        return None


async def _in_thread(func: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
    """Run ``func`` in a worker thread; a result that arrives after cancellation is closed."""
    lock = threading.Lock()
    state: dict[str, Any] = {"abandoned": False}

    def run() -> _R:
        result = func(*args, **kwargs)
        with lock:
            if state["abandoned"]:
                result.close()  # type: ignore[attr-defined]
            else:
                state["result"] = result
        return result

    try:
        return await asyncio.to_thread(run)
    except asyncio.CancelledError:
        with lock:
            state["abandoned"] = True
            if "result" in state:
                state["result"].close()
        raise


class _AsyncMessageIO(Generic[_T], metaclass=_NoPublicConstructor):
    """The async surface Channel and Queue share; each method mirrors the sync one of the same name."""

    def __init__(self, sync: _MessageIO[Any]) -> None:
        self._sync = sync
        self._waiter = _FdWaiter(_fd_of(sync))
        self._thread_mode = self._waiter.fd is None
        self._receiving = ConflictDetector("receiving")
        self._sending = ConflictDetector("sending")

    # -- facts, as on the sync object ---------------------------------------------------------------------

    @property
    def endpoint(self) -> Endpoint | None:
        return self._sync.endpoint

    @property
    def peer(self) -> Peer:
        return self._sync.peer

    @property
    def authenticated(self) -> bool:
        return self._sync.authenticated

    @property
    def serializer(self) -> Serializer:
        return self._sync.serializer

    @property
    def last_meta(self) -> dict[str, Any]:
        return self._sync.last_meta

    @property
    def closed(self) -> bool:
        return self._sync.closed

    def extra(self, name: str, default: Any = None) -> Any:
        return self._sync.extra(name, default)

    def fileno(self) -> int:
        return self._sync.fileno()

    def close(self) -> None:
        """Close the channel now (never waits); a task waiting on it gets HandleClosed."""
        self._waiter.close(repr(self))
        self._sync.close()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __enter__(self) -> Any:  # close() never waits, so a plain ``with`` works too
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<aio." + repr(self._sync)[1:]

    # -- receiving ----------------------------------------------------------------------------------

    async def recv(self, timeout: float | None = None, **extra: Any) -> _T:
        """Receive one message and deserialize it; as the sync ``recv``."""
        return await self._receive(lambda: self._sync.recv(0, **extra), timeout)

    async def recv_bytes(self, maxlength: int | None = None, *, timeout: float | None = None,
                         **extra: Any) -> bytes:
        """Receive one message as bytes; as the sync ``recv_bytes``."""
        return await self._receive(lambda: self._sync.recv_bytes(maxlength, timeout=0, **extra), timeout)

    async def recv_bytes_into(self, buffer: Any, offset: int = 0, *, timeout: float | None = None,
                              **extra: Any) -> int:
        """Receive one message into ``buffer``; as the sync ``recv_bytes_into``."""
        return await self._receive(lambda: self._sync.recv_bytes_into(buffer, offset, timeout=0, **extra),
                                   timeout)

    async def recv_many(self, max_messages: int, timeout: float | None = None) -> list[_T]:
        """Receive 1 to ``max_messages`` messages, waiting up to ``timeout`` for the first; as the sync
        ``recv_many``."""
        return await self._receive(lambda: self._sync.recv_many(max_messages, 0), timeout)

    async def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message is ready, waiting up to ``timeout`` (None: until one is)."""
        deadline = deadline_after(timeout)
        with self._receiving:
            while not self._sync.poll(0):
                if not await self._readable(deadline):
                    return False
            return True

    async def _receive(self, op: Callable[[], _R], timeout: float | None) -> _R:
        deadline = deadline_after(timeout)
        spins = 0
        # A readable stream always yields bytes or EOF; a message fd may stay readable with nothing
        # to take (another consumer was faster, an eventfd): count those wake-ups and back off.
        counts = not isinstance(self._sync._open_port(), _STREAM_PORTS)
        with self._receiving:
            while True:
                try:
                    return op()
                except Timeout:
                    pass
                if spins > 1:
                    await asyncio.sleep(min(0.0005 * 2 ** spins, 0.01))
                if not await self._readable(deadline):
                    raise Timeout(f"receiving on {self!r}: timed out after {timeout} s")
                spins += counts

    async def _readable(self, deadline: float | None) -> bool:
        if not self._thread_mode:
            return await self._waiter.wait(False, deadline)
        port = self._sync._open_port()
        # Only wait for readiness here (a framed stream's reader belongs to the receiving task).
        ready = port.stream.wait_readable if isinstance(port, _STREAM_PORTS) else port.wait_readable
        stop = threading.Event()

        def wait() -> bool:
            while not stop.is_set():
                left = remaining(deadline)
                if left == 0:
                    return False
                if ready(deadline_after(_SLICE if left is None else min(_SLICE, left))):
                    return True
            return False

        try:
            return await asyncio.to_thread(wait)
        finally:
            stop.set()

    async def __anext__(self) -> _T:
        try:
            return await self.recv()
        except ChannelClosed:
            raise StopAsyncIteration from None

    def __aiter__(self) -> Any:
        return self

    # -- sending ------------------------------------------------------------------------------------

    async def send(self, obj: _T, *, timeout: float | None = None, **extra: Any) -> None:
        """Serialize ``obj`` and send it as one message; as the sync ``send``."""
        sync = self._sync
        await self._send(lambda t: sync.send(obj, timeout=t, **extra),
                         lambda: (sync.serializer.id, sync.serializer.dumps(obj)), timeout, extra)

    async def send_bytes(self, data: Any, offset: int = 0, size: int | None = None, *,
                         timeout: float | None = None, **extra: Any) -> None:
        """Send bytes as one message; as the sync ``send_bytes``."""
        sync = self._sync
        await self._send(lambda t: sync.send_bytes(data, offset, size, timeout=t, **extra),
                         lambda: (0, bytes_view(data, offset, size)), timeout, extra)

    async def send_many(self, objs: Iterable[_T], *, timeout: float | None = None) -> int:
        """Serialize and send each of ``objs`` as its own message, in order; as the sync ``send_many``."""
        sync = self._sync
        s = sync.serializer
        items = list(objs)
        payloads = [s.dumps(obj) for obj in items]
        deadline = deadline_after(timeout)
        port = sync._open_port()
        if isinstance(port, FramedStream) and port.stream.splits_writes and not self._thread_mode:
            return await self._send_frames(port, s.id, payloads, deadline, timeout)
        sent = 0
        while sent < len(payloads):
            sent += sync._push_now(s.id, payloads, sent)
            if sent < len(payloads):  # the general path: waits for room without blocking the loop
                await self.send(items[sent], timeout=remaining(deadline))
                sent += 1
        return sent

    async def _send_frames(self, port: FramedStream, sid: int, payloads: list[Any], deadline: float | None,
                           timeout: float | None) -> int:
        """send_many over a framed byte stream: the batch's frames written together with the stream's
        non-blocking writes (one system call for a batch of small messages) between add_writer
        waits; the messages before one over the limit are sent, then that one raises."""
        sync = self._sync
        count, too_large = sync._batch_prefix(payloads)
        if count:
            with self._sending, sync._sending:  # as _send: sync senders in other threads kept off
                await self._send_stream(port.stream.write_some, batch_parts(sid, payloads[:count]),
                                        deadline, timeout)
        if too_large is not None:
            raise too_large
        return count

    async def _send(self, op: Callable[[float | None], None], frame: Callable[[], tuple[int, Any]],
                    timeout: float | None, extra: dict[str, Any]) -> None:
        """``op(timeout)`` is the sync send (public); ``frame() -> (sid, payload)`` what a byte stream
        gets written, a piece at a time, by this task."""
        sync = self._sync
        port = sync._open_port()
        deadline = deadline_after(timeout)
        with self._sending:
            if not isinstance(port, _STREAM_PORTS):
                await self._send_message(op, deadline, timeout)
                return
            stream = port.stream
            if self._thread_mode or not stream.splits_writes:  # TLS: a worker thread sends the frame
                await asyncio.to_thread(op, remaining(deadline))
                return
            if extra:
                _no_extras(sync, extra)
            sid, payload = frame()
            mv = sync._outgoing(payload)  # the channel's size check, as its own send makes it
            with sync._sending:  # keeps sync senders in other threads off the stream meanwhile
                parts = frame_parts(sid, mv) if isinstance(port, FramedStream) else port.parts(mv)
                await self._send_stream(stream.write_some, parts, deadline, timeout)

    async def _send_message(self, op: Callable[[float | None], None], deadline: float | None,
                            timeout: float | None) -> None:
        spins = 0
        timer = self._thread_mode or not getattr(self._sync._live(), "fd_writable", True)  # zmq: never writable
        while True:
            try:
                op(0)  # a message port sends a whole message or nothing
                return
            except Timeout:
                pass
            if timer or spins > 1:  # no fd, or one that does not signal room: back off
                if remaining(deadline) == 0:
                    raise Timeout(f"sending on {self!r}: timed out after {timeout} s (nothing was sent)")
                await asyncio.sleep(min(0.0005 * 2 ** spins, 0.01))
            elif not await self._waiter.wait(True, deadline):
                raise Timeout(f"sending on {self!r}: timed out after {timeout} s (nothing was sent)")
            spins += 1

    async def _send_stream(self, write: Callable[[list[memoryview]], int], parts: list[Any],
                           deadline: float | None, timeout: float | None) -> None:
        views = [memoryview(p).cast("B") for p in parts]
        total = sum(len(v) for v in views)
        sent = 0
        try:
            while views:
                try:
                    n = write(views[:IOV_MAX])
                except BlockingIOError:
                    if not await self._waiter.wait(True, deadline):
                        raise Timeout(f"sending on {self!r}: timed out after {timeout} s") from None
                    continue
                except OSError as exc:
                    raise os_error(exc.errno or errno.EPIPE, f"sending on {self!r}") from exc
                sent += n
                views = consume(views, n)
        except (Timeout, asyncio.CancelledError) as exc:
            if sent == 0:
                raise
            self.close()
            if isinstance(exc, Timeout):
                raise Timeout(f"sending on {self!r}: timed out after {sent} of {total} bytes of a frame; "
                              "the byte stream cannot be resumed mid-frame, so the channel was closed",
                              written=sent, closed=True) from None
            raise


class Channel(_AsyncMessageIO[_T]):
    """A duplex message channel with async methods, from :func:`connect`, :meth:`Listener.accept` or
    :func:`pipe`.  Mirrors :class:`ipcraft.Channel`: ``await ch.send(obj)``, ``await ch.recv()``,
    ``async for msg in ch``, ``async with ch``.

    .. versionadded:: 0.1
    """


class Queue(_AsyncMessageIO[_T]):
    """A many-to-many queue with async methods, from :func:`queue`; mirrors :class:`ipcraft.Queue`.

    .. versionadded:: 0.1
    """

    _sync: _SyncQueue[_T]

    @property
    def owner(self) -> bool:
        return self._sync.owner

    def unlink(self) -> None:
        self._sync.unlink()


class Listener(Generic[_T], metaclass=_NoPublicConstructor):
    """Accepts channels, from :func:`listen`; mirrors :class:`ipcraft.Listener`.

    ``accept()`` sleeps in ``add_reader`` on the listener's descriptor until a client is waiting or a
    handshake can move on, then advances the handshakes on the loop (the sync ``accept(0)``, which
    never waits): no worker thread, so no number of concurrent clients can starve it.  ``async for
    ch in listener`` accepts until the listener closes.

    .. versionadded:: 0.1
    """

    def __init__(self, sync: _SyncListener[_T]) -> None:
        self._sync = sync
        self._waiter = _FdWaiter(sync.fileno())
        self._accepting = ConflictDetector("accepting")

    @property
    def endpoint(self) -> Endpoint:
        return self._sync.endpoint

    @property
    def closed(self) -> bool:
        return self._sync.closed

    def fileno(self) -> int:
        return self._sync.fileno()

    async def accept(self, timeout: float | None = None) -> Channel[_T]:
        """Wait for the next client and return its channel.

        Raises:
            Timeout: no client came in time; the listener is usable.
            HandleClosed: the listener was closed.
        """
        deadline = deadline_after(timeout)
        with self._accepting:
            while True:
                if self._sync.closed:
                    self._sync.fileno()  # raises HandleClosed
                # Wake for a client, a handshake that can move, or the next handshake to expire.
                wake = self._sync._handshake_expiry()
                if deadline is not None and (wake is None or deadline < wake):
                    wake = deadline
                await self._waiter.wait(False, wake)
                try:
                    sync = self._sync.accept(0)  # advances every ready handshake; never waits
                except Timeout:
                    if remaining(deadline) == 0:
                        raise Timeout(f"accepting on {self!r}: timed out after {timeout} s") from None
                    continue
                return Channel._create(sync)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop listening (never waits); a task in accept() gets HandleClosed."""
        self._waiter.close(repr(self))
        self._sync.close()

    async def __aenter__(self) -> Listener[_T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __enter__(self) -> Listener[_T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> Listener[_T]:
        return self

    async def __anext__(self) -> Channel[_T]:
        try:
            return await self.accept()
        except HandleClosed:
            raise StopAsyncIteration from None

    def __repr__(self) -> str:
        return f"<aio.Listener {self.endpoint} {'closed' if self.closed else 'open'}>"


async def connect(url: str | Endpoint, timeout: float | None = None, **options: Any) -> Channel[Any]:
    """Connect to a listener; as :func:`ipcraft.connect`.  The handshake runs on the loop (its waits
    in ``add_reader``/``add_writer``), with no worker thread; a tcp:// host name is resolved first, in
    this thread.

    .. versionadded:: 0.1
    """
    sync = await run_async(_connect.connect_steps(url, timeout, **options))
    return Channel._create(sync)  # type: ignore[no-any-return]


async def listen(url: str | Endpoint, **options: Any) -> Listener[Any]:
    """Bind ``url`` and return an async :class:`Listener`; as :func:`ipcraft.listen`.

    .. versionadded:: 0.1
    """
    return Listener._create(_connect.listen(url, **options))  # type: ignore[no-any-return]


async def queue(url: str | Endpoint, create: bool | str = False, **options: Any) -> Queue[Any]:
    """Open or create a queue; as :func:`ipcraft.queue` (run in a worker thread: opening a FIFO may
    wait for its reader).

    .. versionadded:: 0.1
    """
    sync = await _in_thread(_connect.queue, url, create, **options)
    return Queue._create(sync)  # type: ignore[no-any-return]


def pipe(duplex: bool = True, *, serializer: str | Serializer = MSGPACK,
         max_message_size: int = _framing.DEFAULT_MAX_MESSAGE_SIZE) -> tuple[Channel[Any], Channel[Any]]:
    """Two connected async channels; as :func:`ipcraft.pipe` (a plain function: nothing to wait for).

    Call it before forking: a child inherits both ends and may run its own event loop on them.

    .. versionadded:: 0.1
    """
    a, b = _connect.pipe(duplex, serializer=serializer, max_message_size=max_message_size)
    return Channel._create(a), Channel._create(b)

