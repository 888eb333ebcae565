"""Batches in C (try_send_many / try_recv_many of _native.SpscPort and _native.MpmcPort): every message
whole and in order, one publication per batch (a consumer in another process never sees part of a
batch), and the cases the fast path leaves to the general path."""

from __future__ import annotations

import mmap
import time
from collections.abc import Callable
from typing import Any

import pytest

from ipcraft import _native
from ipcraft._rings import mpmc as _mpmc
from ipcraft._rings import spsc as _spsc
from ipcraft.testing import Child

BATCH = 8
SIZE = 24  # a 32-byte record in either ring: a batch is 256 bytes, and 256 divides the capacity
BATCHES = 3000
CAP = 1 << 14


def _new_spsc() -> mmap.mmap:
    mm = mmap.mmap(-1, _spsc.ring_size(CAP))
    _spsc.format_ring(mm, 0, CAP)
    return mm


def _new_mpmc(capacity: int = CAP) -> mmap.mmap:
    mm = mmap.mmap(-1, _mpmc.ring_size(capacity))
    _mpmc.format_ring(memoryview(mm), capacity, 0)
    return mm


def _ports(engine: str) -> tuple[Any, Any]:
    """(sender, receiver) on a fresh ring: the two ends of an SPSC ring, or one MPMC port twice."""
    if engine == "spsc":
        mm = _new_spsc()
        return _native.SpscPort(mm, 0, True), _native.SpscPort(mm, 0, False)
    port = _native.MpmcPort(memoryview(_new_mpmc()))
    return port, port


def _batch(i: int) -> list[bytes]:
    return [i.to_bytes(4, "little") + j.to_bytes(4, "little") + bytes([i % 251]) * (SIZE - 8) for j in range(BATCH)]


def _produce(send_many: Callable[[list[bytes]], int], pending: Callable[[], int]) -> int:
    """Send BATCHES batches, each only once the ring has room for all of it (so none is split)."""
    for i in range(BATCHES):
        deadline = time.monotonic() + 20
        while pending() > CAP - BATCH * 32:
            assert time.monotonic() < deadline, "the consumer stopped taking"
        assert send_many(_batch(i)) == BATCH
    return BATCHES


def _spsc_producer(mm: mmap.mmap) -> int:
    p = _native.SpscPort(mm, 0, True)
    return _produce(p.try_send_many, lambda: p.pending)


def _mpmc_producer(mm: mmap.mmap) -> int:
    p = _native.MpmcPort(memoryview(mm))
    return _produce(p.try_send_many, p.pending)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ["spsc", "mpmc"])
def test_a_batch_is_published_once_and_arrives_whole(engine: str) -> None:
    """A producer in another process sends batches of 8; this consumer takes all that is pending each
    time.  It always finds a whole number of batches (one publication per batch), each message whole
    and in order."""
    mm = _new_spsc() if engine == "spsc" else _new_mpmc()
    if engine == "spsc":
        child = Child(_spsc_producer, mm)
        port: Any = _native.SpscPort(mm, 0, False)
    else:
        child = Child(_mpmc_producer, mm)
        port = _native.MpmcPort(memoryview(mm))
    got: list[bytes] = []
    partial = 0
    deadline = time.monotonic() + 50
    try:
        while len(got) < BATCHES * BATCH:
            assert time.monotonic() < deadline, f"only {len(got)} messages arrived"
            taken = port.try_recv_many(1 << 20)
            partial += len(taken) % BATCH != 0
            got += taken
        assert child.result(30) == BATCHES
    finally:
        child.kill()
        port.close()
    assert partial == 0, f"{partial} receives saw part of a batch"
    assert got == [m for i in range(BATCHES) for m in _batch(i)]


@pytest.mark.parametrize("engine", ["spsc", "mpmc"])
def test_a_batch_stops_before_what_the_fast_path_cannot_take(engine: str) -> None:
    """Not bytes-like, over the limit, a full ring: the batch ends just before, earlier items sent."""
    tx, rx = _ports(engine)
    try:
        assert tx.try_send_many([b"a", bytearray(b"b"), 5, b"c"]) == 2
        assert tx.try_send_many([b"d", b"x" * CAP]) == 1
        assert tx.try_send_many([]) == 0
        assert rx.try_recv_many(10) == [b"a", b"b", b"d"]
        assert rx.try_recv_many(0) == []
        # Fill the ring: the batch takes the longest prefix that fits.
        sent = tx.try_send_many([b"y" * 1000] * 100)
        assert 0 < sent < 100
        assert tx.try_send_many([b"z"] * 1000) < 1000
        assert len(rx.try_recv_many(1000)) >= sent
        with pytest.raises(TypeError):
            tx.try_send_many(42)
        with pytest.raises(ValueError):
            tx.try_send_many([b"a"], 256)
    finally:
        tx.close()
        rx.close()


@pytest.mark.parametrize("engine", ["spsc", "mpmc"])
def test_a_batch_receive_stops_at_another_serializer(engine: str) -> None:
    """try_recv_many(n, sid) takes only frames of that serializer, in order, and stops at the first
    other one, which stays for the general path."""
    tx, rx = _ports(engine)
    try:
        assert tx.try_send_many([b"1", b"2"], 3) == 2
        assert tx.try_send_many([b"3"], 4) == 1
        assert tx.try_send_many([b"4"], 3) == 1
        assert rx.try_recv_many(10, 3) == [b"1", b"2"]
        assert rx.try_recv_many(10, 3) == []
        assert rx.try_recv_many(1, -1) == [b"3"]
        assert rx.try_recv_many(10, 3) == [b"4"]
    finally:
        tx.close()
        rx.close()


def test_mpmc_batches_from_many_producers_never_interleave() -> None:
    """Two producer processes send batches into one ring:// ring: each batch lands contiguous.  (The
    ring holds everything both send, so no batch is ever cut short for room.)"""
    mm = _new_mpmc(1 << 20)
    kids = [Child(_tagged_producer, mm, tag) for tag in (1, 2)]
    port = _native.MpmcPort(memoryview(mm))
    got: list[bytes] = []
    deadline = time.monotonic() + 50
    try:
        while len(got) < 2 * 500 * BATCH:
            assert time.monotonic() < deadline, f"only {len(got)} messages arrived"
            got += port.try_recv_many(1 << 20)
        assert [k.result(30) for k in kids] == [500, 500]
    finally:
        for k in kids:
            k.kill()
        port.close()
    for at in range(0, len(got), BATCH):
        chunk = got[at:at + BATCH]
        assert len({m[:5] for m in chunk}) == 1, "a batch was interleaved with another"
        assert [m[5] for m in chunk] == list(range(BATCH))


def _tagged_producer(mm: mmap.mmap, tag: int) -> int:
    p = _native.MpmcPort(memoryview(mm))
    for i in range(500):
        batch = [bytes([tag]) + i.to_bytes(4, "little") + bytes([j]) for j in range(BATCH)]
        deadline = time.monotonic() + 20
        while (sent := p.try_send_many(batch)) == 0:  # the other producer holds the lock: again
            assert time.monotonic() < deadline, "the producer lock stayed taken"
        assert sent == BATCH
    return 500
