"""The SPSC ring (_rings/spsc.py over _native.SpscPort) in one process: model checking, wrap-around,
validation of a corrupt header, and the native surface's behaviour on bad arguments."""

from __future__ import annotations

import collections
import errno
import mmap
import os
import select
import struct
import threading
import time

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ipcraft import _native
from ipcraft._rings import spsc as _ring
from ipcraft.errors import MessageTooLarge, ProtocolError, Timeout

EAGAIN = -errno.EAGAIN


def make_ring(capacity: int = 256, **kw: object) -> tuple[mmap.mmap, _ring.SpscPort, _ring.SpscPort]:
    mm = mmap.mmap(-1, _ring.ring_size(capacity))
    _ring.format_ring(mm, 0, capacity)
    prod = _ring.SpscPort(mm, 0, producer=True, what="test ring", **kw)  # type: ignore[arg-type]
    cons = _ring.SpscPort(mm, 0, producer=False, what="test ring", **kw)  # type: ignore[arg-type]
    return mm, prod, cons


def rec_size(n: int) -> int:
    return 8 + (n + 7) // 8 * 8


def test_layout_matches_native():
    """The layout constants of _ring.py are the ones compiled into _native."""
    compiled = _native.spsc_layout()
    assert {k: getattr(_ring, k) for k in compiled} == compiled


def test_round_capacity():
    """Capacities round up to a power of two of at least one page; too large is refused."""
    assert _ring.round_capacity(1) == 4096
    assert _ring.round_capacity(5000) == 8192
    assert _ring.round_capacity(1 << 20) == 1 << 20
    with pytest.raises(ValueError, match="maximum"):
        _ring.round_capacity(_ring.MAX_CAPACITY + 1)


class RingModel(RuleBasedStateMachine):
    """Drive a producer and a consumer end against a deque and a byte-exact model of the cursors."""

    def __init__(self) -> None:
        super().__init__()
        self.cap = 128
        self.mm, self.p, self.c = make_ring(self.cap)
        self.model: collections.deque[tuple[bytes, int, int]] = collections.deque()  # data, sid, advance
        self.head = self.tail = 0
        self.reserved: tuple[int, memoryview] | None = None
        self.peeked = False

    def teardown(self) -> None:
        if self.reserved is not None:
            self.reserved[1].release()
        self.p.close()
        self.c.close()
        self.mm.close()

    def _advance_for(self, n: int) -> int:
        pos = self.head % self.cap
        pad = self.cap - pos if pos + rec_size(n) > self.cap else 0
        return pad + rec_size(n)

    def _pushed(self, data: bytes, sid: int) -> None:
        adv = self._advance_for(len(data))
        self.head += adv
        self.model.append((data, sid, adv))

    def _popped(self) -> tuple[bytes, int]:
        data, sid, adv = self.model.popleft()
        self.tail += adv
        return data, sid

    def _fits(self, n: int) -> bool:
        return self.head - self.tail + self._advance_for(n) <= self.cap

    @precondition(lambda self: self.reserved is None)
    @rule(data=st.binary(max_size=56), sid=st.integers(0, 255))
    def push(self, data: bytes, sid: int) -> None:
        fits = self._fits(len(data))
        rc = self.p.native.send(data, sid)
        if fits:
            assert rc == 0
            self._pushed(data, sid)
        else:
            assert rc == EAGAIN

    @precondition(lambda self: self.reserved is None)
    @rule(items=st.lists(st.binary(max_size=56) | st.binary(min_size=57, max_size=80), max_size=6),
          sid=st.integers(0, 255))
    def push_many(self, items: list[bytes], sid: int) -> None:
        """A batch pushes the longest prefix that fits, each record whole, with one publication."""
        expected = 0
        for data in items:
            if len(data) > 56 or not self._fits(len(data)):
                break
            self._pushed(data, sid)
            expected += 1
        assert self.p.native.try_send_many(items, sid) == expected

    @precondition(lambda self: not self.peeked)
    @rule(most=st.integers(0, 5), sid=st.sampled_from([-1, 0, 7, 255]))
    def pop_many(self, most: int, sid: int) -> None:
        """A batch pops up to `most` records, stopping before one of another serializer."""
        want = []
        while len(want) < most and self.model and sid in (-1, self.model[0][1]):
            want.append(self._popped()[0])
        assert self.c.native.try_recv_many(most, sid) == want

    @rule(n=st.integers(57, 300))
    def push_too_large(self, n: int) -> None:
        assert self.p.native.send(bytes(n)) in (-errno.EMSGSIZE, -errno.EBUSY)

    @precondition(lambda self: not self.peeked)
    @rule()
    def pop(self) -> None:
        got = self.c.native.try_recv()
        if not self.model:
            assert got is None
            return
        data, _sid = self._popped()
        assert got == data

    @precondition(lambda self: not self.peeked)
    @rule()
    def pop_with_header(self) -> None:
        if not self.model:
            assert self.c.native.peek() == EAGAIN
            return
        off, n, _ = self.c.native.peek()
        record = bytes(memoryview(self.mm)[off - 8:off + n])  # the record as it lies in the ring
        self.c.native.unpeek()
        payload, got_sid = self.c.recv(None)
        data, sid = self._popped()
        assert payload == data and got_sid == sid
        assert record[8:] == data and record[1] == sid and record[0] == 0xA1

    @precondition(lambda self: self.reserved is None)
    @rule(n=st.integers(0, 56))
    def reserve(self, n: int) -> None:
        off = self.p.native.reserve(n)
        if self._fits(n):
            assert off >= 0
            self.reserved = (n, memoryview(self.mm)[off:off + n])
        else:
            assert off == EAGAIN

    @precondition(lambda self: self.reserved is not None)
    @rule(fill=st.integers(0, 255), publish=st.booleans())
    def commit_or_abort(self, fill: int, publish: bool) -> None:
        assert self.reserved is not None
        n, view = self.reserved
        view[:] = bytes([fill]) * n
        view.release()
        self.reserved = None
        if publish:
            assert self.p.native.commit(7) == 0
            self._pushed(bytes([fill]) * n, 7)
        else:
            assert self.p.native.abort() == 0

    @precondition(lambda self: not self.peeked and bool(self.model))
    @rule()
    def peek(self) -> None:
        off, n, sid = self.c.native.peek()
        assert (bytes(self.mm[off:off + n]), sid) == self.model[0][:2]
        assert self.c.native.try_recv() is None  # a peeked record is not popped twice
        self.peeked = True

    @precondition(lambda self: self.peeked)
    @rule(keep=st.booleans())
    def consume_or_unpeek(self, keep: bool) -> None:
        self.peeked = False
        if keep:
            assert self.c.native.unpeek() == 0
        else:
            assert self.c.native.consume() == 0
            self._popped()

    @invariant()
    def cursors_agree(self) -> None:
        assert self.p.native.position == self.head
        assert self.c.native.position == self.tail
        assert self.p.native.pending == self.head - self.tail
        assert (self.p.native.pending == 0) == (not self.model)


