"""The MPMC ring (_rings/mpmc.py over _native.MpmcPort) in one process: semantics against a deque, wrap-around
at every offset, corrupt headers and records, recovery, and locks left by a killed holder."""

from __future__ import annotations

import collections
import mmap
import os
import signal
import struct
from collections.abc import Iterator

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ipcraft import _native
from ipcraft._rings import mpmc as _mpmc
from ipcraft.errors import HandleClosed, MessageTooLarge, ProtocolError, Timeout
from ipcraft.testing import Child

CAP = 4096


def _record(n: int) -> int:
    return _mpmc.REC_HEADER + ((n + 7) & ~7)


def _new_ring(capacity: int = CAP, **kw: bool) -> tuple[mmap.mmap, _mpmc.MpmcPort]:
    m = mmap.mmap(-1, _mpmc.ring_size(capacity))
    _mpmc.format_ring(memoryview(m), capacity, 0)
    return m, _mpmc.MpmcPort(memoryview(m), "test ring", **kw)


@pytest.fixture()
def ring() -> Iterator[tuple[mmap.mmap, _mpmc.MpmcPort]]:
    m, r = _new_ring()
    yield m, r
    r.close()


class RingVersusDeque(RuleBasedStateMachine):
    """Random sends and receives on a 4 KiB ring behave exactly like a deque with a byte budget."""

    def __init__(self) -> None:
        super().__init__()
        self.mem, self.ring = _new_ring()
        self.model: collections.deque[bytes] = collections.deque()
        self.counter = 0

    def used(self) -> int:
        return sum(_record(len(m)) for m in self.model)

    @rule(n=st.integers(0, 1500), parts=st.integers(1, 3))
    def send(self, n: int, parts: int) -> None:
        self.counter += 1
        data = bytes((self.counter + i) & 0xFF for i in range(n))
        cut = [data[i * n // parts:(i + 1) * n // parts] for i in range(parts)]
        if self.used() + _record(n) <= CAP:
            self.ring.send(cut, 0)
            self.model.append(data)
        else:
            with pytest.raises(Timeout):
                self.ring.send(cut, 0)

    @rule()
    def recv(self) -> None:
        if self.model:
            assert bytes(self.ring.recv(0)) == self.model.popleft()
        else:
            with pytest.raises(Timeout):
                self.ring.recv(0)

    @precondition(lambda self: bool(self.model))
    @rule()
    def recv_all(self) -> None:
        while self.model:
            assert bytes(self.ring.recv(0)) == self.model.popleft()

    @invariant()
    def pending_bytes_match(self) -> None:
        assert self.ring.pending() == self.used()
        assert self.ring.wait(0) == bool(self.model)

    def teardown(self) -> None:
        self.ring.close()


TestRingVersusDeque = RingVersusDeque.TestCase
TestRingVersusDeque.settings = settings(max_examples=60, stateful_step_count=80, deadline=None)


@pytest.mark.parametrize("base", [0, 2**40])
def test_wrap_around_at_every_offset(base: int) -> None:
    """Messages starting at every 8-byte offset of the data area, wrapping its end or not (up to the
    largest), arrive intact, whatever the absolute cursor values."""
    sizes = (0, 1, 13, 1000, 2500, _mpmc.max_message(CAP))
    for start in range(0, CAP, 8):
        m = mmap.mmap(-1, _mpmc.ring_size(CAP))
        _mpmc.format_ring(memoryview(m), CAP, 0)
        struct.pack_into("<Q", m, _mpmc.OFF_HEAD, base + start)
        struct.pack_into("<Q", m, _mpmc.OFF_TAIL, base + start)
        r = _mpmc.MpmcPort(memoryview(m), "test ring")
        try:
            for n in sizes:
                msg = os.urandom(n)
                r.send([msg[:n // 3], msg[n // 3:]], 0)
                assert bytes(r.recv(0)) == msg, f"a {n}-byte message at offset {start} arrived altered"
            assert r.pending() == 0
        finally:
            r.close()


def test_whole_capacity_is_usable_and_one_more_byte_is_too_large(ring: tuple[mmap.mmap, _mpmc.MpmcPort]) -> None:
    """A message of capacity - 8 bytes fits (wrapping); one byte more is MessageTooLarge naming the capacity."""
    _, r = ring
    r.send([b"x" * 100], 0)
    r.recv(0)
    big = os.urandom(_mpmc.max_message(CAP))
    r.send([big], 0)
    assert bytes(r.recv(0)) == big
    with pytest.raises(MessageTooLarge, match=f"{CAP} bytes of ring") as info:
        r.send([big + b"!"], 0)
    assert info.value.limit == CAP - 8
    r.send([b"usable"], 0)
    assert bytes(r.recv(0)) == b"usable"


def test_full_ring_times_out_then_drains() -> None:
    """send on a full ring raises Timeout after its timeout; room made by a receive lets it through."""
    _m, r = _new_ring()
    try:
        while r.pending() + _record(1000) <= CAP:
            r.send([b"a" * 1000], 0)
        with pytest.raises(Timeout):
            r.send([b"b" * 1000], 0.05)
        r.recv(0)
        r.send([b"b" * 1000], 0.05)
    finally:
        r.close()


def test_recv_grows_its_buffer_for_large_messages() -> None:
    """A message larger than the receive buffer is taken whole on the retry, never truncated."""
    _m, r = _new_ring(1 << 20)
    try:
        msg = os.urandom(300_000)
        r.send([msg], 0)
        assert bytes(r.recv(0)) == msg and r.pending() == 0
    finally:
        r.close()


def test_closed_ring_raises_handle_closed(ring: tuple[mmap.mmap, _mpmc.MpmcPort]) -> None:
    """Every operation after close() is HandleClosed, and close() is idempotent."""
    _, r = ring
    r.close()
    r.close()
    for op in (lambda: r.send([b"x"], 0), lambda: r.recv(0), lambda: r.wait(0), r.fileno):
        with pytest.raises(HandleClosed):
            op()


# -- corrupt headers and records -------------------------------------------------------------------

def _corrupt(field: str) -> mmap.mmap:
    m = mmap.mmap(-1, _mpmc.ring_size(CAP))
    _mpmc.format_ring(memoryview(m), CAP, 0)
    if field == "magic":
        struct.pack_into("<Q", m, _mpmc.OFF_MAGIC, int.from_bytes(b"NOTARING", "little"))
    elif field == "version":
        struct.pack_into("<I", m, _mpmc.OFF_VERSION, 99)
    elif field == "flags":
        struct.pack_into("<I", m, _mpmc.OFF_FLAGS, 0x80)
    elif field == "capacity":
        struct.pack_into("<Q", m, _mpmc.OFF_CAPACITY, 3000)
    elif field == "too_big":
        struct.pack_into("<Q", m, _mpmc.OFF_CAPACITY, CAP * 2)
    elif field == "tail_ahead":
        struct.pack_into("<Q", m, _mpmc.OFF_TAIL, 64)
    elif field == "head_far":
        struct.pack_into("<Q", m, _mpmc.OFF_HEAD, CAP + 8)
    elif field == "misaligned":
        struct.pack_into("<Q", m, _mpmc.OFF_HEAD, 12)
    return m


@pytest.mark.parametrize("field", ["magic", "version", "flags", "capacity", "too_big", "tail_ahead",
                                   "head_far", "misaligned"])
def test_corrupt_header_is_a_protocol_error(field: str) -> None:
    """A foreign magic, another version, unknown flags, an impossible capacity or cursors: ProtocolError."""
    m = _corrupt(field)
    with pytest.raises(ProtocolError, match="test ring"):
        _mpmc.MpmcPort(memoryview(m), "test ring")
    m.close()  # nothing kept a view: the mapping closes


def test_unformatted_memory_is_a_protocol_error() -> None:
    """All-zero memory (no creator ever formatted it) is refused after a short wait, not used."""
    m = mmap.mmap(-1, _mpmc.ring_size(CAP))
    with pytest.raises(ProtocolError, match="not an ipcraft"):
        _mpmc.MpmcPort(memoryview(m), "test ring")
    with pytest.raises(ProtocolError, match="smaller"):
        _mpmc.MpmcPort(memoryview(m)[:1000], "test ring")


def test_cursors_corrupted_while_open_are_a_protocol_error(ring: tuple[mmap.mmap, _mpmc.MpmcPort]) -> None:
    """Cursors scribbled on after opening are caught before any copy, on send and on receive."""
    m, r = ring
    struct.pack_into("<Q", m, _mpmc.OFF_HEAD, 10 * CAP)
    with pytest.raises(ProtocolError, match="corrupt"):
        r.recv(0)
    with pytest.raises(ProtocolError, match="corrupt"):
        r.send([b"x"], 0)


@pytest.mark.parametrize("how", ["check", "length"])
def test_corrupt_record_discards_pending_and_the_ring_stays_usable(ring: tuple[mmap.mmap, _mpmc.MpmcPort],
                                                                    how: str) -> None:
    """A record whose length check fails (or whose length passes head) is never copied: ProtocolError,
    everything pending is dropped, and the ring works again."""
    m, r = ring
    r.send([b"first"], 0)
    r.send([b"second"], 0)
    data = _mpmc.HEADER_SIZE
    if how == "check":
        struct.pack_into("<I", m, data + 4, 0)
    else:
        struct.pack_into("<II", m, data, 3000, 3000 ^ 0xFFFFFFFF)
    with pytest.raises(ProtocolError, match="discarded"):
        r.recv(0)
    assert r.pending() == 0
    r.send([b"again"], 0)
    assert bytes(r.recv(0)) == b"again"


def test_recover_cuts_the_queue_at_the_first_damaged_record() -> None:
    """recover() keeps the intact records before a damaged one and drops it and what follows."""
    m, r = _new_ring()
    try:
        for msg in (b"one", b"two", b"three"):
            r.send([msg], 0)
        second = _mpmc.HEADER_SIZE + _record(3)
        struct.pack_into("<I", m, second + 4, 12345)
        r.close()
        assert _mpmc.recover(memoryview(m), CAP) == _record(3) + _record(5)
        r = _mpmc.MpmcPort(memoryview(m), "test ring")
        assert bytes(r.recv(0)) == b"one"
        with pytest.raises(Timeout):
            r.recv(0)
    finally:
        r.close()


# -- a holder killed with the lock held --------------------------------------------------------------

class _Lock(_native.PMutex):
    def _acquire_failed(self, rc: int, timeout: float | None) -> None:
        raise OSError(-rc, os.strerror(-rc))

    def _release_failed(self, rc: int) -> None:
        raise OSError(-rc, os.strerror(-rc))


def _die_holding(m: mmap.mmap, offset: int, scribble: bool) -> None:
    lock = _Lock()
    lock._attach(m, offset)
    lock.acquire()
    if scribble:  # half a record beyond head, as a producer killed mid-copy leaves it
        head = _native.atomic_load_u64(m, _mpmc.OFF_HEAD)
        at = _mpmc.HEADER_SIZE + head % CAP
        struct.pack_into("<II", m, at, 64, 64 ^ 0xFFFFFFFF)
        m[at + 8:at + 40] = b"\xee" * 32
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("side", ["producer", "consumer"])
def test_lock_of_a_killed_holder_is_taken_over(side: str) -> None:
    """A process SIGKILLed holding the producers' (mid-record) or consumers' lock wedges nobody: the next
    sender or receiver takes the lock over, the half-written record never appears, and no message is lost."""
    m = mmap.mmap(-1, _mpmc.ring_size(CAP))
    _mpmc.format_ring(memoryview(m), CAP, 0)
    r = _mpmc.MpmcPort(memoryview(m), "test ring")
    try:
        r.send([b"before"], 0)
        offset = _mpmc.OFF_PRODUCER_LOCK if side == "producer" else _mpmc.OFF_CONSUMER_LOCK
        child = Child(_die_holding, m, offset, side == "producer")
        status = child.wait(10)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        if side == "producer":
            r.send([b"after"], 5)
        assert bytes(r.recv(5)) == b"before"
        if side == "consumer":
            r.send([b"after"], 5)
        assert bytes(r.recv(5)) == b"after"
        assert r.recovered == 1 and r.pending() == 0
    finally:
        r.close()


# -- the channel's fast path -----------------------------------------------------------------------

def test_fast_path_frames_sends_and_takes_ordinary_frames(ring: tuple[mmap.mmap, _mpmc.MpmcPort]) -> None:
    """try_send puts an ipcraft frame header (magic, serializer id, length) in front; try_recv returns the
    payload of such a frame, and None on an empty ring."""
    from ipcraft._framing import header

    _, r = ring
    try_send, try_recv = r.fast_path()
    assert try_send(b"payload", 3) is True
    assert bytes(r.recv(0)) == header(3, 7) + b"payload"
    r.send([header(0, 5), b"hello"], 0)
    assert try_recv() == b"hello"
    assert try_recv() is None


def test_fast_path_sends_up_to_256_kib() -> None:
    """try_send and try_send_many take a payload below 256 KiB (64 KiB included) in one call, as
    shm:// does; 256 KiB and more go to the general path, which copies without the GIL."""
    _m, r = _new_ring(1 << 20)
    try:
        try_send, _ = r.fast_path()
        try_send_many, _ = r.fast_batches()
        for n in (65536, 200_000, 262143):
            assert try_send(bytes([n % 251]) * n) is True
            assert bytes(r.recv(0))[8:] == bytes([n % 251]) * n
        assert try_send(bytes(262144)) is False and r.pending() == 0
        assert try_send_many([bytes(65536), bytes(262143), bytes(262144)]) == 2
    finally:
        r.close()


def test_fast_path_leaves_the_unusual_to_the_general_path() -> None:
    """try_send refuses what is not bytes-like, over the limit, or does not fit now; try_recv leaves a
    foreign message, one over the limit, and every message once fileno() was used; nothing is lost."""
    from ipcraft._framing import header

    m = mmap.mmap(-1, _mpmc.ring_size(CAP))
    _mpmc.format_ring(memoryview(m), CAP, 0)
    r = _mpmc.MpmcPort(memoryview(m), "test ring", limit=100)
    try:
        try_send, try_recv = r.fast_path()
        assert try_send(object()) is False and try_send(bytes(101)) is False
        while try_send(bytes(100)):
            pass
        assert r.pending() + _record(108) > CAP  # refused only because it was full
        while r.pending():
            r.recv(0)
        r.send([b"not a frame"], 0)
        r.send([header(0, 200), bytes(200)], 0)
        assert try_recv() is None and bytes(r.recv(0)) == b"not a frame"
        assert try_recv() is None and len(r.recv(0)) == 208
        r.fileno()
        r.send([header(0, 1), b"x"], 0)
        assert try_recv() is None and bytes(r.recv(0)) == header(0, 1) + b"x"
        with pytest.raises(ValueError):
            try_send(b"x", 256)
    finally:
        r.close()
    assert try_send(b"x") is False and try_recv() is None  # closed: the general path raises
