"""recv_bytes_into() on shm://, ring:// and file:// in C (SpscPort/MpmcPort.try_recv_into): the common
call copies straight from the ring into the caller's buffer, and every other case (too small a buffer,
over max_message_size, the end of the stream, a closed handle, bad arguments) still answers as the
general path documents, with nothing lost and the channel usable."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import ipcraft
from ipcraft import _native
from ipcraft.errors import BufferTooSmall, ChannelClosed, HandleClosed, MessageTooLarge
from ipcraft.testing import Child, unique_name

from .test_shm import connect_when_listening, shm_pair, shm_url


@contextlib.contextmanager
def queue_pair(scheme: str, tmp_dir: str, **opts: Any) -> Iterator[tuple[Any, Any]]:
    """(sender, receiver): two handles on one new ring:// or file:// queue."""
    where = f"{tmp_dir}/{unique_name('ri')}" if scheme == "file" else unique_name("ri")
    url = f"{scheme}://{where}"
    with ipcraft.queue(url, create=True, **opts) as tx, ipcraft.queue(url, **opts) as rx:
        try:
            yield tx, rx
        finally:
            tx.unlink()


@contextlib.contextmanager
def pair(scheme: str, tmp_dir: str, **opts: Any) -> Iterator[tuple[Any, Any]]:
    if scheme == "shm":
        with shm_pair(**opts) as (c, s):
            yield c, s
    else:
        with queue_pair(scheme, tmp_dir, **opts) as (tx, rx):
            yield tx, rx


