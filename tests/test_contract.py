"""The typed seam under every channel (_transports/_contract.py), the framing adapter, and the one wait
stack (_wait.py), on real kernel objects: pipes, sockets, message queues, rings."""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import ipcraft
from ipcraft import _wait
from ipcraft._framing import HEADER, MAGIC
from ipcraft._transports._contract import ByteStream, FastPath, Message, MessagePort, ZeroCopy
from ipcraft._transports._framed import FramedStream
from ipcraft._transports._io import FdStream, SocketStream
from ipcraft.errors import HandleClosed, ProtocolError
from ipcraft.primitives import Pipe
from ipcraft.serializers import JSON, MSGPACK
from ipcraft.testing import unique_name


def _transport(ch: Any) -> Any:
    return ch._transport


def _connected(url: str) -> tuple[Any, Any]:
    """A client and a server channel on ``url`` (the server accepts in a thread: the handshake needs both)."""
    with ipcraft.listen(url) as listener:
        accepted: list[Any] = []
        t = threading.Thread(target=lambda: accepted.append(listener.accept(timeout=10)))
        t.start()
        try:
            client = ipcraft.connect(url, timeout=10)
        finally:
            t.join(15)
        return client, accepted[0]


@pytest.fixture
def unix_pair(tmp_path: Any) -> Iterator[tuple[Any, Any]]:
    client, server = _connected(f"unix://{tmp_path}/c.sock")
    with client, server:
        yield client, server


def test_every_transport_is_exactly_one_kind_with_its_capabilities(unix_pair: tuple[Any, Any]) -> None:
    """A byte stream is not a message port and vice versa; capabilities are what each scheme offers."""
    stream = _transport(unix_pair[0])
    assert isinstance(stream, ByteStream) and not isinstance(stream, MessagePort)
    assert not isinstance(stream, ZeroCopy) and not isinstance(stream, FastPath)
    a, b = ipcraft.pipe()
    with a, b:
        assert isinstance(_transport(a), ByteStream) and not isinstance(_transport(a), MessagePort)
    client, server = _connected(f"shm://{unique_name()}")
    with client, server:
        for end in (client, server):
            t = _transport(end)
            assert isinstance(t, MessagePort) and not isinstance(t, ByteStream)
            assert isinstance(t, ZeroCopy) and isinstance(t, FastPath)
    with ipcraft.queue(f"ring://{unique_name()}", create=True) as q:
        t = _transport(q)
        assert isinstance(t, MessagePort) and isinstance(t, FastPath) and isinstance(t, ZeroCopy)


def test_a_message_carries_its_serializer_id_and_metadata() -> None:
    """recv_message returns a Message whose sid and meta are fields: here the priority of an mq://
    message, decoded by the port, with the payload exactly what was sent."""
    with ipcraft.queue(f"mq://{unique_name()}", create=True, serializer="json") as q:
        q.send({"k": 1}, priority=7, timeout=5)
        msg = _transport(q).recv_message(time.monotonic() + 5)
        assert isinstance(msg, Message)
        assert msg.sid == JSON.id and dict(msg.meta) == {"priority": 7}
        assert JSON.loads(msg.payload) == {"k": 1}
        assert dict(_transport(q).last_meta) == {"priority": 7}


def test_framed_stream_round_trip_and_a_bad_header_closes_the_stream() -> None:
    """FramedStream over a real socketpair: frames of any size come back with their sid; a header that
    is not ipcraft's raises ProtocolError(closed=True) and the stream is closed."""
    left, right = socket.socketpair()
    raw = right.dup()
    sender = FramedStream(SocketStream(left, "left"), 1 << 20, "left")
    receiver = FramedStream(SocketStream(right, "right"), 1 << 20, "right")
    try:
        for size in (0, 1, 70_000):
            payload = os.urandom(size)
            sender.send_message(MSGPACK.id, memoryview(payload), time.monotonic() + 5)
            assert receiver.wait_readable(time.monotonic() + 5)
            got = receiver.recv_message(time.monotonic() + 5)
            assert (got.sid, bytes(got.payload)) == (MSGPACK.id, payload)
        with pytest.raises(TypeError, match="no mechanism options"):
            sender.send_message(0, memoryview(b"x"), None, priority=1)
        left.sendall(HEADER.pack(MAGIC ^ 0xFF, 0, 0, 1) + b"x")
        with pytest.raises(ProtocolError, match="magic") as info:
            receiver.recv_message(time.monotonic() + 5)
        assert info.value.closed and right.fileno() == -1
    finally:
        sender.close(), receiver.close(), raw.close()


def test_fd_stream_write_some_never_blocks_and_reports_a_full_pipe() -> None:
    """write_some on a blocking pipe writes what fits at once and raises BlockingIOError when nothing
    does (the one-shot path the primitives use), without touching the fd's O_NONBLOCK flag."""
    r, w = os.pipe()
    stream = FdStream(w, "pipe", readable=False, blocking=True)
    try:
        total = 0
        with pytest.raises(BlockingIOError):
            while True:
                total += stream.write_some([memoryview(b"z" * 65536)])
        assert total > 0 and os.get_blocking(w)
        assert len(os.read(r, total)) > 0
    finally:
        stream.close()
        os.close(r)


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, -math.inf])
def test_a_negative_or_nan_timeout_is_refused_everywhere(bad: float) -> None:
    """One rule for primitives and channels: ValueError, nothing waited, the handle usable."""
    with pytest.raises(ValueError, match="timeout"):
        _wait.deadline_after(bad)
    with Pipe() as p:
        with pytest.raises(ValueError, match="timeout"):
            p.read(timeout=bad)
        p.write(b"ok")
        assert p.read(timeout=1) == b"ok"
    a, b = ipcraft.pipe()
    with a, b:
        with pytest.raises(ValueError, match="timeout"):
            a.recv(timeout=bad)
        b.send("still usable")
        assert a.recv(timeout=5) == "still usable"


def test_an_infinite_timeout_means_no_deadline() -> None:
    """float('inf') is the same as None: no deadline, and a wait returns as soon as data is there."""
    assert _wait.deadline_after(math.inf) is None
    assert _wait.remaining(None) is None
    a, b = ipcraft.pipe()
    with a, b:
        b.send(1)
        assert a.poll(math.inf) and a.recv(timeout=math.inf) == 1


def test_waiting_on_a_closed_fd_raises_handle_closed() -> None:
    """A negative fd and a closed fd number are HandleClosed at once, never 'ready' nor a hang."""
    with pytest.raises(HandleClosed):
        _wait.wait_fd(-1, _wait.POLLIN, None)
    r, w = os.pipe()
    os.close(r), os.close(w)
    start = time.monotonic()
    with pytest.raises(HandleClosed, match="not open"):
        _wait.wait_fd(r, _wait.POLLIN, None)
    assert time.monotonic() - start < 1
    r, w = os.pipe()
    try:
        assert not _wait.wait_fd(r, _wait.POLLIN, time.monotonic() + 0.01)  # open, empty: a timeout
        os.write(w, b"x")
        assert _wait.wait_fd(r, _wait.POLLIN, None)
    finally:
        os.close(r), os.close(w)
