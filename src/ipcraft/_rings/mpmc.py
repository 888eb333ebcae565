"""The multi-producer multi-consumer ring of ring:// and file://: layout, recovery, and its port over
_native.MpmcPort.

Layout (little-endian; offsets from the start of the mapping, which is page aligned)::

    header page (4096 bytes)
      0     u64  magic              b"IPCRAFTQ" (not the SPSC ring's b"IPCRAFTR": neither attaches to
                                    the other)
      8     u32  version            1
      12    u32  flags              bit 0 DURABLE: made by file://
      16    u64  capacity           bytes in the data area: a power of two >= 4096
      24    u64  data offset        4096
      32    u32  creator pid
      128   pthread_mutex_t         the producers' lock (robust, process-shared)  } producers' lines
      192   u64  head               bytes ever published                          }
      256   pthread_mutex_t         the consumers' lock                           } consumers' lines
      320   u64  tail               bytes ever consumed                           }
      384   u32  consumers sleeping (futex on head)
      512   u32  producers sleeping (futex on tail)
      640   u64  armed fd users     how many fd slots below are armed
      1024  32 x {u64 token, u64 armed}: handles that gave out a fileno()
    data area (capacity bytes): records

    record: u32 length, u32 ~length (a check), the message (ipcraft's 8-byte frame header included),
            zero to seven bytes of padding to a multiple of 8.  A record may wrap around the end of
            the data area (its 8-byte header never does): the whole capacity is usable.

Decisions:

* **Locks, not a lock-free queue.**  Several producers must agree on who writes where; lock-free MPMC
  queues (Vyukov's) do it by reserving slots with an atomic increment, and a producer killed between
  its reservation and its commit leaves a hole every consumer then waits at.  Filling the hole needs
  the holder's death to be *detected*, which from user space means pids (reused, and invisible across
  pid namespaces) and timeouts (which also fire for a process that is merely slow or stopped).  The
  kernel already has an exact detector: the robust futex list, which releases a dead thread's
  mutexes and tells the next locker (EOWNERDEAD).  So producers serialise on one robust
  process-shared mutex and consumers on another; between the two lock holders the ring is a plain
  SPSC ring.  What a crash can leave is then trivial to repair, because **publication is one store**:
  a producer writes its whole record beyond ``head``, then publishes it with one release store of
  ``head``; a consumer copies a record out, then releases it with one store of ``tail``.  A producer
  killed at any instruction before its store has published nothing (the next producer overwrites the
  bytes); after it, the message is complete.  A consumer killed before its store leaves the message to
  the next consumer; after it, the message was taken (see the delivery note).  The next locker
  marks the mutex consistent and carries on, with nothing to repair.  Producers never wait for
  consumers' locks and vice versa, so a dead consumer cannot wedge a producer.  Cost: an uncontended
  lock is one atomic exchange (about 20 ns); contended, a waiter spins 50 us before it sleeps.
* **Delivery.**  Every message is delivered to one consumer.  A consumer killed *after* it released
  the record (the ``tail`` store) but before ``recv`` returned to its caller takes the message with it:
  there is no acknowledgement, so "exactly once" holds for consumers that live, and a killed consumer
  loses at most the one message it was receiving.  Nothing is ever delivered twice and nothing torn is
  ever delivered.
* **Waiting**: spin (``SPIN_NS``, for the same reasons as the SPSC ring: a cross-core wake-up costs
  25-30 us here), then sleep with FUTEX_WAIT on the low 32 bits of the cursor that must move, in
  slices of 100 ms: a wake-up lost because the waker was killed between its store and its
  FUTEX_WAKE costs one slice, never a hang.  The waker calls FUTEX_WAKE only when a "sleeping" flag
  is set (Dekker's pattern: flag, fence, re-check / store, fence, read flag), and wakes all sleepers
  of that side, since one flag serves them all.  ``wait="spin"`` never sleeps.  On a busy machine
  (more runnable tasks than CPUs) a spinner yields its CPU every 8 rounds and sleeps after 20 us
  (see rings.h).  A receiver's spin adapts as on the SPSC ring (rings.h, ring_adapt_spin): a wait
  that ended within 5 ms stretches the next spin to twice its length, up to 2 ms, so two processes
  in a steady exchange of large messages stay on their CPUs; a longer wait resets it to ``SPIN_NS``.
  Without it a 1 MiB round trip in block mode took 950 us against 385 us spinning (the receiver's
  100 us spin ran out during the peer's copies, then it slept and woke slowly and cold).
* **The channel's fast path** (``fast_path()``: ``try_send``/``try_recv`` in C) finishes a send or
  receive that needs no wait without entering Python: it writes or checks the 8-byte frame header
  itself and returns False/None for anything unusual (a full ring, a busy lock, a foreign frame, a
  message over max_message_size, a send of 256 KiB or more, ``sync``), which the general path then handles with its full
  semantics.  try_recv spins (GIL released) up to the receiver's current spin budget on an empty ring, and a
  general receive after such a vain spin sleeps at once.  Measured: a 64 B round trip 3.7 -> 0.8 us.
* **fileno() without an eventfd.**  An eventfd cannot be shared by processes that merely know a name.
  A handle asked for fileno() binds an *abstract* Unix datagram socket named after a random token,
  records the token in one of 32 slots of the header and *arms* it whenever it finds the ring empty.
  A producer that sees armed slots after publishing disarms them and sends each a 1-byte datagram
  (in C, mpmc.c's wake_fd_slots).
  The socket is therefore readable when a message may be pending (readiness can be spurious: another
  consumer may take it first).  Abstract names vanish with their process, so a dead holder leaves a
  slot that the first failed wake-up frees; nothing named is created in the filesystem.  Handles that
  never call fileno() pay nothing; a producer pays one load per send while no one is armed.
* **Too large**: a message must fit the ring (record <= capacity), else MessageTooLarge naming the
  capacity, at once.  Streaming a larger message in pieces would let a killed producer leave half a
  message to the consumers, which is what this design exists to prevent.
* **file:// durability.**  The ring lives in the page cache of a file mapped MAP_SHARED, which
  outlives any process: a message whose send returned survives a kill -9 of every process.  Every
  handle holds a shared flock(2) on the file; an opener that gets it *exclusively* knows nobody else
  has the queue open, so it re-initialises the mutexes and wait flags (a dead process's lock word or an
  OS restart leaves them meaningless) and checks every pending record, cutting the queue at the first
  one that is damaged (which only an OS crash without ``sync`` can cause).  An OS crash or power loss
  is covered only with ``sync=true``: each send then msyncs its record before publishing ``head`` and
  the header after, and each receive msyncs ``tail``; a message whose send returned is then on the
  disk, and at most the message being received at the crash may be delivered again.  Without
  ``sync`` the kernel writes the pages back within about 30 s (vm.dirty_expire_centisecs).

Never trust shared memory: the capacity is read once and validated, and the C side checks every
cursor (EPROTO) and every record header (EBADMSG) against it before copying.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Final

from .. import _framing, _native
from .._endpoint import MAX_RING_CAPACITY
from .._errors import mpmc_error
from .._wait import remaining
from ..errors import LimitExceeded, ProtocolError
from . import check_native_layout, pow2_capacity

MAGIC: Final = int.from_bytes(b"IPCRAFTQ", "little")
VERSION: Final = 1
HEADER_SIZE: Final = 4096
MIN_CAPACITY: Final = 4096
MAX_CAPACITY: Final = MAX_RING_CAPACITY["ring"]
DEFAULT_CAPACITY: Final = 4 * 1024 * 1024
OFF_MAGIC: Final = 0
OFF_VERSION: Final = 8
OFF_FLAGS: Final = 12
OFF_CAPACITY: Final = 16
OFF_DATA: Final = 24
OFF_CREATOR_PID: Final = 32
OFF_PRODUCER_LOCK: Final = 128
OFF_HEAD: Final = 192
OFF_CONSUMER_LOCK: Final = 256
OFF_TAIL: Final = 320
OFF_CONSUMERS_SLEEPING: Final = 384
OFF_PRODUCERS_SLEEPING: Final = 512
OFF_FD_ARMED: Final = 640
OFF_FD_SLOTS: Final = 1024
FD_SLOTS: Final = 32
FD_SLOT_SIZE: Final = 16
#: The abstract socket name of an fd user (mpmc.c's FD_NAME_FORMAT, which pokes it).
FD_NAME: Final = b"\0ipcraft-mpmc-%016x"
REC_HEADER: Final = 8
FRAME_MAGIC: Final = _framing.MAGIC
FLAG_DURABLE: Final = 1
#: How long a waiter spins before it sleeps (wait="block").
SPIN_NS: Final = 100_000
#: How long an opener waits for a creator that is still formatting the header.
FORMAT_WAIT: Final = 1.0

_FIXED = struct.Struct("<QIIQQI")  # magic, version, flags, capacity, data offset, creator pid
_REC = struct.Struct("<II")


check_native_layout(_native.mpmc_layout(), globals(), "MPMC ring")


def round_capacity(n: int) -> int:
    """The data-area size used for a requested ``capacity``: the next power of two, at least 4096."""
    return pow2_capacity(n, MIN_CAPACITY, MAX_CAPACITY)


def ring_size(capacity: int) -> int:
    """Bytes of memory (or file) one ring of ``capacity`` occupies: header page + data area."""
    return HEADER_SIZE + capacity


def max_message(capacity: int) -> int:
    """The largest message (frame header included) a ring of ``capacity`` carries."""
    return capacity - REC_HEADER


def format_ring(buf: memoryview, capacity: int, flags: int) -> None:
    """Write a fresh header into zero-filled ``buf``; the magic goes last, so an opener never sees half."""
    _FIXED.pack_into(buf, 0, 0, VERSION, flags, capacity, HEADER_SIZE, os.getpid())
    _init_shared_state(buf)
    _native.atomic_store_u64(buf, OFF_MAGIC, MAGIC)


def _init_shared_state(buf: memoryview) -> None:
    """(Re)initialise the locks, the sleep flags and the fd slots.  Only when nobody uses the ring."""
    for off in (OFF_PRODUCER_LOCK, OFF_CONSUMER_LOCK):
        rc = _native.pmutex_init(buf, off)
        if rc < 0:
            raise OSError(-rc, f"pthread_mutex_init of a ring lock: {os.strerror(-rc)}")
    for off in (OFF_CONSUMERS_SLEEPING, OFF_PRODUCERS_SLEEPING):
        _native.atomic_store_u32(buf, off, 0)
    _native.atomic_store_u64(buf, OFF_FD_ARMED, 0)
    for i in range(FD_SLOTS):
        _native.atomic_store_u64(buf, OFF_FD_SLOTS + i * FD_SLOT_SIZE, 0)
        _native.atomic_store_u64(buf, OFF_FD_SLOTS + i * FD_SLOT_SIZE + 8, 0)


def check_ring(buf: memoryview, what: str) -> tuple[int, int]:
    """Validate the header of the ring in ``buf``; return ``(capacity, flags)``.

    Waits up to FORMAT_WAIT for a creator that is still writing the header.

    Raises:
        ProtocolError: too small, a foreign or future magic/version, an impossible capacity or cursors.
    """
    if len(buf) < HEADER_SIZE + MIN_CAPACITY:
        raise ProtocolError(f"{what} is not an ipcraft queue: {len(buf)} bytes is smaller than the smallest "
                            f"ring ({HEADER_SIZE + MIN_CAPACITY} bytes)")
    deadline = time.monotonic() + FORMAT_WAIT
    while _native.atomic_load_u64(buf, OFF_MAGIC) == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    magic, version, flags, capacity, data, _ = _FIXED.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ProtocolError(f"{what} is not an ipcraft ring:// or file:// queue (magic {magic:#x}, "
                            f"expected {MAGIC:#x}); nothing was changed")
    if version != VERSION:
        raise ProtocolError(f"{what} has queue format version {version}; this ipcraft reads version {VERSION}")
    if flags & ~FLAG_DURABLE:
        raise ProtocolError(f"{what} has unknown flags {flags:#x}")
    if (capacity < MIN_CAPACITY or capacity & (capacity - 1) or capacity > MAX_CAPACITY
            or data != HEADER_SIZE or HEADER_SIZE + capacity > len(buf)):
        raise ProtocolError(f"{what} has an impossible header: capacity {capacity}, data offset {data}, in "
                            f"{len(buf)} bytes")
    head, tail = (_native.atomic_load_u64(buf, off) for off in (OFF_HEAD, OFF_TAIL))
    if head - tail > capacity or head < tail or (head | tail) & 7:
        raise ProtocolError(f"{what} has corrupt cursors (head {head}, tail {tail}, capacity {capacity})")
    return capacity, flags


def recover(buf: memoryview, capacity: int) -> int:
    """Reset a ring nobody else has open (file://, after a crash); return the bytes of damaged records cut.

    The locks and wait flags are initialised anew; the pending records are walked from ``tail`` and the
    queue is cut (``head`` moved back) at the first record whose header is damaged.
    """
    _init_shared_state(buf)
    head, tail = (_native.atomic_load_u64(buf, off) for off in (OFF_HEAD, OFF_TAIL))
    data, mask, pos = memoryview(buf)[HEADER_SIZE:HEADER_SIZE + capacity], capacity - 1, tail
    while pos < head:
        n, check = _REC.unpack_from(data, pos & mask)
        size = REC_HEADER + ((n + 7) & ~7)
        if check != n ^ 0xFFFFFFFF or size > head - pos:
            _native.atomic_store_u64(buf, OFF_HEAD, pos)
            return head - pos
        pos += size
    return 0


class FdWake:
    """fileno() for a ring: an abstract datagram socket that producers poke (see the module notes)."""

    _sock: socket.socket | None = None
    _sender: socket.socket | None = None
    _slot = -1
    _token = 0

    def __init__(self, buf: memoryview, what: str) -> None:
        self._buf = buf
        self._what = what

    @property
    def active(self) -> bool:
        return self._sock is not None

    @staticmethod
    def _address(token: int) -> bytes:
        return FD_NAME % token

    def fileno(self, pending: Callable[[], int]) -> int:
        if self._sock is None:
            self._register()
        assert self._sock is not None
        self.rearm(pending)
        return self._sock.fileno()

    def _register(self) -> None:
        token = int.from_bytes(os.urandom(8), "little") | 1
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self._address(token))
            for sweep in range(2):
                for i in range(FD_SLOTS):
                    if _native.atomic_cas_u64(self._buf, OFF_FD_SLOTS + i * FD_SLOT_SIZE, 0, token):
                        self._sock, self._slot, self._token = sock, i, token
                        return
                if sweep == 0:
                    self._reap()
        except BaseException:
            sock.close()
            raise
        sock.close()
        raise LimitExceeded(errno.EMFILE, f"fileno() of {self._what}: all {FD_SLOTS} fd slots of the queue "
                                          "are held by live handles (limit: FD_SLOTS in ipcraft/_rings/mpmc.py)")

    def _reap(self) -> None:
        """Free the slots whose socket is gone (their process died without closing)."""
        for i in range(FD_SLOTS):
            off = OFF_FD_SLOTS + i * FD_SLOT_SIZE
            token = _native.atomic_load_u64(self._buf, off)
            if token and not self._poke(token, probe=True):
                self._disarm(off)
                _native.atomic_cas_u64(self._buf, off, token, 0)

    def _poke(self, token: int, probe: bool = False) -> bool:
        """Send a wake-up byte (an empty datagram when probing); False if nobody has that name."""
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                                         | socket.SOCK_CLOEXEC)
        try:
            self._sender.sendto(b"" if probe else b"!", self._address(token))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            pass  # EAGAIN: its queue is full of wake-ups already, it will wake
        return True

    def _disarm(self, off: int) -> bool:
        if _native.atomic_cas_u64(self._buf, off + 8, 1, 0):
            _native.atomic_add_u64(self._buf, OFF_FD_ARMED, -1)
            return True
        return False

    def rearm(self, pending: Callable[[], int]) -> None:
        """Drain the socket, arm the slot, and poke ourselves if a message is already pending."""
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                sock.recv(16)
            except (BlockingIOError, InterruptedError):
                break
        off = OFF_FD_SLOTS + self._slot * FD_SLOT_SIZE
        if _native.atomic_cas_u64(self._buf, off + 8, 0, 1):
            _native.atomic_add_u64(self._buf, OFF_FD_ARMED, 1)  # a locked RMW: also the Dekker fence
        else:
            _native.atomic_add_u64(self._buf, OFF_FD_ARMED, 0)
        if pending():
            self._poke(self._token)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            off = OFF_FD_SLOTS + self._slot * FD_SLOT_SIZE
            try:
                self._disarm(off)
                _native.atomic_cas_u64(self._buf, off, self._token, 0)
            finally:
                sock.close()
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.close()


class MpmcPort:
    """One handle's access to a formatted ring: send, receive, wait, fileno; errors translated."""

    _port: _native.MpmcPort | None = None
    _fd: FdWake | None = None

    def __init__(self, buf: memoryview | _native.MirrorMap, what: str, *, spin: bool = False, sync: bool = False,
                 limit: int = -1) -> None:
        """``buf`` maps the ring: a MirrorMap lets recv_view()/send_view() lend wrapping records in place."""
        self.what = what
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        self.capacity, self.flags = check_ring(view, what)
        self._port = _native.MpmcPort(buf, spin_ns=-1 if spin else SPIN_NS, sync=sync, limit=limit)
        self._limit = limit if limit >= 0 else 1 << 62  # the port's limit is at most this
        self._fd = FdWake(view, what)
        self._scratch = bytearray(64 * 1024)
        self.limit_source = (f"the capacity of {what}: {self.capacity} bytes of ring, set by capacity= "
                             "when it was created")

    def _live(self) -> _native.MpmcPort:
        port = self._port
        if port is None:
            raise mpmc_error(-errno.EBADF, f"using {self.what}")
        return port

    def send(self, parts: Sequence[bytes | memoryview], deadline: float | None) -> None:
        """Append one message made of ``parts``; wait for room until ``deadline``."""
        port = self._live()
        if len(parts) > 8:
            parts = [b"".join(parts)]
        rc = port.send(parts, remaining(deadline))
        if rc < 0:
            size = sum(memoryview(p).nbytes for p in parts)
            raise mpmc_error(rc, f"sending on {self.what}", size=size, limit=max_message(self.capacity),
                             limit_source=self.limit_source)

    def recv(self, deadline: float | None) -> memoryview:
        """Take the next message (valid until the next recv); wait until ``deadline``."""
        port = self._live()
        while True:
            rc = port.recv_into(self._scratch, remaining(deadline))
            if rc >= 0:
                break
            if rc != -errno.ENOBUFS:
                raise mpmc_error(rc, f"receiving on {self.what}")
            # A new buffer, not a resize: the view handed out last time may still be alive.
            self._scratch = bytearray(1 << (port.needed - 1).bit_length())
        if self._fd is not None and self._fd.active:
            self._fd.rearm(port.pending)
        return memoryview(self._scratch)[:rc]

    def wait(self, deadline: float | None) -> bool:
        """Whether a message is pending, waiting until ``deadline`` (another consumer may take it)."""
        port = self._live()
        rc = port.wait(remaining(deadline))
        if self._fd is not None and self._fd.active:
            self._fd.rearm(port.pending)
        if rc == -errno.ETIMEDOUT:
            return False
        if rc < 0:
            raise mpmc_error(rc, f"waiting on {self.what}")
        return True

    def fileno(self) -> int:
        port = self._live()
        assert self._fd is not None
        fd = self._fd.fileno(port.pending)
        port.fd_user = True  # receive by the general path from now on: it re-arms the fd
        return fd

    def fast_path(self) -> tuple[Callable[..., bool], Callable[[], bytes | None]]:
        """``(try_send(data, sid=0) -> bool, try_recv() -> bytes | None)`` for the channel."""
        port = self._live()
        return port.try_send, port.try_recv

    def fast_batches(self) -> tuple[Callable[..., int], Callable[..., list[bytes]]]:
        """``(try_send_many(payloads, sid=0) -> int, try_recv_many(max_messages, sid) -> list[bytes])``."""
        port = self._live()
        return port.try_send_many, port.try_recv_many

    def fast_recv_into(self) -> tuple[Callable[..., int | None], int]:
        """``(try_recv_into(buffer, offset=0) -> int | None, limit)`` for Channel.recv_bytes_into()."""
        return self._live().try_recv_into, self._limit

    def pending(self) -> int:
        return self._live().pending()

    # -- zero copy (Channel.send_view/recv_view): the lock is held from reserve/peek to the end -----

    def native(self) -> _native.MpmcPort:
        """The C port (recv_view/send_view lend from it directly, see _native.Lender)."""
        return self._live()

    def reserve(self, n: int) -> int | None:
        """Lock the producer side and loan ``n`` payload bytes in place: their offset in the buffer
        until commit()/abort(), or None when the ring cannot now (lock busy, no room, sync=true, a
        payload that would wrap): then the caller sends a copy."""
        rc = self._live().reserve(n)
        if rc >= 0:
            return int(rc)
        if rc in (-errno.EAGAIN, -errno.EXDEV):
            return None
        raise mpmc_error(rc, f"reserving a record on {self.what}", size=n, limit=max_message(self.capacity),
                         limit_source=self.limit_source)

    def commit(self, sid: int) -> None:
        rc = self._live().commit(sid)
        if rc < 0:
            raise mpmc_error(rc, f"committing a reserved record on {self.what}")

    def abort(self) -> None:
        self._live().abort()

    def peek(self) -> tuple[int, int, int] | int:
        """Lock the consumer side and borrow the next message in place: ``(payload offset, length,
        sid)`` until consume(); else -EAGAIN (empty, or another consumer holds the lock) or -EXDEV (a
        message the copying receive must take: sync=true, an fd user, wrapped, too large, foreign or
        corrupt)."""
        got = self._live().peek()
        if isinstance(got, tuple) or got in (-errno.EAGAIN, -errno.EXDEV):
            return got
        raise mpmc_error(got, f"receiving on {self.what}")

    def consume(self) -> None:
        self._live().consume()

    @property
    def recovered(self) -> int:
        """How often this handle took over a lock whose holder had died."""
        return self._port.recovered if self._port is not None else 0

    def close(self) -> None:
        fd, self._fd = self._fd, None
        port, self._port = self._port, None
        try:
            if fd is not None:
                fd.close()
        finally:
            if port is not None:
                port.close()
