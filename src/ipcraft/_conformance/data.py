"""Conformance checks of what travels: order, sizes, boundaries, objects, the bytes API."""

from __future__ import annotations

import time
from array import array
from typing import Any

from .._framing import HEADER_SIZE, SCRATCH_SIZE
from ..errors import BufferTooSmall, MessageTooLarge
from ._core import (
    WAIT,
    Capabilities,
    Lockstep,
    Pair,
    check,
    expect,
    fork,
    limit,
    msgpack_form,
    pair,
    payload,
    size_ladder,
)


@check()
def _order(make_pair: Pair, caps: Capabilities) -> None:
    """1000 messages from another process arrive in the order sent, objects and bytes interleaved."""
    with pair(make_pair) as (s, r):
        flow = Lockstep(caps.lossy)

        def send(s: Any) -> int:
            for i in range(1000):
                if i % 2:
                    s.send(i)
                else:
                    s.send_bytes(b"%d" % i)
                flow.sent()
            return 1000

        child = fork(send, s, r, caps)
        got = []
        for _i in range(1000):
            got.append(r.recv(timeout=WAIT))
            flow.received()
        child.result(WAIT * 3)
        flow.close()
        assert got == [i if i % 2 else b"%d" % i for i in range(1000)], "messages were reordered or altered"


@check(lambda caps: not caps.lossy)
def _batches(make_pair: Pair, caps: Capabilities) -> None:
    """send_many() from another process, in batches of 1 to 50 with single sends between, arrives
    whole and in order through recv_many() of 1 to 64; each recv_many() returns 1 to max messages."""
    with pair(make_pair) as (s, r):
        sizes = [1 + (i * 7) % 50 for i in range(40)]

        def send(s: Any) -> int:
            n = 0
            for k in sizes:
                assert s.send_many([[n + j, "x" * ((n + j) % 90)] for j in range(k)]) == k
                n += k
                s.send_bytes(b"%d" % n)
            assert s.send_many([]) == 0
            return n

        want: list[Any] = []
        n = 0
        for k in sizes:
            want += [[n + j, "x" * ((n + j) % 90)] for j in range(k)]
            n += k
            want.append(b"%d" % n)
        child = fork(send, s, r, caps)
        got: list[Any] = []
        for i in range(10**6):
            if len(got) >= len(want):
                break
            most = 1 + (i * 13) % 64
            batch = r.recv_many(most, timeout=WAIT)
            assert 1 <= len(batch) <= most, f"recv_many({most}) returned {len(batch)} messages"
            got += batch
        assert child.result(WAIT * 3) == n
        assert got == want, "batched messages were reordered, torn or altered"


@check()
def _recv_in_child(make_pair: Pair, caps: Capabilities) -> None:
    """Messages sent by this process are received intact by another (the reverse of 'order')."""
    with pair(make_pair) as (s, r):
        flow = Lockstep(caps.lossy)
        objs = [None, True, -1, 2**40, 1.5, "é", b"\x00", [1, [2]], {"k": {"n": None}}] * 20

        def recv(r: Any) -> list[Any]:
            out = []
            for _ in objs:
                out.append(r.recv(timeout=WAIT))
                flow.received()
            return out

        child = fork(recv, r, s, caps)
        for obj in objs:
            s.send(obj)
            flow.sent()
        got = child.result(WAIT * 3)
        flow.close()
        assert got == objs, "the child received different objects"


@check()
def _sizes_and_limit(make_pair: Pair, caps: Capabilities) -> None:
    """Every size from 0 B to the limit arrives whole; one byte over the limit is refused before sending."""
    with pair(make_pair) as (s, r):
        top, own = limit(s, r, caps)
        if own <= caps.max_size:
            exc = expect(MessageTooLarge, lambda: s.send_bytes(bytes(own + 1)),
                          f"sending {own + 1} bytes over a {own}-byte limit")
            assert str(own) in str(exc), f"the MessageTooLarge text does not name the limit {own}: {exc}"
            s.send_bytes(b"still usable")
            assert r.recv_bytes(timeout=WAIT) == b"still usable", "the channel broke after MessageTooLarge"
        sizes = size_ladder(top)
        flow = Lockstep(caps.lossy)

        def send(s: Any) -> None:
            for i, n in enumerate(sizes):
                s.send_bytes(payload(n, i))
                flow.sent()

        child = fork(send, s, r, caps)
        for i, n in enumerate(sizes):
            how = i % 3
            if how == 0:
                data: Any = r.recv_bytes(timeout=WAIT)
            elif how == 1:
                buf = bytearray(n + 3)
                got = r.recv_bytes_into(buf, 3, timeout=WAIT)
                assert got == n, f"recv_bytes_into returned {got} for a {n}-byte message"
                data = memoryview(buf)[3:]
            else:
                data = r.recv(timeout=WAIT)
                assert isinstance(data, bytes), f"recv() of a send_bytes message gave {type(data).__name__}"
            flow.received()
            assert len(data) == n, f"a {n}-byte message arrived as {len(data)} bytes"
            assert data == payload(n, i), f"the {n}-byte message arrived corrupted"
        child.result(WAIT * 3)
        flow.close()


