"""The single-producer single-consumer ring of shm://: layout, validation, and its port over _native.SpscPort.

Layout (all integers little-endian; offsets from the start of the ring, which is page aligned)::

    header page (4096 bytes)
      0    u64  magic        b"IPCRAFTR"
      8    u32  version      1
      12   u32  flags        0 for an SPSC ring; bits reserved for the ring:// and file:// variants
      16   u64  capacity     bytes in the data area: a power of two >= 64
      24   u64  data offset  4096 (the data area follows the header page)
      32   u32  creator pid  the process that formatted the ring
      36   u32  opener pid   the process that attached to it (0 until then)
      128  u64  head         producer cursor: bytes ever written     } the producer's cache line
      136  u32  producer closed flag                                  }
      144  u64  handles      processes holding the producer's end (kept by the transport, see shm.py)
      256  u64  tail         consumer cursor: bytes ever consumed    } the consumer's cache line
      264  u32  consumer closed flag                                  }
      384  u32  consumer waiting  the consumer sleeps: the producer must write its eventfd
      512  u32  producer waiting  the producer waits for room: the consumer must write its eventfd
    data area (capacity bytes): records

    record: the 8-byte ipcraft frame header <BBHI (magic 0xA1, serializer id, flags, payload length),
            the payload, zero to seven bytes of padding up to a multiple of 8.
            flags 0x8000 (WRAP) marks the rest of the data area as padding: the next record starts at
            offset 0 of the data area.  flags 0x4000 (SHARED), only in a ring given a shared region
            (shm:// version 2): the record is its 8-byte header alone and the payload, of the length
            it gives, is at the start of the region's data.  Other flag bits are reserved (a reader
            refuses them).

    shared region (shm:// version 2, one per connection, after both rings):
      header page (4096 bytes)
        0     u64  magic   b"IPCRAFRL"
        8     u64  size    bytes in the data area (half the ring capacity)
        64    u32  owner   0: free; else the id of the producer whose message it holds (1 client, 2 server)
        4088  the 8-byte record header of the message it holds (so that a record is contiguous)
      data area (size bytes): one message's payload

Decisions:

* **Cursors are byte counters that only grow** (position = cursor mod capacity), so "empty" is
  head == tail and "full" is head - tail == capacity, with no slot wasted and no ABA.  A u64 does not
  wrap in the life of any process.  Each is published by its only writer with a release store and
  read with an acquire load (_native): a plain Python store is not one store on this machine
  (struct.pack_into zero-fills first; a reader on the other core saw a half-written cursor).
* **Cache lines.**  Each cursor lives alone with its side's rarely written flags, 128 bytes from the
  next field: the adjacent-line prefetcher moves lines in pairs, so 64 bytes apart would still
  ping-pong.  The "waiting" flags get their own lines: the producer reads the consumer's flag after
  every push, and that load must hit a line nobody writes in the steady state.
* **The record header is the frame header.**  A message transport hands the channel one message with
  ipcraft's 8-byte frame header in front; storing exactly that makes a record a frame, so the receive
  path copies once (ring -> bytes) and the zero-copy view needs no extra bookkeeping.  Records are
  8-byte aligned so that every header is naturally aligned.
* **Wrap markers, not split records.**  A record never straddles the end of the data area: the writer
  pads to the end with a WRAP record and starts again at 0.  Every record is then contiguous, which
  recv_view()/send_view() need.  The price: a record may use at most capacity / 2 bytes (in an empty
  ring at any position the larger of the two contiguous stretches is at least half), and larger
  messages fail at once with MessageTooLarge naming the capacity, never wait for room that cannot
  appear.  Streaming big messages in pieces would lift the limit but break zero copy and make a
  message's arrival non-atomic; a bigger ``capacity=`` is the simple answer.
* **Spin, then sleep on an eventfd.**  Waking a sleeping process on the other core costs 25-30 us
  here (a VM exit), so any wait that sleeps at once sits at 55-90 us per round trip, and a sleep
  costs a waiter about 50 us in all (measured: a 1 MiB round trip, whose waits last ~60 us, takes
  190 us when waiters spin 50 us before sleeping and 89 us when they spin 100 us).  A waiter
  therefore spins (with the GIL released) for SPIN_NS = 100 us, about twice what a sleep costs: a
  reply within that window costs no system call at all, and a waiter idle for longer loses at most
  100 us of CPU before it sleeps, so an idle receiver uses no CPU.  (The fast path's spin and the
  general wait's share that budget: one spin phase per wait.)  It then sleeps in
  ppoll(2) on an eventfd rather than a futex: an eventfd is a file descriptor, so the channel has a
  fileno() for select/poll/asyncio, and one ppoll also watches the peer-liveness descriptors, which a
  futex cannot.  (A futex wake is cheaper, 0.29 us, but a wake happens only when the peer sleeps, and
  then the 25-30 us wake-up dominates.)  ``wait="spin"`` never sleeps.  On a busy machine (more
  runnable tasks than CPUs) spinning steals the CPU the peer is waiting for: there a waiter yields
  its CPU while it spins and sleeps after 20 us, and ``wait="spin"`` keeps yielding (see rings.h).
* **On a busy machine a large reply starts at the ring's front** (when it cannot take the shared
  region, below, or there is none: a version 1 connection).  When every CPU is taken, the two
  processes of a request/response exchange end up sharing one CPU, and what a copy costs depends on
  whether its memory is still in that CPU's cache.  A socket reuses the kernel pages the receiver
  has just freed; a ring would put each message at its next place, in memory last touched megabytes
  ago.  So a producer port paired with the consumer port of the same connection (``pair()``, shm://)
  sends a message of 8 KiB or more that follows a receive (a reply) to offset 0 of an empty ring,
  behind a wrap marker: the record lands where the previous reply was.  A 64 KiB round trip beside a
  CPU-bound neighbour fell from 15.5-16.1 to 12.8 us, with p99 from 60-67 to 18-40 us
  (``benchmarks/copy_locality.py`` replays the copies alone).  Not on an idle machine, where the two
  processes run on two CPUs and writing lines the peer has just read takes them back from its cache
  (a 64 KiB round trip went from 20 to 24 us), and not within a stream of sends below 256 KiB, for
  the same reason.  A message of 256 KiB or more, reply or not, does go to the front of an emptied
  ring on a busy machine, and its producer then yields the CPU, so that a consumer sharing it drains
  the ring before the next one: a 1 MiB stream beside a CPU-bound neighbour went from 7.0 to 8.4-8.6
  GB/s (the bare seqpacket loop: 7.8-8.1).
* **A large reply goes through the connection's shared region.**  Better than the ring's front: one
  region serves both directions of an shm:// connection, so a request and its reply land in the same
  memory, as a socket's do.  A producer port given the region (``share()``) sends a reply (as above)
  of 8 KiB or more there when the region is free: it claims the owner word with a compare-and-swap,
  copies the payload in, and publishes an 8-byte SHARED record in its ring.  The consumer copies the
  payload out (or lends it as a view) and frees the region with a release store when it consumes the
  record.  A claim that fails (the region still holds the other direction's message) or a stream of
  sends uses the ring as before, so the region never makes a sender wait.  A 1 MiB round trip fell
  from 300 to 235 us beside a CPU-bound neighbour (the bare seqpacket loop: 225-234 us) and from
  306-336 to 252-285 us on an idle machine; a 64 KiB one from 19.5 to 15-16 us idle.
* **Wake only a sleeper.**  The sender writes the eventfd only when the peer's "waiting" flag is set
  (store flag, full fence, re-check / publish cursor, full fence, read flag: Dekker's pattern, so no
  wake-up is lost), and clears the flag with an exchange so one sleep costs one write.  A busy
  stream pays one fence and one load per message, no system call.
* **fileno() is level-triggered on demand.**  Once fileno() has been asked for, the consumer keeps
  "the eventfd is readable" equal to "a record is pending" (the flag stays armed whenever the ring is
  empty), so select/epoll/asyncio see exactly what a socket would show.  That costs a system call on
  each side per wake-up, so channels that never hand out their fd do not pay it.
* **A dead peer** is detected through *watch* descriptors given to the waiting side, which become
  readable when the peer is gone: for shm:// the rendezvous socket, which hangs up when the last copy
  of the peer's end closes (a kill -9 included).  They are polled every 1 ms while spinning and are
  in the same ppoll while sleeping, so a receiver on an empty ring or a sender on a full one raises
  PeerVanished well within a second.  A clean close sets the side's "closed" flag first: the other
  side then raises ChannelClosed, not PeerVanished, after taking what is left.
* **Never trust the other side.**  The capacity is read once, validated, and kept privately; every
  cursor and record length read from shared memory is checked against it before anything is copied
  (a bad one is ProtocolError).  The C side holds a buffer export on the mapping, so it cannot be
  unmapped under a copy.

Reuse (ring:// and file://): the layout assumes nothing about the memory: any mapping whose ring
starts page aligned works (memfd, /dev/shm, a mapped file).  ``format_ring`` and ``check_ring`` are
the only code that knows the header; ``flags`` and the reserved bytes of the header page (from 640)
are free for a multi-producer or durable variant (reservation cursors, a commit marker), which must
set a flag bit so that this SPSC code refuses to attach to it.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from typing import Any, Final

from .. import _native
from .._endpoint import MAX_RING_CAPACITY
from .._errors import spsc_error
from .._wait import remaining
from ..errors import MessageTooLarge, ProtocolError
from . import check_native_layout, pow2_capacity

MAGIC: Final = int.from_bytes(b"IPCRAFTR", "little")
VERSION: Final = 1
HEADER_SIZE: Final = 4096
MIN_CAPACITY: Final = 64
MAX_CAPACITY: Final = MAX_RING_CAPACITY["shm"]
OFF_MAGIC: Final = 0
OFF_VERSION: Final = 8
OFF_FLAGS: Final = 12
OFF_CAPACITY: Final = 16
OFF_DATA: Final = 24
OFF_CREATOR_PID: Final = 32
OFF_OPENER_PID: Final = 36
OFF_HEAD: Final = 128
OFF_PRODUCER_CLOSED: Final = 136
#: Not used by _native: how many processes hold the producer's end (shm.py counts fork() copies).
OFF_HANDLES: Final = 144
OFF_TAIL: Final = 256
OFF_CONSUMER_CLOSED: Final = 264
OFF_CONSUMER_WAITING: Final = 384
OFF_PRODUCER_WAITING: Final = 512
REC_HEADER: Final = 8
REC_MAGIC: Final = 0xA1
REC_FLAG_WRAP: Final = 0x8000
REC_FLAG_SHARED: Final = 0x4000
SHARED_MAGIC: Final = int.from_bytes(b"IPCRAFRL", "little")
SHARED_OFF_MAGIC: Final = 0
SHARED_OFF_SIZE: Final = 8
SHARED_OFF_OWNER: Final = 64
#: How long a waiter spins before it sleeps (wait="block"): about twice what a sleep costs here.
SPIN_NS: Final = 100_000

_FIXED = struct.Struct("<QIIQQII")  # magic, version, flags, capacity, data offset, creator, opener
_SHARED_HEAD = struct.Struct("<QQ")  # the shared region's magic and size


check_native_layout(_native.spsc_layout(), globals(), "SPSC ring")


def round_capacity(n: int) -> int:
    """The data-area size used for a requested ``capacity``: the next power of two, at least 4096."""
    return pow2_capacity(n, 4096, MAX_CAPACITY)


def ring_size(capacity: int) -> int:
    """Bytes of memory one ring of ``capacity`` occupies (header page + data area)."""
    return HEADER_SIZE + capacity


def max_payload(capacity: int) -> int:
    """The largest message payload a ring of ``capacity`` carries (a record may use half the ring)."""
    return capacity // 2 - REC_HEADER


def shared_size(capacity: int) -> int:
    """Bytes of memory the shared region of a connection with rings of ``capacity`` occupies: its
    header page and half a ring, room for the largest message a ring carries."""
    return HEADER_SIZE + capacity // 2


def format_shared(buf: Any, offset: int, capacity: int) -> None:
    """Write the header of a free shared region (see the layout above) at page-aligned ``offset``
    of the zeroed, writable buffer ``buf``."""
    _SHARED_HEAD.pack_into(buf, offset + SHARED_OFF_MAGIC, SHARED_MAGIC, capacity // 2)


def check_shared(buf: Any, offset: int, capacity: int) -> bool:
    """Whether ``buf`` holds at ``offset`` the header of a shared region for rings of ``capacity``."""
    return _SHARED_HEAD.unpack_from(buf, offset + SHARED_OFF_MAGIC) == (SHARED_MAGIC, capacity // 2)


def format_ring(buf: Any, offset: int, capacity: int, flags: int = 0) -> None:
    """Write a fresh, empty ring header at ``offset`` of the writable buffer ``buf``.

    The memory must be zeroed (a new memfd or file is) or at least the header page must be.
    """
    if capacity < MIN_CAPACITY or capacity & (capacity - 1) or capacity > MAX_CAPACITY:
        raise ValueError(f"a ring capacity is a power of two from {MIN_CAPACITY} to {MAX_CAPACITY}, "
                         f"not {capacity}")
    mv = memoryview(buf).cast("B")
    if offset % 4096 or offset + ring_size(capacity) > len(mv):
        raise ValueError(f"a ring of capacity {capacity} at offset {offset} does not fit the "
                         f"{len(mv)}-byte buffer page-aligned")
    mv[offset:offset + HEADER_SIZE] = bytes(HEADER_SIZE)
    _FIXED.pack_into(mv, offset, MAGIC, VERSION, flags, capacity, HEADER_SIZE, os.getpid(), 0)


def check_ring(buf: Any, offset: int, what: str) -> int:
    """Validate the ring header at ``offset``; return its capacity.

    Raises:
        ProtocolError: a foreign or corrupt header (magic, version, flags, capacity that does not
            fit the buffer, cursors out of range).  Nothing was changed.
    """
    with memoryview(buf) as whole:  # no export may outlive this call, even when it raises
        size = whole.nbytes
        if offset < 0 or offset + HEADER_SIZE > size:
            raise ProtocolError(f"{what}: the {size}-byte mapping has no ring header at offset {offset}")
        with whole.cast("B") as mv:
            fixed = _FIXED.unpack_from(mv, offset)
    magic, version, flags, capacity, data, _, _ = fixed
    if magic != MAGIC:
        raise ProtocolError(f"{what}: bad ring magic 0x{magic:016x} (expected 0x{MAGIC:016x}): this "
                            "memory does not hold an ipcraft ring")
    if version != VERSION:
        raise ProtocolError(f"{what}: ring version {version}; this ipcraft speaks version {VERSION}")
    if flags:
        raise ProtocolError(f"{what}: ring flags 0x{flags:x} (a variant this SPSC code cannot serve)")
    if (capacity < MIN_CAPACITY or capacity & (capacity - 1) or capacity > MAX_CAPACITY
            or data != HEADER_SIZE or offset + ring_size(capacity) > size):
        raise ProtocolError(f"{what}: ring capacity {capacity} (data at {data}) is not a power of two "
                            f"that fits the {size}-byte mapping")
    head = _native.atomic_load_u64(buf, offset + OFF_HEAD)
    tail = _native.atomic_load_u64(buf, offset + OFF_TAIL)
    if (head - tail) % (1 << 64) > capacity or head % 8 or tail % 8:
        raise ProtocolError(f"{what}: ring cursors out of range (head {head}, tail {tail}, capacity "
                            f"{capacity})")
    return int(capacity)


class SpscPort:
    """One side (producer or consumer) of an SPSC ring, with deadlines and ipcraft's errors.

    ``native`` is the _native.SpscPort doing the work; its ``try_send``/``try_recv`` are the channel's
    fast path.  The methods here are the general path: they wait (spin, then sleep) until the
    deadline and turn every -errno into the matching exception.
    """

    def __init__(self, buf: Any, offset: int, *, producer: bool, what: str, signal_fd: int = -1,
                 wait_fd: int = -1, watch_fds: tuple[int, ...] = (), spin: bool = False,
                 limit: int = -1, limit_source: str = "") -> None:
        self.what = what
        self.producer = producer
        self.capacity = check_ring(buf, offset, what)
        self._mv = memoryview(buf).cast("B")
        self._ro = self._mv.toreadonly()  # peek slices this: one view per record, not two
        self.native = _native.SpscPort(buf, offset, producer, signal_fd, wait_fd, watch_fds,
                                   -1 if spin else SPIN_NS, limit)
        self.limit = self.native.limit
        self.limit_source = limit_source or f"half the {self.capacity}-byte ring"
        self.wait_fd = wait_fd

    def _wait(self, deadline: float | None, n: int, doing: str) -> None:
        rc = self.native.wait(remaining(deadline), n)
        if rc:
            raise spsc_error(rc, f"{doing} on {self.what}")

    def _fail(self, rc: int, doing: str, size: int | None = None) -> Exception:
        return spsc_error(rc, f"{doing} on {self.what}", size=size, limit=self.limit,
                          limit_source=self.limit_source)

    # -- producer ----------------------------------------------------------------------------------

    def send(self, payload: Any, sid: int, deadline: float | None) -> None:
        """Push one record, waiting for room until ``deadline``."""
        native = self.native
        while True:
            rc = native.send(payload, sid)
            if rc == 0:
                return
            if rc != -errno.EAGAIN:
                raise self._fail(rc, "sending", memoryview(payload).nbytes)
            self._wait(deadline, memoryview(payload).nbytes, "sending")

    def reserve(self, n: int, deadline: float | None) -> memoryview:
        """Reserve ``n`` bytes for a record, waiting for room until ``deadline``; fill the returned view,
        then commit(sid) or abort()."""
        while True:
            off = self.native.reserve(n)
            if off >= 0:
                return self._mv[off:off + n]
            if off != -errno.EAGAIN:
                raise self._fail(off, "reserving a record", n)
            self._wait(deadline, n, "reserving a record")

    def commit(self, sid: int) -> None:
        rc = self.native.commit(sid)
        if rc:
            raise self._fail(rc, "committing a reserved record")

    def abort(self) -> None:
        self.native.abort()

    def lend_parts(self) -> tuple[_native.SpscPort, Callable[[int], Exception]]:
        """What _native.Lender needs to lend this side in C: the port, and the error of a commit the
        port refused."""
        return self.native, lambda rc: self._fail(rc, "committing a reserved record")

    # -- consumer ----------------------------------------------------------------------------------

    def _next(self, deadline: float | None) -> tuple[int, int, int]:
        native = self.native
        while True:
            got = native.peek()
            if isinstance(got, tuple):
                off, n, sid = got
                if n > self.limit:
                    native.consume()
                    raise MessageTooLarge(f"receiving on {self.what}: a {n}-byte message exceeds the "
                                          f"limit of {self.limit} bytes ({self.limit_source}); it was "
                                          "discarded", n, self.limit)
                return off, n, sid
            if got != -errno.EAGAIN:
                raise self._fail(got, "receiving")
            self._wait(deadline, 0, "receiving")

    def peek(self, deadline: float | None) -> tuple[memoryview, int]:
        """Wait for the next record and show it in place: ``(read-only payload view, serializer id)``.

        The record stays in the ring until :meth:`consume` (or :meth:`unpeek`).  A record longer
        than the port's limit is dropped and MessageTooLarge raised.
        """
        off, n, sid = self._next(deadline)
        return self._ro[off:off + n], sid

    def consume(self) -> None:
        self.native.consume()

    def unpeek(self) -> None:
        self.native.unpeek()

    def recv(self, deadline: float | None) -> tuple[bytes, int]:
        """Pop one record: ``(payload, serializer id)``."""
        off, n, sid = self._next(deadline)
        try:
            return bytes(self._mv[off:off + n]), sid
        finally:
            self.native.consume()

    def wait_readable(self, deadline: float | None) -> bool:
        """True once a record is pending (or the producer is gone: the next recv says how)."""
        rc = self.native.wait(remaining(deadline), 0)
        if rc == -errno.ETIMEDOUT:
            return False
        if rc in (0, -errno.ESHUTDOWN, -errno.EPIPE):
            return True
        raise self._fail(rc, "polling")

    # -- both --------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Mark this side closed in the header and wake the other side."""
        self.native.shutdown()

    def close(self) -> None:
        self.native.close()
        self._ro.release()
        self._mv.release()

