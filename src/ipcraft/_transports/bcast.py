"""bcast://name — the one-to-many shared-memory broadcast ring (layout and reasons: ipcraft/_rings/bcast.py).

Two ports over one mapping, each implementing the pub/sub port interface of ipcraft/_pubsub.py:

* :class:`BcastPublisherPort`: appends messages (``send``, or ``reserve``/``commit``/``abort`` for zero
  copy).
* :class:`BcastSubscriberPort`: owns a slot of the subscriber table, reads at its own cursor.

The ring is a POSIX shared memory segment /dev/shm/name, created owner-only (``mode=``, default 0600)
by whichever handle finds it missing when told to create it (``publish`` does by default).  That
handle is the owner: its close() removes the name (handles already open keep working).  Creation
options (``capacity=``, ``on_slow=``, ``slow_timeout=``, ``max_subscribers=``) are read only by the
creator; an opener uses the ring's own.
"""

from __future__ import annotations

import errno
import os
import time
from typing import Any

from .. import _native
from .._endpoint import Endpoint
from .._framing import DEFAULT_MAX_MESSAGE_SIZE, HEADER, HEADER_SIZE, MAGIC
from .._names import DEFAULT_MODE
from .._rings import bcast as _bcast
from .._wait import remaining
from ..errors import HandleClosed, ProtocolError
from ..primitives.shm import PosixSharedMemory
from ._contract import TryRecv, TryRecvMany, TrySend, TrySendMany

_OPEN_RETRIES = 100  # create="if_missing": rounds of "missing -> create -> exists" before giving up
_DEFAULT_SLOW_TIMEOUT = 5.0


class _Mapping:
    """The shared memory of one handle: created or opened, checked, closed (the owner unlinks)."""

    mem: PosixSharedMemory | None = None
    view: memoryview | None = None

    def __init__(self, endpoint: Endpoint, create: bool | str) -> None:
        self.endpoint = endpoint
        self.what = f"bcast://{endpoint.address}"
        opts = endpoint.options
        try:
            self.mem = self._open(create)
            self.view = self.mem.buf
            if self.mem.owner:
                capacity = _bcast.round_capacity(opts.get("capacity", _bcast.DEFAULT_CAPACITY))
                _bcast.format_ring(self.view, capacity, self._slots, opts.get("on_slow", "drop") == "block",
                                   opts.get("slow_timeout", _DEFAULT_SLOW_TIMEOUT))
            self.header = _bcast.check_ring(self.view, self.what)
        except BaseException:
            self.close()
            raise
        st = os.fstat(self.mem.fileno())
        # Whoever may write the ring may inject messages: pickle only if that is this uid (or root).
        self.authenticated = st.st_uid in (os.geteuid(), 0) and not st.st_mode & 0o022
        self.limit_source = (f"the capacity of {self.what}: {self.header.capacity} bytes of ring, of which a "
                             "message may take half; set by capacity= when it was created")

    @property
    def _slots(self) -> int:
        n = int(self.endpoint.options.get("max_subscribers", _bcast.DEFAULT_SLOTS))
        if n > _bcast.MAX_SLOTS:
            raise ValueError(f"max_subscribers={n} exceeds ipcraft's maximum of {_bcast.MAX_SLOTS}")
        return n

    def _open(self, create: bool | str) -> PosixSharedMemory:
        name, opts = self.endpoint.address, self.endpoint.options
        if create not in (True, False, "if_missing"):
            raise ValueError(f"create is True, False or 'if_missing', not {create!r}")

        def make() -> PosixSharedMemory:
            capacity = _bcast.round_capacity(opts.get("capacity", _bcast.DEFAULT_CAPACITY))
            return PosixSharedMemory.create(name, _bcast.ring_size(capacity, self._slots),
                                            opts.get("mode", DEFAULT_MODE))

        if create is True:
            return make()
        if create is False:
            return PosixSharedMemory.open(name)
        for _ in range(_OPEN_RETRIES):
            try:
                return PosixSharedMemory.open(name)
            except FileNotFoundError:
                pass
            try:
                return make()
            except FileExistsError:
                pass
        raise FileExistsError(errno.EEXIST, f"{self.what}: it kept appearing and vanishing while being opened")

    @property
    def owner(self) -> bool:
        return self.mem is not None and self.mem.owner

    def unlink(self) -> None:
        if self.mem is None:
            raise HandleClosed(f"{self.what} is closed")
        self.mem.unlink()

    def close(self) -> None:
        view, self.view = self.view, None
        mem, self.mem = self.mem, None
        if view is not None:
            try:
                view.release()
            except BufferError:
                pass  # another thread is still inside an operation: the mapping outlives it
        if mem is not None:
            mem.close()  # the owner's removes the name


