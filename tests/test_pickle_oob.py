"""PICKLE's protocol-5 out-of-band container (Serializer.dumps_oob, split_oob; docs/spec/frame.md):
large buffers travel beside the pickle stream, copied once into shared memory, and come back as views
of the received message."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import ipcraft
from ipcraft.errors import MessageTooLarge, ProtocolError
from ipcraft.serializers import MSGPACK, OOB_MAGIC, OOB_MIN_BUFFER, PICKLE, split_oob
from ipcraft.testing import Child, unique_name
from transports.test_shm import connect_when_listening, shm_pair, shm_url


def _blob(parts: list[object]) -> bytes:
    return b"".join(bytes(memoryview(p)) for p in parts)  # type: ignore[arg-type]


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def test_large_arrays_go_out_of_band_and_come_back_as_views_of_the_message() -> None:
    """Each large contiguous array is its own part; loads makes read-only arrays over the bytes."""
    big = np.arange(100_000, dtype=np.float64)
    other = np.ones((300, 300), dtype=np.int32, order="F")
    small = np.arange(10)
    strided = np.arange(40_000)[::2]  # not contiguous: stays in the stream
    obj = {"big": big, "other": other, "small": small, "strided": strided, "n": 7}
    parts = PICKLE.dumps_oob(obj)  # type: ignore[misc]
    assert parts[0][:4] == OOB_MAGIC and memoryview(parts[1]).nbytes == big.nbytes
    blob = _blob(parts)
    back = PICKLE.loads(blob)
    for k in ("big", "other", "small", "strided"):
        assert back[k].dtype == obj[k].dtype and back[k].shape == obj[k].shape and (back[k] == obj[k]).all()
    assert back["n"] == 7 and back["other"].flags.f_contiguous
    start = _address(np.frombuffer(blob, dtype=np.uint8))
    for k in ("big", "other"):  # no copy out of the message: the arrays lie inside the bytes
        assert start <= _address(back[k]) < start + len(blob) and not back[k].flags.writeable
    assert back["big"].copy().flags.writeable


def test_objects_without_large_buffers_are_a_plain_pickle() -> None:
    """No buffer of OOB_MIN_BUFFER bytes: one part, an ordinary pickle stream."""
    for obj in ([1, "two", b"3"], np.zeros(OOB_MIN_BUFFER // 8 - 1), b"x" * 100_000):
        parts = PICKLE.dumps_oob(obj)  # type: ignore[misc]
        assert len(parts) == 1 and parts[0][:1] == b"\x80"
        back = PICKLE.loads(parts[0])
        assert (back == obj).all() if isinstance(obj, np.ndarray) else back == obj
    assert MSGPACK.dumps_oob is None


def test_a_reused_receive_buffer_is_copied_once() -> None:
    """A container in a mutable buffer (a transport's reused one) is loaded from a copy: the arrays
    never change when that buffer is reused."""
    a = np.arange(10_000, dtype=np.int64)
    buf = bytearray(_blob(PICKLE.dumps_oob([a])))  # type: ignore[misc]
    back = PICKLE.loads(memoryview(buf))[0]
    buf[:] = bytes(len(buf))
    assert (back == a).all()


def _container(k: int, slen: int, lens: list[int], body: bytes) -> bytes:
    return struct.pack("<4sIQ", OOB_MAGIC, k, slen) + struct.pack(f"<{len(lens)}Q", *lens) + body


@pytest.mark.parametrize("data", [
    b"\x00PB5",  # shorter than the header
    _container(0, 0, [], b""),  # no buffers
    _container(2**32 - 1, 0, [], b"\x00" * 64),  # a count the message cannot hold
    _container(1, 2**63, [0], b"\x00" * 8),  # a stream past the end
    _container(1, 1, [2**64 - 1], b"\x00" * 32),  # a buffer past the end
    _container(1, 1, [1], b"\x00" * 64),  # bytes left over after the last buffer
    b"\x00PB6" + bytes(60),  # another magic
])
def test_hostile_lengths_are_protocol_errors(data: bytes) -> None:
    """Counts and lengths that do not add up to exactly the message raise ProtocolError, through
    split_oob and through PICKLE.decode alike."""
    with pytest.raises(ProtocolError):
        split_oob(memoryview(data))
    with pytest.raises(ProtocolError):
        PICKLE.decode(memoryview(data))


def test_shm_pickle_channel_sends_arrays_out_of_band() -> None:
    """A pickle channel over shm:// moves arrays through the container; limits still apply."""
    with shm_pair(serializer="pickle", capacity=1 << 20) as (c, s):
        a = np.random.default_rng(1).random(50_000)
        c.send({"a": a, "tag": "x"})
        got = s.recv(timeout=5)
        assert (got["a"] == a).all() and got["tag"] == "x" and not got["a"].flags.writeable
        with pytest.raises(MessageTooLarge):
            c.send(np.zeros(1 << 17))  # 1 MiB of data in a 1 MiB ring (half is the limit)
        c.send([1, 2])
        assert s.recv(timeout=5) == [1, 2]


def test_ring_queue_sends_arrays_out_of_band() -> None:
    """ring:// (and file://, the same ring) carry the container too."""
    with ipcraft.queue(f"ring://{unique_name('oob')}", create=True, serializer="pickle") as q:
        arrays = [np.arange(5000 + i, dtype=np.int32) for i in range(3)]
        q.send(arrays)
        back = q.recv(timeout=5)
        assert all((x == y).all() for x, y in zip(back, arrays, strict=True))


def _array_echo(url: str, n: int) -> int:
    with ipcraft.listen(url, serializer="pickle") as lst, lst.accept(10) as ch:
        for _ in range(n):
            a = ch.recv(timeout=10)
            ch.send(a * 2)
    return n


def test_two_processes_exchange_arrays() -> None:
    """A forked peer doubles arrays of many sizes and dtypes sent out of band over shm://."""
    url = shm_url()
    child = Child(_array_echo, url, 20)
    with connect_when_listening(url, serializer="pickle") as ch:
        for i in range(20):
            a = np.arange(1 << (i % 14 + 4), dtype=[np.float32, np.int64, np.uint8][i % 3])
            ch.send(a)
            back = ch.recv(timeout=10)
            assert back.dtype == a.dtype and (back == a * 2).all()
    assert child.result(30) == 20
