"""shm:// channels: two processes, dead peers, clean close, poll/fileno, Ctrl-C, zero copy, limits."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
import zlib

import numpy as np
import pytest

import ipcraft
from ipcraft.errors import (
    AuthenticationError,
    Busy,
    ChannelClosed,
    MessageTooLarge,
    PeerVanished,
    ProtocolError,
    Timeout,
)
from ipcraft.testing import Child, ChildFailed, unique_name

MODES = ["block", "spin"]


def shm_url() -> str:
    return f"shm://{unique_name('shm')}"


@contextlib.contextmanager
def shm_pair(**opts):
    """(client, server) channels of one shm:// connection in this process."""
    url = shm_url()
    lst = ipcraft.listen(url, **opts)
    box: list = []
    t = threading.Thread(target=lambda: box.append(lst.accept(10)))
    t.start()
    try:
        client = ipcraft.connect(url, timeout=10, **opts)
    finally:
        t.join()
        lst.close()
    server = box[0]
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def connect_when_listening(url: str, **opts):
    """Connect to a listener another process is about to bind (retrying for up to 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return ipcraft.connect(url, timeout=10, **opts)
        except (FileNotFoundError, ConnectionRefusedError):
            assert time.monotonic() < deadline
            time.sleep(0.01)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("wait", MODES)
def test_round_trip_in_both_directions(wait):
    """Bytes and objects travel both ways, and each side reports the other's pid."""
    with shm_pair(wait=wait) as (c, s):
        c.send_bytes(b"ping")
        assert s.recv_bytes() == b"ping"
        s.send({"n": 1, "xs": [1, 2, 3]})
        assert c.recv() == {"n": 1, "xs": [1, 2, 3]}
        c.send_bytes(b"")
        assert s.recv() == b""
        assert c.peer.pid == s.peer.pid == os.getpid()
        assert c.extra("wait") == wait and c.extra("ring_capacity") == 4 * 1024 * 1024


def test_numpy_arrays_keep_dtype_and_shape_and_can_be_viewed():
    """numpy arrays arrive with dtype and shape (msgpack), and as a view over recv_view()."""
    a = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    with shm_pair() as (c, s):
        c.send(a)
        b = s.recv()
        assert b.dtype == a.dtype and b.shape == a.shape and (b == a).all()
        c.send_bytes(a)  # raw: the buffer protocol, dtype and shape known to both sides
        with s.recv_view() as view:
            v = np.frombuffer(view, dtype=np.int16).reshape(2, 3, 4)
            assert not v.flags.writeable and (v == a).all()
            del v
        with c.send_view(a.nbytes) as view:
            np.frombuffer(view, dtype=np.int16)[:] = a.ravel() * 2
        assert (np.frombuffer(s.recv_bytes(), dtype=np.int16) == a.ravel() * 2).all()


def test_send_view_discarded_on_exception_and_recv_view_consumes():
    """A send_view block that raises sends nothing; a recv_view block consumes its message."""
    with shm_pair() as (c, s):
        with pytest.raises(RuntimeError):
            with c.send_view(5) as view:
                view[:] = b"wrong"
                raise RuntimeError("abandon")
        c.send_bytes(b"one")
        c.send_bytes(b"two")
        with s.recv_view() as view:
            assert bytes(view) == b"one"
        assert s.recv_bytes() == b"two"
        assert not s.poll(0)


def test_views_need_shared_memory():
    """recv_view/send_view on a non-shm channel raise NotImplementedError naming shm://."""
    a, b = ipcraft.pipe()
    with a, b:
        with pytest.raises(NotImplementedError, match="shm://"):
            with a.recv_view():
                pass
        with pytest.raises(NotImplementedError, match="shm://"):
            with a.send_view(3):
                pass


def test_concurrent_receivers_get_busy():
    """While one thread holds a recv_view, another receive gets Busy, not the same message."""
    with shm_pair() as (c, s):
        c.send_bytes(b"held")
        c.send_bytes(b"next")
        with s.recv_view() as view:
            errors = []

            def other():
                try:
                    s.recv_bytes(timeout=1)
                except Busy as exc:
                    errors.append(exc)

            t = threading.Thread(target=other)
            t.start()
            t.join()
            assert errors and bytes(view) == b"held"
        assert s.recv_bytes() == b"next"