def _spin_ns(endpoint: Endpoint) -> int:
    return -1 if endpoint.options.get("wait", "block") == "spin" else _bcast.SPIN_NS


class BcastPublisherPort:
    """A publisher on a bcast:// ring: one entry of the publisher table, the lock when sending."""

    _map: _Mapping | None = None
    _port: _native.BcastPort | None = None
    _entry = -1

    def __init__(self, endpoint: Endpoint, create: bool | str = "if_missing") -> None:
        self.endpoint = endpoint
        self._map = m = _Mapping(endpoint, create)
        try:
            assert m.view is not None
            self._port = _native.BcastPort(m.view, spin_ns=_spin_ns(endpoint))
            self._entry = _bcast.register_publisher(m.view, m.what)
        except BaseException:
            self.close()
            raise
        self.what, self.authenticated, self.limit_source = m.what, m.authenticated, m.limit_source
        self.max_payload = _bcast.max_message(m.header.capacity)
        self._port.limit = default_max_message_size(endpoint)

    def fast_path(self) -> tuple[TrySend, TryRecv]:
        """``(try_send(data, sid=0) -> bool, -)``: a whole non-blocking publication in one C call
        (frame header, lock, room check, copy, head store, wake-up); False sends nothing and leaves the
        message to :meth:`send` (no room now, another publisher holds the lock, over the limits)."""
        return self._live().try_send, _no_recv

    def fast_batches(self) -> tuple[TrySendMany, TryRecvMany]:
        """``(try_send_many(payloads, sid=0) -> int, -)``: the longest prefix that fits now, published
        with one store of head and one wake-up."""
        return self._live().try_send_many, _no_recv_many

    @property
    def owner(self) -> bool:
        return self._map is not None and self._map.owner

    def _live(self) -> _native.BcastPort:
        if self._port is None:
            raise HandleClosed(f"{self.endpoint} is closed")
        return self._port

    def send(self, sid: int, payload: Any, deadline: float | None) -> None:
        rc = self._live().send(sid, payload, remaining(deadline))
        if rc < 0:
            raise self.error(rc, memoryview(payload).nbytes)

    def error(self, rc: int, size: int = 0) -> Exception:
        return _bcast.bcast_error(rc, f"publishing on {self.what}", size=size,
                                  limit=self.max_payload - HEADER_SIZE, limit_source=self.limit_source)

    def reserve(self, n: int, deadline: float | None) -> memoryview:
        """Reserve a message of ``n`` bytes in the ring (other publishers wait until commit or abort)."""
        port, m = self._live(), self._map
        assert m is not None and m.view is not None
        off = port.reserve(n + HEADER_SIZE, remaining(deadline))
        if off < 0:
            raise self.error(off, n)
        HEADER.pack_into(m.view, off, MAGIC, 0, 0, n)
        return m.view[off + HEADER_SIZE:off + HEADER_SIZE + n]

    def commit(self) -> None:
        """Publish the reserved message (as RAW bytes)."""
        self._live().commit()

    def abort(self) -> None:
        """Drop the reservation: nothing is published."""
        self._live().abort()

    def extra(self) -> dict[str, Any]:
        m = self._map
        assert m is not None and m.view is not None
        port = self._live()
        return {"ring_capacity": m.header.capacity, "on_slow": "block" if m.header.block else "drop",
                "slow_timeout": m.header.slow_timeout, "subscribers": _bcast.subscribers(m.view),
                "publishers": _bcast.publishers(m.view), "evicted": port.evicted, "recovered_locks": port.recovered}

    def unlink(self) -> None:
        if self._map is None:
            raise HandleClosed(f"{self.endpoint} is closed")
        self._map.unlink()

    def close(self) -> None:
        port, self._port = self._port, None
        m, self._map = self._map, None
        try:
            if m is not None and m.view is not None and self._entry >= 0:
                _bcast.unregister_publisher(m.view, self._entry)
                if port is not None:
                    port.wake_all()  # sleeping subscribers re-check: the stream may have ended
        finally:
            if port is not None:
                port.close()
            if m is not None:
                m.close()


