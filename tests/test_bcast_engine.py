"""The bcast:// engine in one process: the cursor logic against a model (hypothesis state machine),
hostile writes into the shared memory, and the asyncio mirror."""

from __future__ import annotations

import asyncio
import mmap
import os
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

import ipcraft
import ipcraft.aio
from ipcraft._rings import bcast as _bcast
from ipcraft.errors import ChannelClosed, IPCError, MessagesMissed, ProtocolError, Timeout
from ipcraft.testing import unique_name

CAP = 4096


def _rec(n: int) -> int:
    """Bytes a message of n payload bytes takes in the ring (record header, frame header, padding)."""
    return _bcast.REC_HEADER + ((8 + n + 15) & ~15)


class Model:
    """What the ring must hold: records by position, the overwrite frontier (intent), the next seq."""

    def __init__(self) -> None:
        self.head = self.intent = 0
        self.next_seq = 1
        self.records: dict[int, tuple[int, bytes]] = {}  # seq -> (start, payload)

    def publish(self, payload: bytes) -> None:
        need = _rec(len(payload))
        to_end = CAP - self.head % CAP
        at = self.head + (to_end if need > to_end else 0)
        self.head = at + need
        self.intent = max(self.intent, self.head)
        self.records[self.next_seq] = (at, payload)
        self.next_seq += 1

    def oldest(self) -> int:
        floor = self.intent - CAP
        intact = [s for s, (at, _) in self.records.items() if at >= floor]
        return min(intact) if intact else self.next_seq


class CursorsVersusModel(RuleBasedStateMachine):
    """Random publications, joins (every start=), receives and closes on a 4 KiB drop-mode ring behave
    exactly as the model says: the message, a Timeout, or MessagesMissed with the exact count."""

    subs = Bundle("subs")

    def __init__(self) -> None:
        super().__init__()
        self.url = f"bcast://{unique_name('sm')}"
        self.pub = ipcraft.publish(self.url, capacity=CAP)
        self.model = Model()
        self.expected: dict[int, int] = {}
        self.handles: dict[int, ipcraft.Subscriber] = {}
        self.counter = self.joined = 0

    @rule(n=st.integers(0, CAP // 2 - 24))
    def publish(self, n: int) -> None:
        self.counter += 1
        payload = bytes((self.counter + i) & 0xFF for i in range(n))
        self.pub.send_bytes(payload)
        self.model.publish(payload)

    @rule(target=subs, start=st.sampled_from(["next", "latest", "oldest"]))
    def join(self, start: str) -> int:
        sub = ipcraft.subscribe(self.url, start=start)
        self.joined += 1
        key = self.joined
        self.handles[key] = sub
        m = self.model
        if start == "next" or not m.records:
            self.expected[key] = m.next_seq
        elif start == "latest":
            self.expected[key] = m.next_seq - 1
        else:
            self.expected[key] = m.oldest()
        return key

    @rule(key=subs)
    def recv(self, key: int) -> None:
        sub, e, m = self.handles[key], self.expected[key], self.model
        if e >= m.next_seq:
            with pytest.raises(Timeout):
                sub.recv_bytes(timeout=0)
            return
        if e < m.oldest():
            with pytest.raises(MessagesMissed) as info:
                sub.recv_bytes(timeout=0)
            assert info.value.missed == m.oldest() - e
            self.expected[key] = e = m.oldest()
            return
        assert sub.recv_bytes(timeout=0) == m.records[e][1]
        self.expected[key] = e + 1

    @rule(key=subs)
    def latest(self, key: int) -> None:
        if self.model.records:
            assert self.handles[key].latest() == self.model.records[self.model.next_seq - 1][1]

    @rule(key=consumes(subs))
    def leave(self, key: int) -> None:
        self.handles.pop(key).close()
        del self.expected[key]

    @invariant()
    def poll_agrees(self) -> None:
        for key, sub in self.handles.items():
            assert sub.poll(0) == (self.expected[key] < self.model.next_seq)

    def teardown(self) -> None:
        for sub in self.handles.values():
            sub.close()
        self.pub.close()


TestCursorsVersusModel = CursorsVersusModel.TestCase
TestCursorsVersusModel.settings = settings(max_examples=40, stateful_step_count=60, deadline=None)


# -- hostile shared memory --------------------------------------------------------------------------------


@pytest.fixture()
def ring() -> Iterator[tuple[str, mmap.mmap]]:
    """A ring (its owner handle kept open) and a plain mmap of its bytes, as a scribbler would have."""
    name = unique_name("hx")
    pub = ipcraft.publish(f"bcast://{name}", capacity=CAP, max_subscribers=4)
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
    try:
        m = mmap.mmap(fd, 0)
    finally:
        os.close(fd)
    try:
        yield f"bcast://{name}", m
    finally:
        m.close()
        pub.close()


@pytest.mark.parametrize(("offset", "fmt", "value"), [
    (_bcast.OFF_MAGIC, "<Q", 0x1234),
    (_bcast.OFF_VERSION, "<I", 99),
    (_bcast.OFF_FLAGS, "<I", 0x80),
    (_bcast.OFF_CAPACITY, "<Q", 4097),
    (_bcast.OFF_CAPACITY, "<Q", 1 << 40),
    (_bcast.OFF_SLOTS, "<I", 0),
    (_bcast.OFF_SLOTS, "<I", 10**6),
    (_bcast.OFF_DATA, "<Q", 4096),
    (_bcast.OFF_HEAD, "<Q", 7),
])
def test_a_scribbled_header_is_refused_at_open(ring: tuple[str, mmap.mmap], offset: int, fmt: str, value: int) -> None:
    url, m = ring
    struct.pack_into(fmt, m, offset, value)
    with pytest.raises(ProtocolError):
        ipcraft.subscribe(url)
    with pytest.raises(ProtocolError):
        ipcraft.publish(url)


def _record_at(m: mmap.mmap, pos: int) -> int:
    return _bcast.data_offset(4) + pos % CAP


@pytest.mark.parametrize("damage", ["length", "check", "seq", "head", "intent"])
def test_scribbled_records_and_cursors_are_protocol_errors(ring: tuple[str, mmap.mmap], damage: str) -> None:
    """Whatever a same-user process scribbles on a record or a cursor, a reader gets ProtocolError (or a
    loss it is told about), never a crash, a wild copy or a hang; closing still works."""
    url, m = ring
    with ipcraft.subscribe(url) as sub, ipcraft.publish(url) as pub:
        pub.send_bytes(b"a" * 40)
        at = _record_at(m, 0)
        if damage == "length":
            struct.pack_into("<II", m, at + 8, 3000, ~3000 & 0xFFFFFFFF)
        elif damage == "check":
            struct.pack_into("<I", m, at + 12, 5)
        elif damage == "seq":
            struct.pack_into("<Q", m, at, 77)
        elif damage == "head":
            struct.pack_into("<Q", m, _bcast.OFF_HEAD, 10 * CAP)
        elif damage == "intent":
            struct.pack_into("<Q", m, _bcast.OFF_INTENT, 1 << 62)
        with pytest.raises(ProtocolError):
            sub.recv_bytes(timeout=1)
        if damage in ("head", "intent"):
            with pytest.raises(ProtocolError):
                pub.send_bytes(b"c", timeout=1)


@settings(max_examples=150, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(128, _bcast.data_offset(4) + CAP - 8), st.binary(min_size=1, max_size=8)),
                       min_size=1, max_size=6))