def test_message_larger_than_half_the_ring_fails_at_once():
    """A message over half the ring is MessageTooLarge naming the capacity; the channel stays usable."""
    with shm_pair(capacity=8192) as (c, s):
        assert c.extra("ring_capacity") == 8192
        with pytest.raises(MessageTooLarge, match="8192-byte shm:// ring") as info:
            c.send_bytes(bytes(4089))
        assert info.value.limit == 4088
        with pytest.raises(MessageTooLarge, match="8192-byte shm:// ring"):
            with c.send_view(5000):
                pass
        c.send_bytes(bytes(4088))
        assert len(s.recv_bytes()) == 4088


def test_receiver_limit_discards_oversized_message():
    """A message over the receiver's max_message_size is refused and discarded; the next arrives."""
    url = shm_url()
    lst = ipcraft.listen(url, max_message_size=100)
    box: list = []
    t = threading.Thread(target=lambda: box.append(lst.accept(10)))
    t.start()
    with ipcraft.connect(url, timeout=10) as c:
        t.join()
        lst.close()
        with box[0] as s:
            c.send_bytes(bytes(200))
            c.send_bytes(b"small")
            with pytest.raises(MessageTooLarge, match="max_message_size"):
                s.recv_bytes()
            assert s.recv_bytes() == b"small"


@pytest.mark.parametrize("wait", MODES)
def test_recv_timeout_leaves_channel_usable(wait):
    """recv with a timeout on an empty ring raises Timeout; the channel keeps working."""
    with shm_pair(wait=wait) as (c, s):
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            s.recv_bytes(timeout=0.05)
        assert time.monotonic() - t0 >= 0.05
        assert not s.poll(0)
        c.send_bytes(b"later")
        assert s.poll(1) and s.recv_bytes(timeout=1) == b"later"


def test_full_ring_send_times_out():
    """A sender on a full ring waits for room and raises Timeout when none comes; nothing was sent."""
    with shm_pair(capacity=4096) as (c, s):
        n = 0
        with pytest.raises(Timeout, match="still usable"):
            while True:
                c.send_bytes(bytes(1000), timeout=0.05)
                n += 1
        assert n == 4
        for _ in range(n):
            assert len(s.recv_bytes()) == 1000
        assert not s.poll(0)


def test_clean_close_is_channel_closed_after_the_last_message():
    """After the peer's close(), pending messages are delivered, then ChannelClosed (not PeerVanished)."""
    with shm_pair() as (c, s):
        c.send_bytes(b"a")
        c.send_bytes(b"b")
        c.close()
        assert s.recv_bytes() == b"a"
        assert s.recv_bytes() == b"b"
        with pytest.raises(ChannelClosed) as info:
            s.recv_bytes(timeout=5)
        assert not isinstance(info.value, PeerVanished)
        with pytest.raises(ChannelClosed):
            s.send_bytes(b"to nobody")
        assert s.poll(0)  # the end of the stream is ready to be read


def test_fileno_is_level_triggered_for_select():
    """select() on the channel is readable exactly while a message is pending."""
    with shm_pair() as (c, s):
        fd = s.fileno()
        readable = lambda: bool(select.select([s], [], [], 0)[0])  # noqa: E731
        assert not readable()
        c.send_bytes(b"1")
        c.send_bytes(b"2")
        assert select.select([fd], [], [], 5)[0] == [fd]
        assert s.recv_bytes() == b"1"
        assert readable()
        assert s.recv_bytes() == b"2"
        assert not readable()
        threading.Timer(0.05, c.send_bytes, (b"3",)).start()
        assert select.select([s], [], [], 5)[0] == [s]
        assert s.recv_bytes() == b"3"


def test_asyncio_reader_on_fileno():
    """asyncio's add_reader on fileno() fires when a message arrives, with no thread."""
    import asyncio

    with shm_pair() as (c, s):
        async def main():
            loop = asyncio.get_running_loop()
            got = loop.create_future()

            def on_ready():
                if s.poll(0) and not got.done():
                    got.set_result(s.recv_bytes())

            loop.add_reader(s.fileno(), on_ready)
            loop.call_later(0.05, c.send_bytes, b"async")
            try:
                return await asyncio.wait_for(got, 5)
            finally:
                loop.remove_reader(s.fileno())

        assert asyncio.run(main()) == b"async"


