"""ring://name and file:///path — the multi-producer multi-consumer shared-memory queue (see _rings/mpmc.py).

Every handle may send and receive; each message goes to exactly one receiver.

* ``ring://name`` is a POSIX shared memory segment /dev/shm/name.  ``create=True`` makes it
  (exclusively, mode 0600 unless ``mode=``) and that handle is the owner: its close() removes the
  name (handles already open keep working).  Openers never remove it.  A crashed owner leaves the
  segment behind; ``ipcraft rm`` or unlink() removes it.
* ``file:///path`` is the same ring in a regular file, durable (see _rings/mpmc.py for exactly what
  survives what).  **Decision: close() never deletes the file, not even the creator's**, because a
  durable queue is kept for the next run; call ``Queue.unlink()`` to delete it.  Reopening after a
  crash recovers it (the first opener that finds nobody else using it resets the locks and checks the
  pending records).  ``sync=true`` msyncs every send and receive (survives an OS crash; costs a disk
  flush per message).

Options: ``capacity=`` (bytes of ring, rounded up to a power of two >= 4096, default 4 MiB; only at
creation: an opener uses the ring's own), ``mode=`` (creation), ``wait=block|spin`` (each handle's
own choice: spin 100 us then sleep, or never sleep), and ``sync=`` for file://.

There is no end of stream and no dead-peer error: a queue has no single peer, producers and
consumers come and go (a receiver on an empty queue waits for the next producer, like mq://).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Sequence
from typing import Any

from .. import _native
from .._endpoint import Endpoint
from .._errors import mpmc_error, translating
from .._framing import DEFAULT_MAX_MESSAGE_SIZE, header
from .._names import DEFAULT_MODE
from .._rings import mpmc as _mpmc
from ..errors import HandleClosed
from ..primitives.mmap_file import MappedFile
from ..primitives.shm import PosixSharedMemory
from . import framed, unframe
from ._contract import Message, NativeLend, Transport, TryRecv, TryRecvInto, TryRecvMany, TrySend, TrySendMany

_OPEN_RETRIES = 100  # create="if_missing": rounds of "missing -> create -> exists" before giving up


def open_queue(endpoint: Endpoint, create: bool | str) -> Transport:
    """Create (``create`` true), open (False) or open-else-create ("if_missing") the queue."""
    if create != "if_missing":
        return MpmcTransport(endpoint, bool(create))
    for _ in range(_OPEN_RETRIES):
        try:
            return MpmcTransport(endpoint, False)
        except FileNotFoundError:
            pass
        try:
            return MpmcTransport(endpoint, True)
        except FileExistsError:
            pass
    raise FileExistsError(errno.EEXIST, f"{endpoint}: it kept appearing and vanishing while being opened")


class MpmcTransport(Transport):
    """A ring:// or file:// queue handle: a mapping, its MpmcPort, and (file://) a shared flock."""

    _mem: PosixSharedMemory | MappedFile | None = None
    _view: memoryview | None = None
    _port: _mpmc.MpmcPort | None = None
    _mirror: _native.MirrorMap | None = None
    _ino: tuple[int, int] | None = None
    _owner_pid = -1

    @property
    def owner(self) -> bool:  # type: ignore[override]
        """The creating handle, in the creating process (a fork()ed copy is not the owner)."""
        return self._owner_pid == os.getpid()

    def __init__(self, endpoint: Endpoint, create: bool) -> None:
        self.endpoint = endpoint
        self.durable = endpoint.scheme == "file"
        self.discarded = 0  # bytes of damaged records cut by recovery when this handle opened
        opts = endpoint.options
        sep = "://" if endpoint.address.startswith("/") or not self.durable else ":"
        what = f"{endpoint.scheme}{sep}{endpoint.address}"
        try:
            if create:
                capacity = _mpmc.round_capacity(opts.get("capacity", _mpmc.DEFAULT_CAPACITY))
                self._mem = self._create(_mpmc.ring_size(capacity), opts.get("mode", DEFAULT_MODE))
                self._view = self._mem.buf
                _mpmc.format_ring(self._view, capacity, _mpmc.FLAG_DURABLE if self.durable else 0)
                self._owner_pid = os.getpid()
                if self.durable:
                    self._flock(fcntl.LOCK_SH)
            else:
                self._mem = self._open()
                self._view = self._mem.buf
                if self.durable:
                    self._attach_durable(what)
            self._mirror = self._map_mirror(what)
            self._port = _mpmc.MpmcPort(self._view if self._mirror is None else self._mirror, what,
                                        spin=opts.get("wait", "block") == "spin",
                                        sync=bool(opts.get("sync", False)),
                                        limit=opts.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE))
        except BaseException:
            self.close()
            raise
        st = os.fstat(self._mem.fileno())
        self._ino = (st.st_dev, st.st_ino)
        # Whoever may write the queue may inject messages: pickle only if that is this uid (or root).
        self.authenticated = st.st_uid in (os.geteuid(), 0) and not st.st_mode & 0o022
        self.max_payload = _mpmc.max_message(self._port.capacity)
        self.limit_source = self._port.limit_source

    def _map_mirror(self, what: str) -> _native.MirrorMap | None:
        """The ring mapped once more with its data area twice in a row (``_native.MirrorMap``), for the
        port: a record that wraps around the ring's end is then contiguous in memory, so recv_view()
        and send_view() lend it in place instead of through a copy.  The file is unchanged; None (lend
        wrapping records from a copy, as before) where the page size or the kernel does not allow it."""
        assert self._mem is not None and self._view is not None
        capacity, _ = _mpmc.check_ring(self._view, what)  # the port's own check: a bad header raises here
        try:
            return _native.MirrorMap(self._mem.fileno(), _mpmc.HEADER_SIZE, capacity)
        except (OSError, ValueError):
            return None

    def _create(self, size: int, mode: int) -> PosixSharedMemory | MappedFile:
        if self.durable:
            return MappedFile.create(self.endpoint.address, size, mode)
        return PosixSharedMemory.create(self.endpoint.address, size, mode)

    def _open(self) -> PosixSharedMemory | MappedFile:
        if self.durable:
            return MappedFile.open(self.endpoint.address)
        return PosixSharedMemory.open(self.endpoint.address)

    def _flock(self, how: int) -> None:
        assert self._mem is not None
        with translating(f"flock {self.endpoint.address}", self.endpoint.address):
            fcntl.flock(self._mem.fileno(), how)

    def _attach_durable(self, what: str) -> None:
        """Take the shared flock; if nobody else holds the file open, recover it first."""
        assert self._view is not None
        try:
            self._flock(fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._flock(fcntl.LOCK_SH)  # waits only while another opener recovers it
            return
        capacity, _ = _mpmc.check_ring(self._view, what)
        self.discarded = _mpmc.recover(self._view, capacity)
        self._flock(fcntl.LOCK_SH)  # flock converts by unlock + lock: another opener may recover now too

    # -- the transport contract --------------------------------------------------------------------

    def _live(self) -> _mpmc.MpmcPort:
        ring = self._port
        if ring is None:
            raise HandleClosed(f"{self.endpoint} is closed")
        return ring

    def send_message(self, sid: int, payload: memoryview, deadline: float | None, **extra: Any) -> None:
        if extra:
            raise TypeError(f"{self.endpoint.scheme}:// takes no per-message options; got {', '.join(extra)}")
        self._live().send(framed(sid, payload), deadline)  # a record holds the whole frame (see mpmc.py)

    def send_parts(self, sid: int, parts: Sequence[Any], deadline: float | None) -> None:
        """One record from ``parts`` behind one frame header, each copied once into the ring (more
        than seven parts are joined first)."""
        views = [p if isinstance(p, memoryview) else memoryview(p) for p in parts]
        self._live().send([header(sid, sum(v.nbytes for v in views)), *views], deadline)

    # -- zero copy (Channel.send_view/recv_view) ---------------------------------------------------

    _copy: memoryview | None = None  # a loan the ring could not make in place: commit() sends it
    _copy_deadline: float | None = None
    _spare = bytearray()  # the copies' buffer, reused (a fresh megabyte costs its page faults each time)
    _copied = False  # the peeked message is a copy (taken from the ring already): consume() is a no-op

    def reserve(self, n: int, deadline: float | None) -> memoryview:
        """``n`` bytes of the ring in place, the producer lock held until commit() or abort() (other
        producers wait meanwhile); a private buffer that commit() sends (waiting for room until
        ``deadline``) when the ring cannot lend them now."""
        off = self._live().reserve(n)
        if off is not None:
            assert self._view is not None
            return self._view[off:off + n]
        if len(self._spare) < n:
            self._spare = bytearray(n)  # a new one: a view of the old one may have escaped its block
        self._copy, self._copy_deadline = memoryview(self._spare)[:n], deadline
        return self._copy[:]  # the block's own view: released at its end, before commit() sends _copy

    def commit(self) -> None:
        """Publish the reserved bytes as one raw message."""
        copy, self._copy = self._copy, None
        if copy is None:
            self._live().commit(0)
        else:
            self.send_message(0, copy, self._copy_deadline)

    def abort(self) -> None:
        """Drop the reserved bytes unpublished."""
        if self._copy is None:
            self._live().abort()
        self._copy = None

    def peek(self, deadline: float | None) -> tuple[memoryview, int]:
        """The next message in place, the consumer lock held until consume() (other consumers wait
        meanwhile); a copy when the ring cannot lend it (sync=true, an fd user, a record that wraps
        around the end of the ring)."""
        ring = self._live()
        while True:
            got = ring.peek()
            if isinstance(got, tuple):
                off, n, sid = got
                assert self._view is not None
                return self._view[off:off + n].toreadonly(), sid
            if got == -errno.EXDEV or ring.pending():  # unlendable, or the lock is busy: it waits for it
                msg = self.recv_message(deadline)
                self._copied = True
                return msg.payload.toreadonly(), msg.sid
            if not ring.wait(deadline):
                raise mpmc_error(-errno.ETIMEDOUT, f"receiving on {ring.what}")

    def consume(self) -> None:
        """Drop the peeked message."""
        if self._copied:
            self._copied = False
            return
        self._live().consume()

    def native_lends(self) -> tuple[NativeLend, NativeLend]:
        """recv_view()/send_view() in C on the one MpmcPort (see _native.Lender)."""
        ring = self._live()
        return ((ring.native(), lambda rc: mpmc_error(rc, f"receiving on {ring.what}")),
                (ring.native(), lambda rc: mpmc_error(rc, f"committing a reserved record on {ring.what}")))

    def recv_message(self, deadline: float | None, **extra: Any) -> Message:
        if extra:
            raise TypeError(f"{self.endpoint.scheme}:// takes no per-message options; got {', '.join(extra)}")
        return unframe(self._live().recv(deadline))

    def wait_readable(self, deadline: float | None) -> bool:
        return self._live().wait(deadline)

    def fast_path(self) -> tuple[TrySend, TryRecv]:
        """``(try_send(data, sid=0) -> bool, try_recv() -> bytes | None)``: the channel's fast path in
        C, which completes a send or receive that needs no wait and returns False/None otherwise."""
        return self._live().fast_path()

    def fast_batches(self) -> tuple[TrySendMany, TryRecvMany]:
        """``(try_send_many, try_recv_many)`` for Channel.send_many()/recv_many(): in C, one lock hold
        and one publication per batch."""
        return self._live().fast_batches()

    def fast_recv_into(self) -> tuple[TryRecvInto, int]:
        """``(try_recv_into, limit)`` for Channel.recv_bytes_into(): in C, under the receiving lock, one
        copy from the ring (both pieces of a wrapped record) into the caller's buffer."""
        return self._live().fast_recv_into()

    def fileno(self) -> int:
        """A datagram socket that becomes readable when a message may be pending (see _rings/mpmc.py)."""
        return self._live().fileno()

    def unlink(self) -> None:
        """Remove the name (ring://) or the file (file://) now; open handles keep working."""
        self._live()
        mem = self._mem
        assert mem is not None
        if isinstance(mem, PosixSharedMemory):
            mem.unlink()
            return
        path = self.endpoint.address
        with translating(f"unlink {self.endpoint}", path):
            st = os.stat(path)
            if (st.st_dev, st.st_ino) != self._ino:
                raise FileNotFoundError(errno.ENOENT, f"unlink {self.endpoint}: the path now names another "
                                                      "file; the queue's file was already removed", path)
            os.unlink(path)

    def extra(self) -> dict[str, Any]:
        ring = self._live()
        return {"ring_capacity": ring.capacity, "pending_bytes": ring.pending(), "durable": self.durable,
                "sync": bool(self.endpoint.options.get("sync", False)),
                "recovered_locks": ring.recovered, "discarded_bytes": self.discarded}

    def close(self) -> None:
        ring, self._port = self._port, None
        view, self._view = self._view, None
        self._mirror = None  # unmapped when the port lets go of it (after an operation in flight)
        mem, self._mem = self._mem, None
        try:
            if ring is not None:
                ring.close()
        finally:
            if view is not None:
                try:
                    view.release()
                except BufferError:
                    pass  # another thread is still inside an operation: the mapping outlives it
            if mem is not None:
                mem.close()  # the ring:// owner's removes the name; closing the fd drops the flock
