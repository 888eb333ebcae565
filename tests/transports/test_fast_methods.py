"""send_bytes(data) and recv_bytes() as C FastMethods: the common call goes straight to the port's fast
path, and every other call (keywords, a full ring, an empty one, a message over max_message_size, a
closed handle) still answers as the Python method documents, with nothing sent twice or lost."""

from __future__ import annotations

import inspect
import threading
import time

import pytest

import ipcraft
from ipcraft import _native
from ipcraft._channel import _MessageIO
from ipcraft.errors import HandleClosed, MessageTooLarge, Timeout
from ipcraft.testing import unique_name

from .test_recv_into import SCHEMES, pair


def test_the_methods_are_fast_methods_and_the_class_shows_the_python_ones() -> None:
    """On the class (help(), the API reference, inspect) each is the documented Python method."""
    for name in ("send_bytes", "recv_bytes", "recv_bytes_into"):
        assert isinstance(_MessageIO.__dict__[name], _native.FastMethod)
        method = getattr(ipcraft.Channel, name)
        assert inspect.isfunction(method) and method.__doc__
        assert "timeout" in inspect.signature(method).parameters


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_common_calls_take_the_fast_path(scheme: str, tmp_ipc_dir: str) -> None:
    """A shared-memory channel holds a fast recv that checks the limit itself, and messages of every
    size go both ways through the FastMethods whole and in order."""
    with pair(scheme, tmp_ipc_dir, capacity=1 << 16) as (tx, rx):
        assert rx._fast_recv_checked is not None and tx._fast_send is not None
        for i in range(300):
            msg = bytes([i % 251]) * ((i * 97) % 20000)
            tx.send_bytes(msg)
            assert rx.recv_bytes() == msg


def test_a_channel_without_a_checking_port_keeps_its_python_check(tmp_ipc_dir: str) -> None:
    """unix:// has no limit-checking fast recv: recv_bytes() takes the Python method, which still
    refuses a message over max_message_size and goes on with the next."""
    url = f"unix://{tmp_ipc_dir}/{unique_name('fm')}.sock"
    with ipcraft.listen(url) as lst:
        box: list[ipcraft.Channel] = []
        t = threading.Thread(target=lambda: box.append(lst.accept(10)))
        t.start()
        client = ipcraft.connect(url, timeout=10, max_message_size=100)
        t.join()
    with client, box[0] as server:
        assert client._fast_recv_checked is None
        server.send_bytes(b"x" * 200)
        with pytest.raises(MessageTooLarge):
            client.recv_bytes()
        server.send_bytes(b"next")
        assert client.recv_bytes() == b"next"


@pytest.mark.parametrize("scheme", ["ring", "file"])
def test_a_message_over_the_limit_is_refused_by_recv_bytes(scheme: str, tmp_ipc_dir: str) -> None:
    """A queue handle opened with a smaller max_message_size than the sender's: recv_bytes() raises
    MessageTooLarge (the FastMethod's port leaves the message to the general path), the next
    message arrives."""
    where = f"{tmp_ipc_dir}/{unique_name('fm')}" if scheme == "file" else unique_name("fm")
    url = f"{scheme}://{where}"
    with ipcraft.queue(url, create=True) as tx, ipcraft.queue(url, max_message_size=100) as rx:
        try:
            tx.send_bytes(b"y" * 500)
            with pytest.raises(MessageTooLarge):
                rx.recv_bytes()
            tx.send_bytes(b"small")
            assert rx.recv_bytes() == b"small"
        finally:
            tx.unlink()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_keywords_a_timeout_and_a_closed_handle_take_the_python_method(scheme: str, tmp_ipc_dir: str) -> None:
    with pair(scheme, tmp_ipc_dir, capacity=4096) as (tx, rx):
        tx.send_bytes(b"abcdef", 2, 3, timeout=1)
        assert rx.recv_bytes(timeout=1) == b"cde"
        tx.send_bytes(b"z" * 50)
        with pytest.raises(MessageTooLarge):
            rx.recv_bytes(10)
        with pytest.raises(Timeout):
            rx.recv_bytes(timeout=0.05)
        # Closed handles: the pair's own (shm://), or two more handles on the queue (the pair's
        # sender removes the queue at the end and must stay open for it).
        closing = [tx, rx] if scheme == "shm" else [ipcraft.queue(str(rx.endpoint)) for _ in range(2)]
        for h in closing:
            h.close()
        with pytest.raises(HandleClosed):
            closing[0].send_bytes(b"after close")
        with pytest.raises(HandleClosed):
            closing[1].recv_bytes()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_send_into_a_full_ring_waits_and_sends_once(scheme: str, tmp_ipc_dir: str) -> None:
    """The FastMethod's try_send finds no room and sends nothing; the Python method then waits for
    room and sends: every message arrives exactly once, in order."""
    with pair(scheme, tmp_ipc_dir, capacity=4096) as (tx, rx):
        got: list[bytes] = []

        def drain() -> None:
            time.sleep(0.2)  # the sender meets a full ring first
            for _ in range(100):
                got.append(rx.recv_bytes(timeout=10))

        t = threading.Thread(target=drain)
        t.start()
        for i in range(100):
            tx.send_bytes(i.to_bytes(2, "little") * 250)
        t.join(20)
        assert got == [i.to_bytes(2, "little") * 250 for i in range(100)]
        with pytest.raises(Timeout):
            rx.recv_bytes(timeout=0.05)