SCHEMES = ["shm", "ring", "file"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_fast_path_is_offered_and_copies_every_size(scheme: str, tmp_ipc_dir: str) -> None:
    """The channel holds the port's try_recv_into; messages of every size (many of them wrapping
    the end of a 4 KiB ring) arrive whole at any offset of one reused buffer."""
    with pair(scheme, tmp_ipc_dir, capacity=4096) as (tx, rx):
        assert rx._fast_recv_into is not None
        buf = bytearray(4000)
        for i in range(400):
            n = (i * 37) % 1900
            off = i % 7
            payload = bytes([i % 251]) * n
            tx.send_bytes(payload)
            assert rx.recv_bytes_into(buf, off) == n
            assert buf[off:off + n] == payload
        tx.send_bytes(b"last")
        assert rx.recv_bytes_into(memoryview(buf)[10:]) == 4 and buf[10:14] == b"last"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_too_small_a_buffer_keeps_the_message_whole(scheme: str, tmp_ipc_dir: str) -> None:
    """BufferTooSmall: the C path leaves the message to the general path, which hands it over whole
    in the exception's data without writing the buffer; the next message follows."""
    with pair(scheme, tmp_ipc_dir, capacity=4096) as (tx, rx):
        tx.send_bytes(b"x" * 1500)  # the second record wraps the 4 KiB ring's end
        tx.send_bytes(b"hello world" * 150)
        tx.send_bytes(b"next")
        assert rx.recv_bytes_into(bytearray(1500)) == 1500
        small = bytearray(100)
        with pytest.raises(BufferTooSmall) as exc:
            rx.recv_bytes_into(small)
        assert exc.value.data == b"hello world" * 150 and small == bytearray(100)
        with pytest.raises(BufferTooSmall) as exc2:
            rx.recv_bytes_into(bytearray(8), 5)
        assert exc2.value.data == b"next"
        tx.send_bytes(b"again")
        assert rx.recv_bytes_into(small) == 5 and small[:5] == b"again"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_over_max_message_size_is_discarded(scheme: str, tmp_ipc_dir: str) -> None:
    """A message over the receiver's max_message_size is MessageTooLarge and discarded; the channel
    stays usable and the buffer is not written."""
    buf = bytearray(4096)
    if scheme == "shm":
        url = shm_url()
        with ipcraft.listen(url, max_message_size=100) as lst:
            box: list[Any] = []
            t = threading.Thread(target=lambda: box.append(lst.accept(10)))
            t.start()
            tx = ipcraft.connect(url, timeout=10)
            t.join()
        rx = box[0]
        stack = contextlib.ExitStack()
        stack.enter_context(tx)
        stack.enter_context(rx)
    else:
        where = f"{tmp_ipc_dir}/{unique_name('rl')}" if scheme == "file" else unique_name("rl")
        url = f"{scheme}://{where}"
        stack = contextlib.ExitStack()
        tx = stack.enter_context(ipcraft.queue(url, create=True))
        rx = stack.enter_context(ipcraft.queue(url, max_message_size=100))
        stack.callback(tx.unlink)
    with stack:
        tx.send_bytes(b"y" * 200)
        tx.send_bytes(b"fits")
        with pytest.raises(MessageTooLarge):
            rx.recv_bytes_into(buf)
        assert buf == bytearray(4096)
        assert rx.recv_bytes_into(buf) == 4 and buf[:4] == b"fits"
        tx.send_bytes(b"z" * 101)
        with pytest.raises(MessageTooLarge):
            rx.recv_bytes_into(buf, 1)
        assert buf[:4] == b"fits" and buf[4:] == bytearray(4092)


def test_end_of_stream_and_close_on_shm() -> None:
    """Messages sent before the peer closed arrive, then ChannelClosed, for good; a closed channel
    raises HandleClosed."""
    with shm_pair() as (c, s):
        buf = bytearray(64)
        c.send_bytes(b"one")
        c.send_bytes(b"two")
        c.close()
        assert s.recv_bytes_into(buf) == 3 and buf[:3] == b"one"
        assert s.recv_bytes_into(buf) == 3 and buf[:3] == b"two"
        for _ in range(2):
            with pytest.raises(ChannelClosed):
                s.recv_bytes_into(buf)
        s.close()
        with pytest.raises(HandleClosed):
            s.recv_bytes_into(buf)


@pytest.mark.parametrize("scheme", ["ring", "file"])
def test_closed_queue_handle(scheme: str, tmp_ipc_dir: str) -> None:
    with pair(scheme, tmp_ipc_dir) as (tx, rx):
        tx.send_bytes(b"kept")
        rx.close()
        with pytest.raises(HandleClosed):
            rx.recv_bytes_into(bytearray(8))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_bad_arguments_are_the_general_paths_errors(scheme: str, tmp_ipc_dir: str) -> None:
    """A read-only or non-buffer object, an offset outside the buffer or not an int: the same
    TypeError/ValueError as elsewhere, and the waiting message is untouched."""
    with pair(scheme, tmp_ipc_dir) as (tx, rx):
        tx.send_bytes(b"waiting")
        with pytest.raises(TypeError):
            rx.recv_bytes_into(b"readonly!")
        with pytest.raises(TypeError):
            rx.recv_bytes_into(object())
        with pytest.raises(ValueError):
            rx.recv_bytes_into(bytearray(8), 9)
        with pytest.raises(ValueError):
            rx.recv_bytes_into(bytearray(8), -1)
        with pytest.raises(TypeError):
            rx.recv_bytes_into(bytearray(8), 1.5)
        buf = bytearray(8)
        assert rx.recv_bytes_into(buf, 1) == 7 and buf[1:] == b"waiting"


def test_port_level_try_recv_into_returns_none_for_the_general_path() -> None:
    """_native's try_recv_into: the length when it copied, None (nothing taken) otherwise."""
    with shm_pair(wait="spin") as (c, s):
        port = s._fast_recv_into
        assert port is not None
        assert port(bytearray(8)) is None  # empty after its spin
        c.send_bytes(b"12345")
        assert port(bytearray(4)) is None  # does not fit: left in the ring
        assert port(bytearray(8), 4) is None
        assert port(bytearray(8), 9) is None
        assert port(bytes(8)) is None
        assert port() is None and port(bytearray(8), 0, 0) is None
        buf = bytearray(8)
        assert port(buf, 3) == 5 and buf[3:] == b"12345"
    assert isinstance(_native.SpscPort.try_recv_into.__doc__, str)


def _send_big(url: str, sizes: list[int], wait: str) -> int:
    with ipcraft.listen(url, capacity=1 << 22, wait=wait) as lst, lst.accept(10) as ch:
        for n in sizes:
            ch.send_bytes(bytes([n % 251]) * n)
        return len(ch.recv_bytes(timeout=30))  # the reader's answer, before closing


@pytest.mark.parametrize("wait", ["block", "spin"])
def test_large_messages_between_processes(wait: str) -> None:
    """Messages of 256 KiB and more (copied without the GIL) from another process arrive whole."""
    url = shm_url()
    sizes = [1 << 20, 300_000, 64, (1 << 20) - 8, 262_144, 5]
    child = Child(_send_big, url, sizes, wait)
    with connect_when_listening(url, capacity=1 << 22, wait=wait) as ch:
        buf = bytearray(1 << 20)
        for n in sizes:
            assert ch.poll(30)
            assert ch.recv_bytes_into(buf) == n
            assert buf[:n] == bytes([n % 251]) * n
        ch.send_bytes(b"done")
    assert child.result(30) == 4


@pytest.mark.parametrize("scheme", SCHEMES)
def test_max_message_size_is_fixed_for_the_handles_life(scheme: str, tmp_ipc_dir: str) -> None:
    """max_message_size cannot be changed on an open handle (the C fast paths and the framing were set
    up with it, so a new value could not hold on every path): setting it raises AttributeError and
    leaves the limit as it was; messages up to it still arrive whole through recv_bytes_into."""
    with pair(scheme, tmp_ipc_dir, max_message_size=100) as (tx, rx):
        with pytest.raises(AttributeError):
            rx.max_message_size = 10
        assert rx.max_message_size == 100
        buf = bytearray(1000)
        for data in (b"a" * 50, b"b" * 100):
            tx.send_bytes(data)
            assert rx.recv_bytes_into(buf) == len(data) and bytes(buf[:len(data)]) == data