# -- two processes ---------------------------------------------------------------------------------

def _stream_sender(url: str, n: int, wait: str) -> int:
    with ipcraft.connect(url, timeout=10, wait=wait) as ch:
        crc = 0
        for i in range(n):
            msg = i.to_bytes(4, "little") * (1 + i % 40)
            crc = zlib.crc32(msg, crc)
            ch.send_bytes(msg)
        ch.send({"done": n, "crc": crc})
        assert ch.recv() == "ack"
    return crc


@pytest.mark.timeout(120)
@pytest.mark.parametrize("wait", MODES)
def test_two_processes_stream_100k_checksummed(wait):
    """1e5 messages of varying sizes cross between two processes intact and in order."""
    url = shm_url()
    n = 100_000
    with ipcraft.listen(url, wait=wait, capacity=65536) as lst:
        child = Child(_stream_sender, url, n, wait)
        with lst.accept(10) as ch:
            crc = 0
            for i in range(n):
                msg = ch.recv_bytes(timeout=30)
                assert msg[:4] == i.to_bytes(4, "little") and len(msg) == 4 * (1 + i % 40)
                crc = zlib.crc32(msg, crc)
            assert ch.recv(timeout=30) == {"done": n, "crc": crc}
            ch.send("ack")
        assert child.result(60) == crc


def _echo_server(url: str, n: int) -> str:
    with ipcraft.listen(url) as lst, lst.accept(10) as ch:
        for _ in range(n):
            ch.send_bytes(ch.recv_bytes(timeout=10))
    return "done"


def test_round_trip_with_a_server_process():
    """A client here and a server in another process ping-pong messages up to the ring limit."""
    url = shm_url()
    child = Child(_echo_server, url, 50)
    with connect_when_listening(url) as ch:
        for i in range(50):
            msg = os.urandom(1 << (i % 21))
            ch.send_bytes(msg)
            assert ch.recv_bytes(timeout=10) == msg
    assert child.result(30) == "done"


def _send_forever(url: str, wait: str) -> None:
    with ipcraft.connect(url, timeout=10, wait=wait) as ch:
        i = 0
        while True:
            ch.send_bytes(i.to_bytes(8, "little"))
            i += 1


def _recv_nothing(url: str, wait: str) -> None:
    with ipcraft.connect(url, timeout=10, wait=wait) as ch:
        ch.send_bytes(b"ready")
        time.sleep(60)


@pytest.mark.parametrize("wait", MODES)
def test_kill_sender_mid_stream_is_peer_vanished_within_a_second(wait):
    """A receiver whose sender is killed (-9) mid-stream drains the ring, then raises PeerVanished fast."""
    url = shm_url()
    fds = open_fds()
    with ipcraft.listen(url, wait=wait, capacity=16384) as lst:
        child = Child(_send_forever, url, wait)
        with lst.accept(10) as ch:
            for i in range(20_000):
                assert ch.recv_bytes(timeout=10) == i.to_bytes(8, "little")
            child.kill()
            killed = time.monotonic()
            with pytest.raises(PeerVanished):
                while True:
                    ch.recv_bytes(timeout=10)
            assert time.monotonic() - killed < 1.0
        with pytest.raises(ChildFailed, match="SIGKILL"):
            child.result(10)
    assert open_fds() == fds  # nothing leaked: rings, eventfds, pidfd, sockets all closed


@pytest.mark.parametrize("wait", MODES)
def test_kill_receiver_while_sender_blocks_on_full_ring(wait):
    """A sender blocked on a full ring whose receiver is killed (-9) raises PeerVanished within a second."""
    url = shm_url()
    with ipcraft.listen(url, wait=wait, capacity=4096) as lst:
        child = Child(_recv_nothing, url, wait)
        with lst.accept(10) as ch:
            assert ch.recv_bytes(timeout=10) == b"ready"
            with pytest.raises(Timeout):
                while True:
                    ch.send_bytes(bytes(500), timeout=0.2)  # fill the ring
            threading.Timer(0.2, child.kill).start()
            t0 = time.monotonic()
            with pytest.raises(PeerVanished):
                ch.send_bytes(bytes(500), timeout=10)
            assert time.monotonic() - t0 < 1.2
        child.wait()