class BcastSubscriberPort:
    """A subscriber on a bcast:// ring: its slot, its cursor, its missed count, its fileno()."""

    _map: _Mapping | None = None
    _port: _native.BcastPort | None = None
    _fd: _bcast.FdWake | None = None
    _slot = -1
    _token = 0
    _limit = DEFAULT_MAX_MESSAGE_SIZE
    #: Bumped when the port rejoins with a new slot (its fast paths are then new ones).
    generation = 0

    def __init__(self, endpoint: Endpoint, create: bool | str = False) -> None:
        self.endpoint = endpoint
        self.missed = 0
        self._map = m = _Mapping(endpoint, create)
        try:
            assert m.view is not None
            self._slot, self._token = _bcast.claim_slot(m.view, m.header.slots, m.what)
            self._port = _native.BcastPort(m.view, slot=self._slot, token=self._token, spin_ns=_spin_ns(endpoint))
            self._start(endpoint.options.get("start", "next"))
            self._fd = _bcast.FdWake(m.view, self._slot, self._token)
        except BaseException:
            self.close()
            raise
        self._limit = default_max_message_size(endpoint)
        self._port.limit = self._limit
        self.what, self.authenticated = m.what, m.authenticated
        self._scratch = bytearray(64 * 1024)
        self._reaped_at = 0.0

    def _start(self, start: str) -> None:
        """Set the cursor where ``start`` says, then go live (block-mode publishers now wait for us)."""
        m, port = self._map, self._port
        assert m is not None and m.view is not None and port is not None
        buf = m.view
        if start == "oldest":
            port.seek(_native.atomic_load_u64(buf, _bcast.OFF_OLDEST), 0)
            _bcast.set_live(buf, self._slot)
            rc = port.resync()  # the oldest may have been overwritten before we were live: settle
            if rc < 0:
                raise _bcast.bcast_error(rc, f"subscribing to {self.what}")
            return
        rc = port.join(start == "latest")
        if rc < 0:
            raise _bcast.bcast_error(rc, f"subscribing to {self.what}")
        _bcast.set_live(buf, self._slot)
        if not _bcast.intact(buf, port.cursor[0], m.header.capacity):
            # overwritten before we were live (block mode publishers did not wait for us yet): settle
            rc = port.resync()
            if rc < 0:
                raise _bcast.bcast_error(rc, f"subscribing to {self.what}")

    def _live(self) -> _native.BcastPort:
        if self._port is None:
            raise HandleClosed(f"{self.endpoint} is closed")
        return self._port

    @property
    def limit(self) -> int:
        """The largest payload the fast paths take (the Subscriber keeps it at its max_message_size); a
        longer message stays in the ring for :meth:`recv`, whose caller refuses it."""
        return self._limit

    @limit.setter
    def limit(self, n: int) -> None:
        self._limit = n
        if self._port is not None:
            self._port.limit = n

    def _view(self) -> memoryview:
        m = self._map
        assert m is not None and m.view is not None
        return m.view

    def _settle(self, rc: int, deadline: float | None) -> None:
        """Handle a negative return of a receive: raise, or return to try again."""
        if rc == -errno.EOVERFLOW or rc == -errno.ESTALE:
            evicted = rc == -errno.ESTALE
            missed = self._live().resync()
            if missed == 0 and not evicted:
                return  # only a pad record before the next message was overwritten: nothing was lost
            if missed == -errno.ESTALE:  # the slot itself was taken from us (reaped as dead): rejoin
                self._rejoin()
                missed = 0
            elif missed < 0:
                raise _bcast.bcast_error(missed, f"receiving on {self.what}")
            self.missed += missed
            raise _bcast.missed_error(missed, self.what, evicted)
        if rc == -errno.EPIPE:
            raise _bcast.ended_error(self._view(), self.what)
        if rc == -errno.ETIMEDOUT:
            if remaining(deadline) != 0:
                return  # a slice of the wait: look for dead publishers, then wait on
            if self._fd is not None and self._fd.active:
                self._fd.rearm(self._live().pending())  # select/epoll users wait for the next one
        raise _bcast.bcast_error(rc, f"receiving on {self.what}")

    def _rejoin(self) -> None:
        m = self._map
        assert m is not None and m.view is not None
        port, self._port = self._port, None
        if port is not None:
            port.close()
        self._slot, self._token = _bcast.claim_slot(m.view, m.header.slots, m.what)
        self._port = _native.BcastPort(m.view, slot=self._slot, token=self._token,
                                       spin_ns=_spin_ns(self.endpoint))
        self._port.limit = self._limit
        self.generation += 1
        self._start("oldest")
        if self._fd is not None:
            self._port.fd_user = int(self._fd.active)
            self._fd.close()
        self._fd = _bcast.FdWake(m.view, self._slot, self._token)

    def _slice(self, deadline: float | None) -> float | None:
        """The timeout of one wait: at most REAP_INTERVAL, then dead publishers are looked for."""
        now = time.monotonic()
        if now - self._reaped_at >= _bcast.REAP_INTERVAL:
            self._reaped_at = now
            _bcast.reap_publishers(self._view())
        left = remaining(deadline)
        return _bcast.REAP_INTERVAL if left is None else min(left, _bcast.REAP_INTERVAL)

    def fast_path(self) -> tuple[TrySend, TryRecv]:
        """``(-, try_recv() -> bytes | None)``: the next message's payload in one C call when it is there
        (or comes while it spins briefly), an ordinary frame of at most max_message_size bytes; None
        takes nothing and leaves the receive to :meth:`recv` (nothing yet, a lap, an eviction, the end,
        another serializer's frame in a batch, over max_message_size, a handle that gave out a fileno()).
        A large message is copied once, without the GIL, from the ring into the new bytes.
        The pair is this port's until a rejoin after being reaped (:attr:`generation` changes)."""
        return _no_send, self._live().try_recv

    def fast_batches(self) -> tuple[TrySendMany, TryRecvMany]:
        """``(-, try_recv_many(max_messages, sid) -> list[bytes])``: the messages there now, taken with
        one publication of the cursor."""
        return _no_send_many, self._live().try_recv_many

    def recv(self, deadline: float | None) -> memoryview:
        """The next record (frame header included), valid until the next recv; waits until ``deadline``."""
        port = self._live()
        while True:
            rc = port.recv_into(self._scratch, 0.0)
            if rc == -errno.ETIMEDOUT:
                rc = port.recv_into(self._scratch, self._slice(deadline))
            if rc >= 0:
                break
            if rc == -errno.ENOBUFS:
                # A new buffer, not a resize: the view handed out last time may still be alive.
                self._scratch = bytearray(1 << (port.needed - 1).bit_length())
                continue
            self._settle(rc, deadline)
            port = self._live()
        if self._fd is not None and self._fd.active:
            self._fd.rearm(port.pending())
        return memoryview(self._scratch)[:rc]

    def peek(self, deadline: float | None) -> tuple[memoryview, int]:
        """Lend the next record in place: ``(read-only payload view, serializer id)``."""
        while True:
            port = self._live()
            got = port.peek(self._slice(deadline))
            if isinstance(got, tuple):
                break
            self._settle(got, deadline)
        off, n = got
        view = self._view()[off:off + n].toreadonly()
        magic, sid, flags, length = HEADER.unpack_from(view, 0)
        if magic != MAGIC or flags or length != n - HEADER_SIZE:
            port.consume()
            raise ProtocolError(f"receiving on {self.what}: a record without ipcraft's frame header; it was "
                                "skipped")
        return view[HEADER_SIZE:], sid

    def consume(self) -> None:
        """Consume the lent record; a record overwritten while lent raises MessagesMissed here."""
        rc = self._live().consume()
        if rc < 0:
            self._settle(rc, None)

    def latest(self, deadline: float | None) -> memoryview:
        """The most recent record (frame header included) without moving the cursor."""
        port = self._live()
        while True:
            rc = port.latest_into(self._scratch)
            if rc >= 0:
                return memoryview(self._scratch)[:rc]
            if rc == -errno.ENOBUFS:
                self._scratch = bytearray(1 << (port.needed - 1).bit_length())
                continue
            if rc != -errno.EAGAIN:
                raise _bcast.bcast_error(rc, f"reading the latest message of {self.what}")
            w = port.wait(self._slice(deadline), 0)
            if w == -errno.ETIMEDOUT and remaining(deadline) == 0:
                raise _bcast.bcast_error(w, f"waiting for a first message on {self.what}")
            if w == -errno.EPIPE:
                raise _bcast.ended_error(self._view(), self.what)

    def wait_readable(self, deadline: float | None) -> bool:
        """Whether a message (or a lap, an eviction, the end) is ready, waiting until ``deadline``."""
        port = self._live()
        while True:
            rc = port.wait(0.0)
            if rc == -errno.ETIMEDOUT and remaining(deadline) != 0:
                rc = port.wait(self._slice(deadline))
            if rc == 0 or rc == -errno.EPIPE:
                return True
            if rc != -errno.ETIMEDOUT:
                raise _bcast.bcast_error(rc, f"waiting on {self.what}")
            if remaining(deadline) == 0:
                if self._fd is not None and self._fd.active:
                    self._fd.rearm(port.pending())
                return False

    def fileno(self) -> int:
        self._live().fd_user = 1  # receive by the general path from now on: it re-arms the fd
        assert self._fd is not None
        fd = self._fd.fileno()
        self._fd.rearm(self._live().pending())
        return fd

    def position(self) -> tuple[int, int]:
        """(cursor, next expected sequence number), for tests and ``extra``."""
        return self._live().cursor

    def extra(self) -> dict[str, Any]:
        m = self._map
        assert m is not None and m.view is not None
        self._live()
        return {"ring_capacity": m.header.capacity, "on_slow": "block" if m.header.block else "drop",
                "slow_timeout": m.header.slow_timeout, "slot": self._slot, "missed": self.missed,
                "subscribers": _bcast.subscribers(m.view), "publishers": _bcast.publishers(m.view)}

    @property
    def owner(self) -> bool:
        return self._map is not None and self._map.owner

    def unlink(self) -> None:
        if self._map is None:
            raise HandleClosed(f"{self.endpoint} is closed")
        self._map.unlink()

    def close(self) -> None:
        fd, self._fd = self._fd, None
        port, self._port = self._port, None
        m, self._map = self._map, None
        try:
            if fd is not None:
                fd.close()
            if m is not None and m.view is not None and self._slot >= 0:
                _bcast.free_slot(m.view, self._slot, self._token)
        finally:
            if port is not None:
                port.close()
            if m is not None:
                m.close()


def _no_send(data: Any, sid: int = 0) -> bool:
    return False  # a subscriber does not publish


def _no_send_many(payloads: Any, sid: int = 0) -> int:
    return 0


def _no_recv() -> bytes | None:
    return None  # a publisher does not receive


def _no_recv_many(max_messages: int, sid: int = -1) -> list[bytes]:
    return []


def default_max_message_size(endpoint: Endpoint) -> int:
    return int(endpoint.options.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE))