@check()
def _boundaries(make_pair: Pair, caps: Capabilities) -> None:
    """A burst of mixed sizes keeps every boundary: no two messages merged, none split."""
    with pair(make_pair) as (s, r):
        top, _ = limit(s, r, caps)
        sizes = [n for n in (0, 1, 2, 3, 0, 0, 7, 8, 9, 15, 16, 17, 100, 1000, 4095, 4096, 4097, 5,
                             SCRATCH_SIZE - HEADER_SIZE, SCRATCH_SIZE - HEADER_SIZE + 1, 3, 65537, 1,
                             200_000, 0, 2)
                 if n <= top]
        flow = Lockstep(caps.lossy)

        def send(s: Any) -> None:
            for i, n in enumerate(sizes):
                s.send_bytes(payload(n, i + 7))
                flow.sent()

        child = fork(send, s, r, caps)
        if not caps.lossy:
            time.sleep(0.1)  # let the burst pile up in the kernel's buffers
        for i, n in enumerate(sizes):
            data = r.recv_bytes(timeout=WAIT)
            flow.received()
            assert len(data) == n, f"message {i} of {n} bytes arrived as {len(data)} bytes"
            assert data == payload(n, i + 7), f"message {i} ({n} bytes) arrived corrupted"
        child.result(WAIT * 3)
        flow.close()


@check()
def _objects(make_pair: Pair, caps: Capabilities) -> None:
    """The default serializer (msgpack) carries Python's plain data and numpy arrays faithfully."""
    with pair(make_pair) as (s, r):
        if s.serializer.name != "msgpack":
            return
        objs: list[Any] = [
            None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 0.0, -0.0, 1.5, float("inf"),
            "", "text", "ünïcødé ✓", b"", b"\x00\xff" * 10, [], [1, "a", None], (1, 2), {},
            {"a": 1, "b": [1, 2, {"c": b"x"}]}, {1: "int key"}, [[[]]], {"t": (1, (2, 3))},
            bytes(range(256)),
        ]
        for obj in objs:
            s.send(obj)
            got = r.recv(timeout=WAIT)
            assert got == msgpack_form(obj), f"{obj!r} arrived as {got!r}"
            assert type(got) is type(msgpack_form(obj)), f"{obj!r} arrived as a {type(got).__name__}"
        assert isinstance(r.last_meta, dict), "last_meta is not a dict"
        s.send({"x": 1})
        raw = r.recv_bytes(timeout=WAIT)
        assert s.serializer.loads(raw) == {"x": 1}, "recv_bytes of an object is not its serialized form"
        try:
            import numpy as np
        except ImportError:
            return
        arrays: list[Any] = [np.arange(10, dtype=np.float64), np.arange(12, dtype=np.int32).reshape(3, 4),
                  np.zeros((2, 0, 3), dtype=np.uint8), np.array(7, dtype=np.int16),
                  np.array([True, False]), np.arange(6, dtype=">i4").reshape(2, 3),
                  np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.arange(20)[::3],
                  np.array([1 + 2j, 3 - 4j])]
        for arr in arrays:
            s.send(arr)
            got = r.recv(timeout=WAIT)
            assert isinstance(got, np.ndarray), f"a numpy array arrived as {type(got).__name__}"
            assert got.dtype == arr.dtype and got.shape == arr.shape, \
                f"{arr.dtype}{arr.shape} arrived as {got.dtype}{got.shape}"
            assert np.array_equal(got, arr), f"the values of a {arr.dtype} array changed"
        s.send({"nested": [np.ones(3, dtype=np.float32)]})
        got = r.recv(timeout=WAIT)
        assert np.array_equal(got["nested"][0], np.ones(3, dtype=np.float32))


@check()
def _bytes_api(make_pair: Pair, caps: Capabilities) -> None:
    """send_bytes slices, recv_bytes maxlength, recv_bytes_into offsets and BufferTooSmall keeping .data."""
    with pair(make_pair) as (s, r):
        s.send_bytes(b"0123456789", 2, 5)
        assert r.recv_bytes(timeout=WAIT) == b"23456", "send_bytes(data, offset, size) sent the wrong slice"
        s.send_bytes(b"0123", 4)
        assert r.recv_bytes(timeout=WAIT) == b"", "send_bytes(data, len(data)) should send an empty message"
        s.send_bytes(array("i", [1, 2]))
        assert r.recv_bytes(timeout=WAIT) == array("i", [1, 2]).tobytes(), "an int array was not sent as its bytes"
        expect(ValueError, lambda: s.send_bytes(b"abc", 4), "send_bytes with offset past the end")
        expect(ValueError, lambda: s.send_bytes(b"abc", 1, 5), "send_bytes with size past the end")
        assert not r.poll(0.05), "a refused send_bytes sent something"

        s.send_bytes(b"hello world")
        small = bytearray(5)
        exc = expect(BufferTooSmall, lambda: r.recv_bytes_into(small, timeout=WAIT), "recv_bytes_into a 5-byte buffer")
        assert isinstance(exc, BufferTooSmall) and exc.data == b"hello world", "BufferTooSmall lost the message"
        assert small == bytearray(5), "recv_bytes_into wrote into a buffer too small for the message"
        s.send_bytes(b"abc")
        buf = array("B", bytes(10))
        assert r.recv_bytes_into(buf, 2, timeout=WAIT) == 3 and buf[2:5].tobytes() == b"abc"
        s.send_bytes(b"ro")
        expect(TypeError, lambda: r.recv_bytes_into(b"readonly"), "recv_bytes_into a read-only buffer")
        assert r.recv_bytes(timeout=WAIT) == b"ro", "a refused recv_bytes_into consumed the message"
        s.send_bytes(b"x" * 10)
        expect(MessageTooLarge, lambda: r.recv_bytes(4, timeout=WAIT), "recv_bytes(maxlength=4) of 10 bytes")
        s.send_bytes(b"next")
        assert r.recv_bytes(timeout=WAIT) == b"next", "the channel broke after maxlength refused a message"