def _serve_then_hang(url: str) -> None:
    with ipcraft.listen(url) as lst, lst.accept(10) as ch:
        ch.send_bytes(b"hello")
        time.sleep(60)


def test_kill_of_the_listening_side_is_peer_vanished():
    """A client blocked in recv whose server process is killed (-9) raises PeerVanished within a second."""
    url = shm_url()
    child = Child(_serve_then_hang, url)
    with connect_when_listening(url) as ch:
        assert ch.recv_bytes(timeout=10) == b"hello"
        threading.Timer(0.2, child.kill).start()
        t0 = time.monotonic()
        with pytest.raises(PeerVanished):
            ch.recv_bytes(timeout=10)
        assert time.monotonic() - t0 < 1.2
    child.wait()
    assert not [n for n in os.listdir("/dev/shm") if "ipcraft" in n and url.rsplit("/", 1)[1] in n]


def _blocked_recv(url: str, wait: str) -> str:
    with ipcraft.connect(url, timeout=10, wait=wait) as ch:
        ch.send_bytes(b"about to block")
        try:
            ch.recv_bytes()
        except KeyboardInterrupt:
            return "interrupted"
    return "not interrupted"


@pytest.mark.parametrize("wait", MODES)
def test_ctrl_c_interrupts_a_blocked_recv(wait):
    """SIGINT to a process blocked in recv raises KeyboardInterrupt there (Ctrl-C works)."""
    url = shm_url()
    with ipcraft.listen(url) as lst:
        child = Child(_blocked_recv, url, wait)
        with lst.accept(10) as ch:
            assert ch.recv_bytes(timeout=10) == b"about to block"
            time.sleep(0.2)  # past the spin phase: asleep (block) or spinning without the GIL (spin)
            child.kill(signal.SIGINT)
            assert child.result(10) == "interrupted"


def test_nothing_named_in_dev_shm():
    """An shm:// connection creates no file in /dev/shm (memfd and an abstract socket only)."""
    before = set(os.listdir("/dev/shm"))
    with shm_pair() as (c, s):
        c.send_bytes(b"x")
        assert s.recv_bytes() == b"x"
        assert set(os.listdir("/dev/shm")) == before


def _connect_as_nobody(url: str) -> str:
    os.setgid(65534)
    os.setuid(65534)
    try:
        ipcraft.connect(url, timeout=5)
    except AuthenticationError as exc:
        return str(exc)
    return "connected"


def test_other_user_is_refused():
    """A client running as another user is refused by the listener's credential check."""
    url = shm_url()
    with ipcraft.listen(url) as lst:
        child = Child(_connect_as_nobody, url)
        with pytest.raises(Timeout):
            lst.accept(0.5)
        assert "uid 65534" in child.result(10)


def test_corrupt_ring_is_protocol_error():
    """A ring whose cursor is corrupted under a live channel makes recv raise ProtocolError."""
    from ipcraft import _native
    from ipcraft._rings import spsc as _ring

    with shm_pair(capacity=4096) as (c, s):
        c.send_bytes(b"fine")
        assert s.recv_bytes() == b"fine"
        tx = c._transport.tx  # white box: the client's ring towards the server
        _native.atomic_store_u64(c._transport._mm, _ring.OFF_HEAD, tx.native.position + 8192)
        with pytest.raises(ProtocolError, match="corrupt"):
            s.recv_bytes(timeout=1)


def test_client_refuses_a_bad_offer():
    """The client checks what the server passes: a memfd not sealed, of the wrong size (the size of a
    version 1 offer included), with a corrupt ring header or a corrupt shared-region header is
    ProtocolError, and nothing stays mapped."""
    import fcntl

    from ipcraft._rings import spsc as _ring
    from ipcraft._transports import shm

    cap = 4096
    size = shm._memfd_size(cap, shm._VERSION)
    region = 2 * _ring.ring_size(cap)

    def offer(seal: bool, length: int, corrupt: int | None) -> int:
        fd = os.memfd_create("test-offer", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, length)
        if length == size:
            import mmap

            with mmap.mmap(fd, size) as mm:
                shm._format_memfd(mm, cap, shm._VERSION)
                if corrupt is not None:
                    mm[corrupt] = 9
        if seal:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        return fd

    for seal, length, corrupt, match in [(False, size, None, "sealed"), (True, size - 4096, None, "memfd"),
                                         (True, shm._memfd_size(cap, 1), None, "memfd"),
                                         (True, size, _ring.OFF_VERSION, "version 9"),
                                         (True, size, region, "shared region"),
                                         (True, size, region + 8, "shared region")]:
        fd = offer(seal, length, corrupt)
        try:
            with pytest.raises(ProtocolError, match=match):
                shm._map_offer(fd, cap, "test")
        finally:
            os.close(fd)
    fd = offer(True, size, None)
    shm._map_offer(fd, cap, "test").close()
    os.close(fd)