def test_random_scribbles_never_crash_or_hang(writes: list[tuple[int, bytes]]) -> None:
    """Random bytes anywhere past the fixed header (lock, cursors, tables, records): every operation
    returns or raises an ipcraft error, within its timeout."""
    name = unique_name("fz")
    url = f"bcast://{name}"
    with ipcraft.publish(url, capacity=CAP, max_subscribers=4) as pub, ipcraft.subscribe(url) as sub:
        for i in range(30):
            pub.send_bytes(bytes([i]) * (i * 7))
        fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
        m = mmap.mmap(fd, 0)
        os.close(fd)
        try:
            for off, data in writes:
                m[off:off + len(data)] = data
        finally:
            m.close()
        for op in (lambda: sub.recv_bytes(timeout=0), lambda: pub.send_bytes(b"x" * 50, timeout=0),
                   lambda: sub.latest(), lambda: sub.poll(0), lambda: pub.extra("subscribers"),
                   lambda: sub.recv_bytes(timeout=0)):
            try:
                op()
            except IPCError:
                pass


def test_a_subscriber_table_full_of_strangers_is_reaped(ring: tuple[str, mmap.mmap]) -> None:
    """Slots claimed by processes that no longer exist, or by an earlier process that had this pid, are
    freed when a subscriber needs one."""
    url, m = ring
    for i in range(4):  # pids that do not exist, and this very pid with another start time (a reused pid)
        off = _bcast.OFF_SUB_TABLE + i * _bcast.SUB_SLOT_SIZE
        pid = os.getpid() if i == 3 else 4_000_000 + i
        struct.pack_into("<IIQ", m, off + _bcast.SO_STATE, _bcast.SLOT_LIVE, pid, 1)
    struct.pack_into("<I", m, _bcast.OFF_HIWATER, 4)
    with ipcraft.subscribe(url) as sub:
        assert sub.extra("slot") == 0
        assert [s["pid"] for s in sub.extra("subscribers")] == [os.getpid()]


# -- asyncio ----------------------------------------------------------------------------------------------


def test_aio_publish_subscribe_and_end_of_stream() -> None:
    url = f"bcast://{unique_name('aio')}"

    async def main() -> list[object]:
        sub = await ipcraft.aio.subscribe(url, create=True)
        async with sub:
            pub = await ipcraft.aio.publish(url)
            waiting = asyncio.ensure_future(sub.recv(timeout=5))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            await pub.send({"n": 1})
            first = await waiting
            with pytest.raises(Timeout):
                await sub.recv(timeout=0.05)
            cancelled = asyncio.ensure_future(sub.recv())
            await asyncio.sleep(0.02)
            cancelled.cancel()  # a cancelled receive loses nothing
            await pub.send_bytes(b"two")
            await pub.send([3])
            assert await sub.latest() == [3]
            pub.close()
            rest = [m async for m in sub]
            with pytest.raises(ChannelClosed):
                await sub.recv(timeout=1)
            return [first, *rest]

    assert asyncio.run(main()) == [{"n": 1}, b"two", [3]]


def test_aio_block_mode_send_waits_for_room() -> None:
    url = f"bcast://{unique_name('aib')}"

    async def main() -> None:
        async with await ipcraft.aio.publish(url, on_slow="block", capacity=CAP, slow_timeout=0) as pub, \
                await ipcraft.aio.subscribe(url) as sub:
            for _ in range(CAP // _rec(100)):
                await pub.send_bytes(b"z" * 100, timeout=1)
            with pytest.raises(Timeout):
                await pub.send_bytes(b"z" * 100, timeout=0.05)
            sending = asyncio.ensure_future(pub.send_bytes(b"last", timeout=5))
            await asyncio.sleep(0.02)
            assert await sub.recv_bytes(timeout=1) == b"z" * 100
            await sending

    asyncio.run(main())
