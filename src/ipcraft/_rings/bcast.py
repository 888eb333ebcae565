"""The broadcast ring of bcast://: layout, the subscriber and publisher tables, and the Python side.

One data area, any number of publishers and subscribers; every subscriber receives every message
(unless it falls behind in drop mode, and then it is told exactly how many it missed).  The engine
is in C (``_native/bcast.c``); this module formats and checks the header, claims and frees table
slots, tells live processes from dead ones, and translates the C side's ``-errno`` returns.

Layout (little-endian; offsets from the start of the mapping, which is page aligned; the wire
specification's ``docs/spec/bcast-ring.md`` states it with the publication and reading protocols, and
``tests/transports/test_bcast.py`` reads a ring by it from a process that does not import ipcraft)::

    header page (4096 bytes)
      0     u64  magic              b"IPCRAFTB" (neither ring:// nor shm:// attaches to it)
      8     u32  version            1
      12    u32  flags              bit 0 BLOCK: on_slow="block" (else "drop")
      16    u64  capacity           bytes in the data area: a power of two >= 4096
      24    u64  data offset        4096 + the subscriber table, rounded up to a page
      32    u32  creator pid
      36    u32  subscriber slots   the table's length (max_subscribers=)
      40    u64  slow timeout       nanoseconds (block mode; 0: never evict a live subscriber)
      48    u32  publishers         attached publishers      } one u64, changed together
      52    u32  publishers ever    attachments ever made    }
      56    u32  ended clean        1: the last publisher closed (0: it died)
      60    u32  high water         subscriber slots ever used (publishers scan only these)
      64    u64  armed fd users     subscribers whose fileno() waits for a poke
      128   pthread_mutex_t         the publishers' lock (robust, process-shared)
      192   u64  head               bytes ever published (records end here)
      200   u64  intent             the end of the bytes a publisher may be overwriting
      208   u64  oldest             the first record that is still intact
      216   u64  latest             the most recent record
      224   u64  next seq           the sequence number of the next record (the first is 1)
      256   u32  subscribers sleeping; 264 u64 bell (their futex word)
      320   u32  publishers sleeping; 328 u64 progress (their futex word)
      512   32 x {u32 pid, u32 state, u64 start time}: the publishers
    subscriber table (at 4096, slots x 64 bytes)
      0     u64  cursor             the position of the next record this subscriber reads
      8     u64  expected           the sequence number it expects there (0: any)
      16    u32  state              0 free, 1 live, 2 evicted, 3 being claimed
      20    u32  pid                the subscriber's process   } one u64, claimed with one CAS
      24    u64  start time         its start in /proc/pid/stat: a reused pid is not it
      32    u64  token              random; the slot's owner handle, and its fileno() socket name
      40    u64  armed              its fileno() waits for a poke
      48    u64  missed             messages it has missed so far (ipcraft ls)
    data area (capacity bytes): records, 16-byte aligned, never wrapping around the end

    record: u64 sequence number, u32 length, u32 ~length (a check), the message (ipcraft's 8-byte frame
            header included), padding to a multiple of 16.  A record that would not fit before the
            end of the data area is preceded by a pad record (length 0xFFFFFFFF) filling the rest,
            so every record is contiguous and can be lent as one view.

Decisions:

* **One lock for the publishers, none for the subscribers.**  Publishers serialise on a robust
  process-shared mutex, as ring:// producers do: a publisher killed anywhere leaves the lock to the
  kernel, which hands it on (EOWNERDEAD); **publication is one store** of ``head`` after the whole
  record is written, so nothing half-written is ever visible, and the next publisher repairs the one
  counter the dead one may have left behind (``next seq``, recomputed from the last published record).
  Subscribers never write anything a publisher or another subscriber reads except their own slot.
* **Overwrite detection (the seqlock pattern).**  Before touching a byte, a publisher raises
  ``intent`` to the end of what it will write and moves ``oldest`` past every record that write
  destroys.  A subscriber copies a record, then re-reads ``intent``: the copy is intact exactly when
  ``intent <= position + capacity``.  In drop mode a subscriber that fails this check was lapped: it
  discards the copy, moves to ``oldest`` and counts the records in between by their sequence numbers
  (MessagesMissed, with the exact number).  A zero-copy view is checked the same way when it is
  handed back (recv_view's exit).
* **Block mode.**  A publisher waits (holding the lock: the others would wait for room anyway) until
  the slowest *live* subscriber's cursor leaves room.  While it waits it checks that subscriber's pid
  and start time every 10 ms and evicts it if it died, or if it made no progress for
  ``slow_timeout`` seconds; an evicted subscriber learns it at its next read (SubscriberEvicted, with
  what it missed) and then continues from the oldest record present.  Its cursor no longer holds
  anyone back, and the overwrite check keeps it from reading torn bytes meanwhile.
* **Who is alive.**  A pid alone is not an identity (pids are reused), so each slot keeps the
  process's start time from /proc/pid/stat as well; a slot whose pid is gone or now belongs to a
  process that started at another time is dead.  Dead subscribers are evicted by a waiting
  publisher and their slots freed by the next subscriber that needs one (``ipcraft ls`` shows them);
  dead publishers are reaped by subscribers that wait (every 0.25 s), which is how the death of the
  last publisher becomes PeerVanished after the subscribers drained what it sent.
* **Waiting**: spin (``SPIN_NS``) then FUTEX_WAIT in slices, with the Dekker flag pattern of the
  other rings: subscribers sleep on ``bell``, which a publisher rings only when one sleeps; a
  blocked publisher sleeps on ``progress``, which a subscriber bumps only when one sleeps.
  ``wait="spin"`` never sleeps.  ``fileno()``: as ring:// does, a subscriber binds an abstract datagram
  socket named after its slot's token, arms its slot when it finds nothing to read, and a publisher
  pokes the armed sockets after each publication.
* **Too large**: a record may take at most half the data area (so a pad plus a record always fit),
  i.e. ``capacity / 2 - 16`` bytes of message including ipcraft's frame header.

Never trust shared memory: the header is validated at attach; the C side checks every cursor, length,
length check and sequence number against what is possible before it copies, and reports a corrupt ring
as EPROTO (ProtocolError) rather than crashing or looping.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from typing import Final

from .. import _native
from .._endpoint import MAX_RING_CAPACITY
from .._errors import ring_error
from ..errors import (
    ChannelClosed,
    LimitExceeded,
    MessagesMissed,
    PeerVanished,
    ProtocolError,
    SubscriberEvicted,
)
from . import check_native_layout, pow2_capacity

MAGIC: Final = int.from_bytes(b"IPCRAFTB", "little")
VERSION: Final = 1
HEADER_SIZE: Final = 4096
MIN_CAPACITY: Final = 4096
MAX_CAPACITY: Final = MAX_RING_CAPACITY["bcast"]
DEFAULT_CAPACITY: Final = 4 * 1024 * 1024
DEFAULT_SLOTS: Final = 64
MAX_SLOTS: Final = 4096
OFF_MAGIC: Final = 0
OFF_VERSION: Final = 8
OFF_FLAGS: Final = 12
OFF_CAPACITY: Final = 16
OFF_DATA: Final = 24
OFF_CREATOR_PID: Final = 32
OFF_SLOTS: Final = 36
OFF_SLOW_NS: Final = 40
OFF_PUBLISHERS: Final = 48
OFF_PUBLISHERS_EVER: Final = 52
OFF_ENDED_CLEAN: Final = 56
OFF_HIWATER: Final = 60
OFF_FD_ARMED: Final = 64
OFF_LOCK: Final = 128
OFF_HEAD: Final = 192
OFF_INTENT: Final = 200
OFF_OLDEST: Final = 208
OFF_LATEST: Final = 216
OFF_NEXT_SEQ: Final = 224
OFF_SUBS_SLEEPING: Final = 256
OFF_BELL: Final = 264
OFF_PUBS_SLEEPING: Final = 320
OFF_PROGRESS: Final = 328
OFF_PUB_TABLE: Final = 512
PUB_SLOTS: Final = 32
PUB_SLOT_SIZE: Final = 16
OFF_SUB_TABLE: Final = 4096
SUB_SLOT_SIZE: Final = 64
SO_CURSOR: Final = 0
SO_EXPECTED: Final = 8
SO_STATE: Final = 16
SO_PID: Final = 20
SO_START: Final = 24
SO_TOKEN: Final = 32
SO_ARMED: Final = 40
SO_MISSED: Final = 48
SLOT_FREE: Final = 0
SLOT_LIVE: Final = 1
SLOT_EVICTED: Final = 2
SLOT_CLAIMING: Final = 3
REC_HEADER: Final = 16
PAD_LEN: Final = 0xFFFFFFFF
FLAG_BLOCK: Final = 1
#: The abstract socket name of a subscriber that gave out a fileno() (bcast.c's BCAST_FD_NAME).
FD_NAME: Final = b"\0ipcraft-bcast-%016x"
#: How long a waiter spins before it sleeps (wait="block").
SPIN_NS: Final = 100_000
#: How long an opener waits for a creator that is still formatting the header.
FORMAT_WAIT: Final = 1.0
#: The kernel's largest pid_max: anything above is not a pid.
PID_MAX_LIMIT: Final = 4194304
#: How often a waiting subscriber looks for dead publishers.
REAP_INTERVAL: Final = 0.25

_FIXED = struct.Struct("<QIIQQIIQ")  # magic, version, flags, capacity, data offset, creator pid, slots, slow ns

check_native_layout(_native.bcast_layout(), globals(), "broadcast ring")


def round_capacity(n: int) -> int:
    """The data-area size used for a requested ``capacity``: the next power of two, at least 4096."""
    return pow2_capacity(n, MIN_CAPACITY, MAX_CAPACITY)


def data_offset(slots: int) -> int:
    """Where the data area starts for a table of ``slots`` subscribers (page aligned)."""
    return (OFF_SUB_TABLE + slots * SUB_SLOT_SIZE + 4095) & ~4095


def ring_size(capacity: int, slots: int) -> int:
    """Bytes of shared memory a ring of ``capacity`` with ``slots`` subscriber slots occupies."""
    return data_offset(slots) + capacity


def max_message(capacity: int) -> int:
    """The largest message (ipcraft's frame header included) a ring of ``capacity`` carries."""
    return capacity // 2 - REC_HEADER


def start_time(pid: int) -> int:
    """The start time of ``pid`` (clock ticks since boot, /proc/pid/stat field 22); 0 if it is gone or a
    zombie (it exited; its parent has not reaped it yet)."""
    return int(_native.bcast_start_time(pid))


def alive(pid: int, start: int) -> bool:
    """Whether the process recorded as (``pid``, ``start``) still runs; a reused pid is not it."""
    if not 0 < pid <= PID_MAX_LIMIT:
        return False  # (a scribbled pid must never reach kill() as a process group)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return start == 0 or start_time(pid) == start


def intact(buf: memoryview, pos: int, capacity: int) -> bool:
    """Whether the record at ``pos`` has not been (and is not being) overwritten."""
    return bool(_native.atomic_load_u64(buf, OFF_INTENT) <= pos + capacity)


def format_ring(buf: memoryview, capacity: int, slots: int, block: bool, slow_timeout: float) -> None:
    """Write a fresh header into zero-filled ``buf``; the magic goes last, so an opener never sees half."""
    slow_ns = int(slow_timeout * 1e9)
    _FIXED.pack_into(buf, 0, 0, VERSION, FLAG_BLOCK if block else 0, capacity, data_offset(slots),
                     os.getpid(), slots, slow_ns)
    rc = _native.pmutex_init(buf, OFF_LOCK)
    if rc < 0:
        raise OSError(-rc, f"pthread_mutex_init of the publishers' lock: {os.strerror(-rc)}")
    _native.atomic_store_u64(buf, OFF_NEXT_SEQ, 1)
    _native.atomic_store_u64(buf, OFF_MAGIC, MAGIC)


class Header:
    """The validated fixed part of a ring's header."""

    __slots__ = ("capacity", "block", "slots", "slow_timeout", "creator_pid")

    def __init__(self, capacity: int, block: bool, slots: int, slow_timeout: float, creator_pid: int) -> None:
        self.capacity, self.block, self.slots = capacity, block, slots
        self.slow_timeout, self.creator_pid = slow_timeout, creator_pid


def check_ring(buf: memoryview, what: str) -> Header:
    """Validate the header of the ring in ``buf``, waiting up to FORMAT_WAIT for its creator.

    Raises:
        ProtocolError: too small, a foreign or future magic/version, impossible sizes or cursors.
    """
    if len(buf) < HEADER_SIZE + MIN_CAPACITY:
        raise ProtocolError(f"{what} is not an ipcraft broadcast ring: {len(buf)} bytes is smaller than the "
                            f"smallest ({HEADER_SIZE + MIN_CAPACITY} bytes)")
    deadline = time.monotonic() + FORMAT_WAIT
    while _native.atomic_load_u64(buf, OFF_MAGIC) == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    magic, version, flags, capacity, data, creator, slots, slow_ns = _FIXED.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ProtocolError(f"{what} is not an ipcraft bcast:// ring (magic {magic:#x}, expected {MAGIC:#x}); "
                            "nothing was changed")
    if version != VERSION:
        raise ProtocolError(f"{what} has broadcast ring format version {version}; this ipcraft reads "
                            f"version {VERSION}")
    if flags & ~FLAG_BLOCK:
        raise ProtocolError(f"{what} has unknown flags {flags:#x}")
    if (capacity < MIN_CAPACITY or capacity & (capacity - 1) or capacity > MAX_CAPACITY or not 0 < slots <= MAX_SLOTS
            or data != data_offset(slots) or data + capacity > len(buf) or slow_ns > 10**18):
        raise ProtocolError(f"{what} has an impossible header: capacity {capacity}, {slots} slots, data offset "
                            f"{data}, in {len(buf)} bytes")
    head, oldest = (_native.atomic_load_u64(buf, off) for off in (OFF_HEAD, OFF_OLDEST))
    if head - oldest > capacity or head < oldest or (head | oldest) & 15:
        raise ProtocolError(f"{what} has corrupt cursors (head {head}, oldest {oldest}, capacity {capacity})")
    return Header(capacity, bool(flags & FLAG_BLOCK), slots, slow_ns / 1e9, creator)


def _slot_off(i: int) -> int:
    return OFF_SUB_TABLE + i * SUB_SLOT_SIZE


def _pub_off(i: int) -> int:
    return OFF_PUB_TABLE + i * PUB_SLOT_SIZE


# -- the publisher table --------------------------------------------------------------------------------


def register_publisher(buf: memoryview, what: str) -> int:
    """Take a free entry of the publisher table for this process; its index."""
    me, start = os.getpid(), start_time(os.getpid())
    word = me | (1 << 32)
    for sweep in range(2):
        for i in range(PUB_SLOTS):
            off = _pub_off(i)
            if _native.atomic_cas_u64(buf, off, 0, word):
                _native.atomic_store_u64(buf, off + 8, start)
                _native.atomic_add_u64(buf, OFF_PUBLISHERS, 1 | (1 << 32))  # publishers and publishers ever
                return i
        if sweep == 0:
            reap_publishers(buf)
    raise LimitExceeded(errno.EMFILE, f"publishing on {what}: all {PUB_SLOTS} publisher entries are held by "
                                      "live publishers (limit: PUB_SLOTS in ipcraft/_rings/bcast.py)")


def _drop_publisher(buf: memoryview, i: int, word: int, clean: bool) -> bool:
    """Free entry ``i`` if it still holds ``word``; the last one out says how the stream ended."""
    if not _native.atomic_cas_u64(buf, _pub_off(i), word, 0):
        return False
    if _native.atomic_load_u32(buf, OFF_PUBLISHERS) == 1:  # probably the last: say how, before the count
        _native.atomic_store_u32(buf, OFF_ENDED_CLEAN, int(clean))  # says "ended" to the subscribers
    if _native.atomic_add_u64(buf, OFF_PUBLISHERS, -1) & 0xFFFFFFFF == 1:
        _native.atomic_store_u32(buf, OFF_ENDED_CLEAN, int(clean))
    return True


def unregister_publisher(buf: memoryview, i: int) -> None:
    """A publisher's clean close: free its entry (the last one's close is the end of the stream)."""
    _drop_publisher(buf, i, os.getpid() | (1 << 32), clean=True)


def reap_publishers(buf: memoryview) -> int:
    """Free the entries of publishers that died; how many."""
    reaped = 0
    for i in range(PUB_SLOTS):
        off = _pub_off(i)
        word = _native.atomic_load_u64(buf, off)
        if word and not alive(word & 0xFFFFFFFF, _native.atomic_load_u64(buf, off + 8)):
            reaped += _drop_publisher(buf, i, word, clean=False)
    return reaped


def publishers(buf: memoryview) -> list[int]:
    """The pids in the publisher table."""
    out = []
    for i in range(PUB_SLOTS):
        word = _native.atomic_load_u64(buf, _pub_off(i))
        if word:
            out.append(word & 0xFFFFFFFF)
    return out


# -- the subscriber table -------------------------------------------------------------------------------


def claim_slot(buf: memoryview, slots: int, what: str) -> tuple[int, int]:
    """Claim a free subscriber slot for this process: ``(index, token)``; the slot is in state CLAIMING."""
    me = os.getpid()
    word = SLOT_CLAIMING | (me << 32)
    for sweep in range(2):
        for i in range(slots):
            off = _slot_off(i)
            if _native.atomic_cas_u64(buf, off + SO_STATE, 0, word):
                token = int.from_bytes(os.urandom(8), "little") | 1
                _native.atomic_store_u64(buf, off + SO_START, start_time(me))
                _native.atomic_store_u64(buf, off + SO_TOKEN, token)
                _native.atomic_store_u64(buf, off + SO_ARMED, 0)
                _native.atomic_store_u64(buf, off + SO_MISSED, 0)
                while True:  # raise the high-water mark to cover this slot
                    hw = _native.atomic_load_u64(buf, OFF_ENDED_CLEAN)
                    if hw >> 32 > i or _native.atomic_cas_u64(buf, OFF_ENDED_CLEAN, hw,
                                                              (hw & 0xFFFFFFFF) | ((i + 1) << 32)):
                        break
                return i, token
        if sweep == 0:
            reap_subscribers(buf, slots)
    raise LimitExceeded(errno.EMFILE, f"subscribing to {what}: all {slots} subscriber slots are held by live "
                                      "subscribers (limit: max_subscribers= when the ring is created)")


def set_live(buf: memoryview, i: int) -> None:
    """CLAIMING -> LIVE (the cursor is set): publishers in block mode now wait for this subscriber."""
    word = _native.atomic_load_u64(buf, _slot_off(i) + SO_STATE)
    _native.atomic_cas_u64(buf, _slot_off(i) + SO_STATE, word, SLOT_LIVE | (word & ~0xFFFFFFFF))


def free_slot(buf: memoryview, i: int, token: int) -> None:
    """Give slot ``i`` back if this handle (``token``) still holds it."""
    off = _slot_off(i)
    if _native.atomic_load_u64(buf, off + SO_TOKEN) != token:
        return
    word = _native.atomic_load_u64(buf, off + SO_STATE)
    if _native.atomic_load_u64(buf, off + SO_ARMED) and _native.atomic_cas_u64(buf, off + SO_ARMED, 1, 0):
        _native.atomic_add_u64(buf, OFF_FD_ARMED, -1)
    _native.atomic_store_u64(buf, off + SO_TOKEN, 0)
    _native.atomic_cas_u64(buf, off + SO_STATE, word, 0)


def reap_subscribers(buf: memoryview, slots: int) -> int:
    """Free the slots of subscribers whose process is gone; how many."""
    reaped = 0
    hw = min(_native.atomic_load_u64(buf, OFF_ENDED_CLEAN) >> 32, slots)
    for i in range(hw):
        off = _slot_off(i)
        word = _native.atomic_load_u64(buf, off + SO_STATE)
        if word == 0 or alive(word >> 32, _native.atomic_load_u64(buf, off + SO_START)):
            continue
        if _native.atomic_load_u64(buf, off + SO_ARMED) and _native.atomic_cas_u64(buf, off + SO_ARMED, 1, 0):
            _native.atomic_add_u64(buf, OFF_FD_ARMED, -1)
        reaped += _native.atomic_cas_u64(buf, off + SO_STATE, word, 0)
    return reaped


def subscribers(buf: memoryview) -> list[dict[str, int | str]]:
    """Each occupied subscriber slot: pid, state, lag (messages and bytes behind head), missed."""
    head = _native.atomic_load_u64(buf, OFF_HEAD)
    next_seq = _native.atomic_load_u64(buf, OFF_NEXT_SEQ)
    slots = min(struct.unpack_from("<I", buf, OFF_SLOTS)[0], MAX_SLOTS)
    hw = min(_native.atomic_load_u64(buf, OFF_ENDED_CLEAN) >> 32, slots)
    out: list[dict[str, int | str]] = []
    names = {SLOT_LIVE: "live", SLOT_EVICTED: "evicted", SLOT_CLAIMING: "joining"}
    for i in range(hw):
        off = _slot_off(i)
        word = _native.atomic_load_u64(buf, off + SO_STATE)
        if word == 0:
            continue
        cursor = _native.atomic_load_u64(buf, off + SO_CURSOR)
        expected = _native.atomic_load_u64(buf, off + SO_EXPECTED)
        pid, state = word >> 32, word & 0xFFFFFFFF
        out.append({"slot": i, "pid": pid, "state": names.get(state, f"unknown {state}"),
                    "alive": int(alive(pid, _native.atomic_load_u64(buf, off + SO_START))),
                    "lag_messages": max(0, next_seq - expected) if expected else 0,
                    "lag_bytes": max(0, head - cursor), "missed": _native.atomic_load_u64(buf, off + SO_MISSED)})
    return out


def describe(buf: memoryview, what: str) -> dict[str, object]:
    """What ``ipcraft ls`` shows of a ring: its settings, its publishers and its subscribers.

    Raises:
        ProtocolError: the header is damaged.
    """
    h = check_ring(buf, what)
    return {"capacity": h.capacity, "on_slow": "block" if h.block else "drop", "slow_timeout": h.slow_timeout,
            "creator_pid": h.creator_pid, "published": _native.atomic_load_u64(buf, OFF_NEXT_SEQ) - 1,
            "publishers": publishers(buf), "subscribers": subscribers(buf)}


# -- errors ------------------------------------------------------------------------------------------------


def bcast_error(rc: int, what: str, *, size: int | None = None, limit: int | None = None,
                limit_source: str = "") -> Exception:
    """The exception for ``-errno`` ``rc`` from a bcast:// operation (_native.BcastPort).

    EPROTO: a corrupt header, cursor or record; EMSGSIZE: a message that can never fit; ETIMEDOUT;
    EBADF: closed by another thread meanwhile.  (EOVERFLOW, ESTALE and EPIPE are handled by the
    subscriber, which knows the missed count and how the publishers left.)
    """
    err = -rc
    if err == errno.EPROTO:
        return ProtocolError(f"{what}: the shared broadcast ring is corrupt (a cursor, record length, check "
                             "or sequence number is impossible); it cannot be trusted and should be closed")
    return ring_error(err, what, size, limit, limit_source, "closed by another thread meanwhile")


def ended_error(buf: memoryview, what: str) -> ChannelClosed:
    """ChannelClosed if the last publisher closed cleanly, PeerVanished if it died."""
    if _native.atomic_load_u32(buf, OFF_ENDED_CLEAN):
        return ChannelClosed(f"{what}: every publisher closed and every message was received")
    return PeerVanished(f"{what}: the last publisher died (every message it published was received)")


def missed_error(missed: int, what: str, evicted: bool) -> MessagesMissed:
    if evicted:
        return SubscriberEvicted(f"{what}: this subscriber was evicted for being slower than slow_timeout (or "
                                 f"stopped); it missed {missed} messages and continues from the oldest one "
                                 "still in the ring", missed)
    return MessagesMissed(f"{what}: the publishers lapped this subscriber; it missed {missed} messages and "
                          "continues from the oldest one still in the ring", missed)


class FdWake:
    """fileno() for one subscriber: an abstract datagram socket that publishers poke when armed."""

    _sock: socket.socket | None = None

    def __init__(self, buf: memoryview, slot: int, token: int) -> None:
        self._buf, self._off, self._token = buf, _slot_off(slot), token

    @property
    def active(self) -> bool:
        return self._sock is not None

    def fileno(self) -> int:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            try:
                sock.bind(FD_NAME % self._token)
            except BaseException:
                sock.close()
                raise
            self._sock = sock
        return self._sock.fileno()

    def rearm(self, pending: bool) -> None:
        """Drain the socket and arm the slot; poke ourselves if something is already pending."""
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                sock.recv(16)
            except (BlockingIOError, InterruptedError):
                break
        if _native.atomic_cas_u64(self._buf, self._off + SO_ARMED, 0, 1):
            _native.atomic_add_u64(self._buf, OFF_FD_ARMED, 1)  # a locked RMW: also the Dekker fence
        else:
            _native.atomic_add_u64(self._buf, OFF_FD_ARMED, 0)
        if pending:
            try:
                sock.sendto(b"!", FD_NAME % self._token)
            except OSError:
                pass  # its queue is full of wake-ups already: it is readable

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