@pytest.mark.parametrize("wait", MODES)
def test_last_message_before_close_is_never_lost(wait):
    """A message sent just before close() is always delivered before ChannelClosed (race check)."""
    for i in range(100):
        with shm_pair(wait=wait, capacity=4096) as (c, s):
            t = threading.Thread(target=lambda i=i: (c.send_bytes(b"last %d" % i), c.close()))
            t.start()
            assert s.recv_bytes(timeout=5) == b"last %d" % i
            with pytest.raises(ChannelClosed):
                s.recv_bytes(timeout=5)
            t.join()


def _use_after_fork(parent_end, child_end, n: int) -> str:
    parent_end.close()  # the child's copy: must not end the channel for the parent
    for i in range(n):
        child_end.send_bytes(b"%d" % i)
    assert child_end.recv_bytes(timeout=10) == b"bye"
    child_end.close()
    return "done"


@pytest.mark.parametrize("rounds", [1, 20])
def test_fork_copies_close_independently(rounds):
    """After fork, closing one process's copy of an end leaves the other copy working; the last
    close() ends the channel cleanly (ChannelClosed, not PeerVanished)."""
    for _ in range(rounds):
        with shm_pair() as (c, s):
            child = Child(_use_after_fork, s, c, 50)
            c.close()  # the parent's copy of the child's end, possibly before the child runs
            for i in range(50):
                assert s.recv_bytes(timeout=10) == b"%d" % i
            s.send_bytes(b"bye")
            with pytest.raises(ChannelClosed) as info:
                s.recv_bytes(timeout=10)
            assert not isinstance(info.value, PeerVanished)
            assert child.result(10) == "done"


@pytest.mark.parametrize("wait", MODES)
def test_close_from_another_thread_wakes_a_blocked_recv(wait):
    """close() while another thread is blocked in recv wakes it with HandleClosed (no hang, no crash)."""
    from ipcraft.errors import HandleClosed

    with shm_pair(wait=wait) as (_c, s):
        errors: list = []

        def blocked():
            try:
                s.recv_bytes(timeout=10)
            except Exception as exc:  # noqa: BLE001 - inspected below
                errors.append(exc)

        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(0.3)  # asleep (block) or spinning (spin)
        s.close()
        t.join(5)
        assert not t.is_alive()
        assert errors and isinstance(errors[0], HandleClosed)


def test_connect_without_listener_names_the_endpoint():
    """Connecting where nobody listens is ConnectionRefusedError naming the shm:// URL."""
    with pytest.raises(ConnectionRefusedError, match=r"shm://.*no listener"):
        ipcraft.connect(shm_url(), timeout=1)


def test_send_many_recv_many_in_c_and_what_ends_a_batch():
    """recv_many over shm://: raw frames (which the C batch, asked for msgpack frames, leaves alone) come
    by the general path inside the same recv_many; a frame of another serializer ends the batch, and
    its error is raised by the next recv_many, after which the channel goes on."""
    url = shm_url()
    lst = ipcraft.listen(url)
    box: list = []
    t = threading.Thread(target=lambda: box.append(lst.accept(10)))
    t.start()
    try:
        tx = ipcraft.connect(url, timeout=10, serializer="json")
    finally:
        t.join()
        lst.close()
    rx = box[0]
    with tx, rx:
        tx.send_bytes(b"a")
        tx.send_bytes(b"b")
        tx.send({"json": 1})
        tx.send_bytes(b"c")
        assert rx.recv_many(10) == [b"a", b"b"]
        with pytest.raises(ProtocolError, match="json"):
            rx.recv_many(10)
        assert rx.recv_many(10) == [b"c"]
        with pytest.raises(ValueError):
            rx.recv_many(0)
        with pytest.raises(Timeout):
            rx.recv_many(3, timeout=0.01)