TestRingModel = RingModel.TestCase
TestRingModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


@pytest.mark.parametrize("start", range(0, 256, 8))
def test_wrap_around_at_every_offset(start):
    """Starting at every 8-byte offset, records of every size up to the limit wrap intact."""
    mm, p, c = make_ring(256)
    try:
        left = start
        while left:  # move both cursors to `start`, at most half the ring per record
            step = min(left, 128)
            assert p.native.send(bytes(step - 8)) == 0
            assert c.native.try_recv() == bytes(step - 8)
            left -= step
        assert p.native.position == c.native.position == start
        for n in range(0, p.limit + 1, 7):
            msg = os.urandom(n)
            assert p.native.send(msg, 5) == 0
            assert p.native.send(b"next") == 0
            off, _, _ = c.native.peek()
            assert bytes(memoryview(mm)[off - 8:off + n]) == bytes([0xA1, 5, 0, 0]) + struct.pack("<I", n) + msg
            c.native.unpeek()
            assert c.recv(None) == (msg, 5)
            assert c.native.try_recv() == b"next"
            assert p.native.pending == 0
    finally:
        p.close()
        c.close()
        mm.close()


def test_full_ring_refuses_then_accepts():
    """A full ring answers -EAGAIN without blocking, and accepts again once the consumer pops."""
    mm, p, c = make_ring(256)
    sent = 0
    while p.native.send(bytes(40)) == 0:
        sent += 1
    assert sent == 256 // 48
    assert c.native.try_recv() == bytes(40)
    assert p.native.send(bytes(40)) == 0
    p.close(), c.close(), mm.close()


def test_message_too_large_names_capacity():
    """A payload over half the ring is MessageTooLarge naming the limit, never a wait."""
    mm, p, c = make_ring(256)
    with pytest.raises(MessageTooLarge, match=r"limit of 120 bytes \(half the 256-byte ring\)"):
        p.send(bytes(121), 0, time.monotonic() + 5)
    p.close(), c.close(), mm.close()


def _corrupt(offset: int, fmt: str, value: int) -> mmap.mmap:
    mm = mmap.mmap(-1, _ring.ring_size(256))
    _ring.format_ring(mm, 0, 256)
    struct.pack_into(fmt, mm, offset, value)
    return mm


