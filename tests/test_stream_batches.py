"""Batches over framed byte streams (unix://, tcp://, ipcraft.pipe()): a batch's frames written
together and parsed from one read, every message whole and in order; what ends a received batch."""

from __future__ import annotations

import os

import pytest

import ipcraft
from ipcraft._framing import header
from ipcraft.errors import MessageTooLarge, ProtocolError
from ipcraft.serializers import JSON
from ipcraft.testing import Child, unique_name

MIXED = [b"a" * 10, b"b" * 100_000, b"", b"c", b"d" * (1 << 20), b"e" * 16384, b"f" * 16385, b"g"]


def _send_then_wait(url: str, batches: list[list[bytes]], serializer: str = "raw") -> int:
    with ipcraft.connect(url, serializer=serializer, timeout=10) as ch:
        sent = sum(ch.send_many(b, timeout=30) for b in batches)
        ch.recv(timeout=30)  # close only after the receiver has everything
    return sent


def _recv_all(ch: ipcraft.Channel[bytes], n: int, most: int) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < n:
        batch = ch.recv_many(most, timeout=30)
        assert 1 <= len(batch) <= most
        got += batch
    return got


@pytest.mark.parametrize("scheme", ["unix", "tcp"])
def test_mixed_sizes_arrive_whole_and_in_order(scheme: str) -> None:
    """Small frames joined, large payloads gathered from where they lie, across several batches."""
    url = f"unix:@{unique_name('sb')}" if scheme == "unix" else "tcp://127.0.0.1:0?insecure=1"
    with ipcraft.listen(url, serializer="raw") as lst:
        child = Child(_send_then_wait, str(lst.endpoint), [MIXED, MIXED[::-1], [b"x"] * 300])
        with lst.accept(10) as ch:
            got = _recv_all(ch, 2 * len(MIXED) + 300, 7)
            ch.send(b"done")
        assert child.result(30) == 2 * len(MIXED) + 300
    assert got == MIXED + MIXED[::-1] + [b"x"] * 300


def test_a_batch_of_more_buffers_than_one_writev_takes() -> None:
    """1200 payloads above the join size are 2400 buffers: written in slices, none lost or torn."""
    msgs = [bytes([i % 251]) * (16385 + i) for i in range(1200)]
    url = f"unix:@{unique_name('sb')}"
    with ipcraft.listen(url, serializer="raw") as lst:
        child = Child(_send_then_wait, str(lst.endpoint), [msgs])
        with lst.accept(10) as ch:
            got = _recv_all(ch, len(msgs), 64)
            ch.send(b"done")
        assert child.result(60) == len(msgs)
    assert got == msgs


def test_a_frame_that_cannot_be_decoded_ends_the_batch_and_loses_nothing_else() -> None:
    """A frame of another serializer met inside the frames of one read: the batch ends before it,
    the next recv_many raises ProtocolError (that frame consumed), and the frames after it follow."""
    a, b = ipcraft.pipe()  # msgpack: a raw frame arrives as bytes, a json frame is refused
    with a, b:
        for i in range(3):
            a.send_bytes(str(i).encode())
        for _ in range(2):  # another writer on the same socket: json frames
            os.write(a.fileno(), header(JSON.id, 2) + b"{}")
        assert a.send_many([b"3", b"4"]) == 2
        assert b.recv_many(10, timeout=5) == [b"0", b"1", b"2"]
        with pytest.raises(ProtocolError):
            b.recv_many(10)
        with pytest.raises(ProtocolError):
            b.recv_many(10, timeout=5)
        assert b.recv_many(10, timeout=5) == [b"3", b"4"]


def test_send_many_stops_before_a_message_over_the_limit() -> None:
    """The messages before one over max_message_size go out; that one raises, nothing after it."""
    a, b = ipcraft.pipe(serializer="raw", max_message_size=1000)
    with a, b:
        with pytest.raises(MessageTooLarge):
            a.send_many([b"1", b"2", b"x" * 1001, b"3"])
        assert b.recv_many(10, timeout=5) == [b"1", b"2"]
        assert a.send_many([b"4"]) == 1
        assert b.recv_many(10, timeout=5) == [b"4"]