@pytest.mark.parametrize("offset,fmt,value,match", [
    (_ring.OFF_MAGIC, "<Q", 0x1234, "bad ring magic"),
    (_ring.OFF_VERSION, "<I", 2, "version 2"),
    (_ring.OFF_FLAGS, "<I", 1, "flags"),
    (_ring.OFF_CAPACITY, "<Q", 200, "capacity 200"),
    (_ring.OFF_CAPACITY, "<Q", 512, "capacity 512"),
    (_ring.OFF_CAPACITY, "<Q", 32, "capacity 32"),
    (_ring.OFF_DATA, "<Q", 64, "data at 64"),
    (_ring.OFF_HEAD, "<Q", 264, "cursors out of range"),
    (_ring.OFF_HEAD, "<Q", 4, "cursors out of range"),
    (_ring.OFF_TAIL, "<Q", 8, "cursors out of range"),
])
def test_corrupt_header_is_protocol_error(offset, fmt, value, match):
    """A foreign or corrupt header (magic, version, flags, capacity, cursors) is ProtocolError."""
    mm = _corrupt(offset, fmt, value)
    with pytest.raises(ProtocolError, match=match):
        _ring.SpscPort(mm, 0, producer=False, what="test ring")
    with pytest.raises(ValueError):  # the C side refuses on its own too
        _native.SpscPort(mm, 0, False)
    mm.close()


@pytest.mark.parametrize("where,value", [("length", 10_000), ("magic", 0x00), ("flags", 0x0001),
                                         ("head", 4096 + 8), ("head", 3)])
def test_corrupt_record_or_cursor_is_protocol_error(where, value):
    """A record length, magic or flag, or a cursor corrupted after attach is ProtocolError."""
    mm, p, c = make_ring(256)
    assert p.native.send(b"x" * 16) == 0
    data = _ring.HEADER_SIZE
    if where == "length":
        struct.pack_into("<I", mm, data + 4, value)
    elif where == "magic":
        struct.pack_into("<B", mm, data, value)
    elif where == "flags":
        struct.pack_into("<H", mm, data + 2, value)
    else:
        struct.pack_into("<Q", mm, _ring.OFF_HEAD, value)
    assert c.native.try_recv() is None
    with pytest.raises(ProtocolError, match="corrupt"):
        c.recv(time.monotonic() + 1)
    p.close(), c.close(), mm.close()


def test_corrupt_tail_is_seen_by_the_producer():
    """A consumer cursor moved beyond the producer's is ProtocolError for the producer."""
    mm, p, c = make_ring(256)
    for _ in range(5):
        assert p.native.send(bytes(40)) == 0
    struct.pack_into("<Q", mm, _ring.OFF_TAIL, 1 << 40)
    assert p.native.send(bytes(40)) == -errno.EPROTO
    p.close(), c.close(), mm.close()


def test_native_bad_arguments_never_crash():
    """Bad buffers, offsets, fds and an uninitialised SpscPort give exceptions or -errno, not crashes."""
    mm = mmap.mmap(-1, _ring.ring_size(256))
    _ring.format_ring(mm, 0, 256)
    with pytest.raises(ValueError):
        _native.SpscPort(mm, 8, True)  # misaligned / no header there
    with pytest.raises(ValueError):
        _native.SpscPort(mm, len(mm), True)
    with pytest.raises(BufferError):
        _native.SpscPort(b"read-only", 0, True)
    with pytest.raises(ValueError, match="non-blocking"):
        r, w = os.pipe()
        try:
            _native.SpscPort(mm, 0, False, -1, r)
        finally:
            os.close(r), os.close(w)
    with pytest.raises(ValueError):
        _native.SpscPort(mm, 0, True, -5)
    with pytest.raises(ValueError):
        _native.SpscPort(mm, 0, True, watch_fds=(1, 2, 3, 4, 5))
    blank = _native.SpscPort.__new__(_native.SpscPort)
    assert blank.send(b"x") == -errno.EBADF
    assert blank.try_send(b"x") is False
    assert blank.try_recv() is None
    assert blank.peek() == -errno.EBADF
    assert blank.wait(0) == -errno.EBADF
    assert blank.reserve(1) == -errno.EBADF
    assert blank.commit(0) == -errno.EINVAL
    prod = _native.SpscPort(mm, 0, True)
    with pytest.raises(ValueError):
        prod.wait(-1.0)
    with pytest.raises(TypeError):
        prod.send()
    with pytest.raises(ValueError):
        prod.send(b"x", 300)
    assert prod.try_send(12345) is False  # not a buffer: the general path reports TypeError
    assert prod.peek() == -errno.EINVAL  # a producer cannot consume
    prod.close()
    prod.close()
    assert prod.send(b"x") == -errno.EBADF
    mm.close()  # no export is left behind after close()


def test_wait_times_out_in_both_modes():
    """An empty ring's wait ends with Timeout at the deadline, spinning or sleeping."""
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    for spin in (False, True):
        mm, p, c = make_ring(256, wait_fd=efd, spin=spin)
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            c.recv(time.monotonic() + 0.05)
        assert 0.04 < time.monotonic() - t0 < 1.0
        assert not c.wait_readable(time.monotonic())
        p.close(), c.close(), mm.close()
    os.close(efd)


def test_sleeping_consumer_is_woken_by_the_producer():
    """A consumer sleeping on its eventfd wakes when another thread pushes (no lost wake-up)."""
    data, room = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    mm = mmap.mmap(-1, _ring.ring_size(4096))
    _ring.format_ring(mm, 0, 4096)
    p = _ring.SpscPort(mm, 0, producer=True, what="t", signal_fd=data, wait_fd=room)
    c = _ring.SpscPort(mm, 0, producer=False, what="t", signal_fd=room, wait_fd=data)
    n = 3000

    def produce():
        for i in range(n):
            p.send(struct.pack("<I", i) * 100, 0, time.monotonic() + 10)
            if i % 500 == 0:
                time.sleep(0.002)  # let the consumer fall asleep now and then

    t = threading.Thread(target=produce)
    t.start()
    for i in range(n):
        assert c.recv(time.monotonic() + 10)[0][:4] == struct.pack("<I", i)
    t.join()
    p.close(), c.close(), mm.close()
    os.close(data), os.close(room)


def test_level_triggered_eventfd():
    """With set_level, the eventfd is readable exactly while a record is pending."""
    data = os.eventfd(0, os.EFD_NONBLOCK)
    mm = mmap.mmap(-1, _ring.ring_size(4096))
    _ring.format_ring(mm, 0, 4096)
    p = _ring.SpscPort(mm, 0, producer=True, what="t", signal_fd=data)
    c = _ring.SpscPort(mm, 0, producer=False, what="t", wait_fd=data)
    readable = lambda: bool(select.select([data], [], [], 0)[0])  # noqa: E731
    assert p.native.send(b"early") == 0  # before level mode: not signalled
    assert c.native.set_level(True) == 0
    assert readable()
    assert c.native.try_recv() == b"early"
    assert not readable()
    for _k in range(3):
        assert p.native.send(b"a") == 0
        assert p.native.send(b"b") == 0
        assert readable()
        assert c.native.try_recv() == b"a"
        assert readable()
        assert c.native.try_recv() == b"b"
        assert not readable()
    assert not c.wait_readable(time.monotonic())
    assert not readable()
    p.close(), c.close(), mm.close()
    os.close(data)


def test_shared_records_need_a_shared_region():
    """A SHARED record in a ring whose consumer was given no shared region (ring://, file://, a
    version 1 shm:// connection) is ProtocolError: the reader never follows it anywhere."""
    mm, p, c = make_ring(256)
    struct.pack_into("<BBHI", mm, _ring.HEADER_SIZE, _ring.REC_MAGIC, 0, _ring.REC_FLAG_SHARED, 16)
    _native.atomic_store_u64(mm, _ring.OFF_HEAD, 8)
    assert c.native.peek() == -errno.EPROTO
    assert c.native.try_recv() is None
    p.close(), c.close(), mm.close()


def test_share_refuses_what_is_not_a_shared_region():
    """share() checks the region's header page (magic, size, page alignment, inside the buffer) and
    the producer's id; a refused share leaves the port as it was."""
    cap = 4096
    at = _ring.ring_size(cap)
    mm = mmap.mmap(-1, at + _ring.shared_size(cap))
    _ring.format_ring(mm, 0, cap)
    _ring.format_shared(mm, at, cap)
    assert _ring.check_shared(mm, at, cap)
    prod = _native.SpscPort(mm, 0, True)
    cons = _native.SpscPort(mm, 0, False)
    with pytest.raises(ValueError, match="shared region"):
        prod.share(at, 0)  # a producer needs an id
    for off in (8, 0, len(mm) - 4096 + 64):
        with pytest.raises(ValueError):
            cons.share(off)
    struct.pack_into("<Q", mm, at + _ring.SHARED_OFF_SIZE, cap)  # larger than the memory behind it
    with pytest.raises(ValueError, match="shared region"):
        cons.share(at)
    assert not _ring.check_shared(mm, at, cap)
    _ring.format_shared(mm, at, cap)
    prod.share(at, 1)
    cons.share(at)
    assert prod.send(b"x" * 100) == 0  # not a reply (no pair()): the ring
    assert cons.try_recv() == b"x" * 100
    prod.close(), cons.close(), mm.close()
