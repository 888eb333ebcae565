"""Zero copy in C (_native.Lender/Lend/BusyLock behind recv_view()/send_view()): views die with their
block, the guard refuses a second user, the general path (timeouts, errors, close) still answers, and
two processes exchange messages through views only."""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import threading
from typing import Any

import numpy as np
import pytest

import ipcraft
from ipcraft import _native
from ipcraft.errors import Busy, ChannelClosed, HandleClosed, MessageTooLarge, Timeout
from ipcraft.testing import Child, unique_name

from .test_shm import connect_when_listening, shm_pair, shm_url


@pytest.mark.parametrize("wait", ["block", "spin"])
def test_views_are_released_when_the_block_exits(wait: str) -> None:
    """Using a view after its block raises ValueError: it never reads ring memory the peer reuses."""
    with shm_pair(wait=wait) as (c, s):
        with c.send_view(5) as out:
            out[:] = b"hello"
        with pytest.raises(ValueError):
            out[0] = 1
        with s.recv_view() as view:
            assert bytes(view) == b"hello" and view.readonly
        with pytest.raises(ValueError):
            bytes(view)


def test_many_messages_of_every_size_through_views() -> None:
    """Records of 0 B to 64 KiB, wrapping the ring many times, arrive whole and in order."""
    with shm_pair(capacity=1 << 17) as (c, s):
        for i in range(3000):
            n = (i * 37) % 65536 if i % 3 else i % 9
            payload = (i.to_bytes(4, "little") * (n // 4 + 1))[:n]
            with c.send_view(n) as out:
                out[:] = payload
            with s.recv_view() as view:
                assert view.nbytes == n and view == payload


def test_a_second_view_in_one_direction_is_busy_and_the_channel_stays_usable() -> None:
    """A second recv_view (or send_view) while one is held raises Busy; both ends stay usable."""
    with shm_pair() as (c, s):
        c.send_bytes(b"a")
        c.send_bytes(b"b")
        with s.recv_view() as view:
            with pytest.raises(Busy):
                with s.recv_view():
                    pass
            with pytest.raises(Busy):
                s.recv_bytes_into(bytearray(8))
            assert bytes(view) == b"a"
        with c.send_view(1) as out:
            with pytest.raises(Busy):
                with c.send_view(1):
                    pass
            out[:] = b"c"
        assert [s.recv_bytes() for _ in range(2)] == [b"b", b"c"]


def test_a_block_that_raises_sends_nothing_and_consumes_its_message() -> None:
    """send_view aborts on an exception; recv_view consumes its message even when its block raises."""
    with shm_pair() as (c, s):
        with pytest.raises(KeyError):
            with c.send_view(3) as out:
                out[:] = b"bad"
                raise KeyError("abandon")
        c.send_bytes(b"one")
        c.send_bytes(b"two")
        with pytest.raises(KeyError):
            with s.recv_view() as view:
                assert bytes(view) == b"one"
                raise KeyError("consumed anyway")
        assert s.recv_bytes() == b"two"
        assert not s.poll(0)


def test_timeouts_and_limits_take_the_general_path() -> None:
    """An empty ring times out, a full one too, an oversized loan is MessageTooLarge; all usable."""
    with shm_pair(capacity=4096) as (c, s):
        with pytest.raises(Timeout):
            with s.recv_view(timeout=0.05):
                pass
        with pytest.raises(MessageTooLarge):
            c.send_view(4096)
        with pytest.raises(ValueError):
            c.send_view(-1)
        while True:
            try:
                with c.send_view(1000, timeout=0.05) as out:
                    out[:] = b"x" * 1000
            except Timeout:
                break
        with s.recv_view(timeout=1) as view:
            assert bytes(view) == b"x" * 1000
        with c.send_view(1000, timeout=1) as out:
            out[:] = b"y" * 1000


def test_closed_channel_and_closed_peer() -> None:
    """A view of a closed channel is HandleClosed; after the peer's clean close, ChannelClosed."""
    with shm_pair() as (c, s):
        c.send_bytes(b"last")
        c.close()
        with s.recv_view() as view:
            assert bytes(view) == b"last"
        with pytest.raises(ChannelClosed):
            with s.recv_view(timeout=5):
                pass
        s.close()
        with pytest.raises(HandleClosed):
            s.recv_view()
        with pytest.raises(HandleClosed):
            c.send_view(1)


def test_an_escaped_export_keeps_the_mapping_alive() -> None:
    """An array made over a view and kept past the block (forbidden, but possible) never crashes:
    the mapping stays pinned after the channel closes, until the array goes."""
    with shm_pair() as (c, s):
        c.send_bytes(np.arange(8, dtype=np.int64))
        with s.recv_view() as view:
            kept = np.frombuffer(view, dtype=np.int64)
    assert kept.sum() == sum(range(8))  # the memory is still mapped, though no longer the message's
    del kept


def _view_echo(url: str, n: int) -> int:
    with ipcraft.listen(url) as lst, lst.accept(10) as ch:
        for _ in range(n):
            with ch.recv_view(timeout=10) as view:
                with ch.send_view(view.nbytes, timeout=10) as out:
                    out[:] = view
    return n


@pytest.mark.parametrize("wait", ["block", "spin"])
def test_two_processes_echo_through_views_only(wait: str) -> None:
    """A forked echo server answers through recv_view/send_view; every size comes back intact."""
    url = shm_url()
    child = Child(_view_echo, url, 200)
    with connect_when_listening(url, wait=wait) as ch:
        for i in range(200):
            msg = os.urandom(1 << (i % 18))
            with ch.send_view(len(msg), timeout=10) as out:
                out[:] = msg
            with ch.recv_view(timeout=10) as view:
                assert view == msg
    assert child.result(30) == 200


def test_busylock_raises_the_error_it_was_made_with() -> None:
    """BusyLock: a second enter raises error(message); exit frees it."""
    lock = _native.BusyLock("taken", KeyError)
    with lock:
        assert lock.held
        with pytest.raises(KeyError, match="taken"):
            lock.__enter__()
    assert not lock.held
    with pytest.raises(TypeError):
        _native.BusyLock("x", 3)  # type: ignore[arg-type]


def test_lender_refuses_a_port_that_does_not_match() -> None:
    """Lender checks its port (an SpscPort of the right side); an empty ring falls to acquire()."""
    from ipcraft._rings.spsc import format_ring, ring_size

    buf = mmap.mmap(-1, ring_size(4096))
    format_ring(buf, 0, 4096)
    port = _native.SpscPort(buf, 0, False)
    guard = _native.BusyLock("busy")
    try:
        with pytest.raises(TypeError):
            _native.Lender(guard, False, print, print, None, object(), print)
        with pytest.raises(ValueError):  # the consumer port cannot lend to send
            _native.Lender(guard, True, print, print, print, port, print)
        lender = _native.Lender(guard, False, lambda t: memoryview(b"slow"), print, None, port, print)
        with lender.lend(None) as view:  # an empty ring: the general path's acquire answers
            assert bytes(view) == b"slow"
        with pytest.raises(TypeError):
            lender.lend(None, 3)
        with pytest.raises(BufferError):  # a Lend is no buffer outside its fast path
            memoryview(lender.lend(None))  # type: ignore[arg-type]
    finally:
        port.close()
        buf.close()


def test_a_lend_works_through_exitstack_and_explicit_calls() -> None:
    """Lend's __enter__/__exit__ bind to the Lend itself (no bound method per block): they still work
    looked up on the type (contextlib.ExitStack) and called by hand; other calls are TypeError."""
    with shm_pair() as (c, s):
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(c.send_view(3))
            out[:] = b"abc"
        lend = s.recv_view()
        view = lend.__enter__()
        assert bytes(view) == b"abc"
        with pytest.raises(TypeError):
            lend.__exit__(None)  # type: ignore[call-arg]
        assert lend.__exit__(None, None, None) is False
        with pytest.raises(TypeError):
            type(lend).__enter__(object())  # type: ignore[arg-type]
        assert not s.poll(0)


# -- ring:// and file:// ----------------------------------------------------------------------------

@pytest.mark.parametrize("wait", ["block", "spin"])
def test_ring_queue_views_wrap_and_release(wait: str) -> None:
    """ring:// lends in place, and from a copy for records that wrap the ring's end: every size
    arrives whole and in order, and a view dies with its block."""
    with ipcraft.queue(f"ring://{unique_name('zq')}", create=True, capacity=1 << 16, wait=wait) as q:
        for i in range(3000):
            n = (i * 97) % 9000
            payload = bytes([i % 251]) * n
            with q.send_view(n) as out:
                out[:] = payload
            with q.recv_view() as view:
                assert view == payload and view.readonly
        with pytest.raises(ValueError):
            bytes(view)
        with pytest.raises(ValueError):
            out[:1] = b"x"
        with pytest.raises(Timeout):
            with q.recv_view(timeout=0.05):
                pass
        with pytest.raises(KeyError):
            with q.send_view(3) as out:
                raise KeyError("nothing sent")
        q.send_bytes(b"next")
        assert q.recv_bytes(timeout=1) == b"next"


@pytest.mark.parametrize("scheme", ["ring", "file"])
def test_records_that_wrap_the_ring_are_lent_in_place(scheme: str, tmp_ipc_dir: str) -> None:
    """The ring is mapped with its data area twice in a row (MirrorMap), so a record that runs past
    the end of the ring is lent in place on both sides, like any other: every view is the C Lend's
    (a copy would be a bytearray's), and each arrives whole.  Another handle's copying receive, which
    reads a wrapped record in two pieces from the data area itself, gets what was written through the
    mirror."""
    where = f"{tmp_ipc_dir}/{unique_name('zm')}" if scheme == "file" else unique_name("zm")
    url = f"{scheme}://{where}"
    with ipcraft.queue(url, create=True, capacity=4096) as q, ipcraft.queue(url) as other:
        exporters = set()
        for i in range(40):  # ~1.5 KiB records in a 4 KiB ring: every third or so wraps
            payload = bytes([i % 251]) * (1500 + i)
            with q.send_view(len(payload)) as out:
                exporters.add(type(out.obj))
                out[:] = payload
            if i % 2:
                assert other.recv_bytes(timeout=1) == payload
                continue
            with q.recv_view() as view:
                exporters.add(type(view.obj))
                assert view == payload
        assert exporters == {_native.Lend}


def test_mirror_map_repeats_the_data_area(tmp_path: Any) -> None:
    """MirrorMap exports the header and data area of the file, writable and shared with the file (the
    queue test above goes through the mirror past its end); sizes that are not whole pages, and a file
    too short for the ring, are ValueError; a bad fd is OSError."""
    page = mmap.PAGESIZE
    path = tmp_path / "ring"
    path.write_bytes(bytes(3 * page))
    with open(path, "r+b") as f:
        m = _native.MirrorMap(f.fileno(), page, 2 * page)
        view = memoryview(m)
        assert view.nbytes == 3 * page and not view.readonly
        view[page:page + 4] = b"head"
        plain = mmap.mmap(f.fileno(), 3 * page)
        try:
            assert plain[page:page + 4] == b"head"
        finally:
            plain.close()
        view.release()
        for header, capacity in ((page, page + 8), (page // 2, page), (0, page)):
            with pytest.raises(ValueError):
                _native.MirrorMap(f.fileno(), header, capacity)
        with pytest.raises(ValueError, match="fewer"):
            _native.MirrorMap(f.fileno(), page, 4 * page)
        with pytest.raises(OSError):
            _native.MirrorMap(-1, page, page)


def test_file_queue_with_sync_lends_copies(tmp_ipc_dir: str) -> None:
    """file://?sync=true cannot publish a loan in place (it msyncs every record): views still work,
    through copies; copies and loans interleave with ordinary sends."""
    url = f"file://{tmp_ipc_dir}/{unique_name('zf')}"
    for sync in ("true", "false"):
        with ipcraft.queue(f"{url}{sync}?sync={sync}", create=True) as q:
            q.send_bytes(b"plain")
            with q.send_view(4) as out:
                out[:] = b"view"
            with q.recv_view() as view:
                assert bytes(view) == b"plain"
            assert q.recv_bytes(timeout=1) == b"view"


def test_a_held_ring_view_makes_other_receivers_wait_not_fail() -> None:
    """While one thread holds a recv_view of a ring:// queue (its consumer lock), a receiver on
    another handle waits for the lock and gets the next message, not the held one."""
    url = f"ring://{unique_name('zl')}"
    with ipcraft.queue(url, create=True) as q, ipcraft.queue(url) as other:
        q.send_bytes(b"held")
        q.send_bytes(b"next")
        got: list[bytes] = []
        with q.recv_view() as view:
            t = threading.Thread(target=lambda: got.append(other.recv_bytes(timeout=10)))
            t.start()
            t.join(0.2)
            assert t.is_alive() and bytes(view) == b"held"  # waiting for the lock
        t.join(10)
        assert got == [b"next"]


def _loan_and_die(url: str) -> None:
    with ipcraft.queue(url) as q:
        with q.send_view(100) as out:
            out[:] = b"x" * 100
            os.kill(os.getpid(), signal.SIGKILL)


def test_a_process_killed_inside_send_view_wedges_nobody() -> None:
    """A producer SIGKILLed while its send_view holds the producer lock: the robust lock is taken
    over, the half-made record was never published, the queue keeps working."""
    url = f"ring://{unique_name('zk')}"
    with ipcraft.queue(url, create=True) as q:
        Child(_loan_and_die, url).wait(10)
        q.send_bytes(b"after", timeout=5)
        with q.recv_view(timeout=5) as view:
            assert bytes(view) == b"after"
        assert not q.poll(0)


def _ring_view_echo(url: str, back: str, n: int) -> int:
    with ipcraft.queue(url) as q, ipcraft.queue(back) as r:
        for _ in range(n):
            with q.recv_view(timeout=10) as view:
                with r.send_view(view.nbytes, timeout=10) as out:
                    out[:] = view
    return n


def test_two_processes_echo_through_ring_views() -> None:
    """A forked peer echoes through ring:// views only; every size (wrapping included) comes back."""
    url, back = f"ring://{unique_name('ze')}", f"ring://{unique_name('zb')}"
    with ipcraft.queue(url, create=True, capacity=1 << 20) as q, \
            ipcraft.queue(back, create=True, capacity=1 << 20) as r:
        child = Child(_ring_view_echo, url, back, 100)
        for i in range(100):
            msg = os.urandom(1 << (i % 18))
            with q.send_view(len(msg), timeout=10) as out:
                out[:] = msg
            with r.recv_view(timeout=10) as view:
                assert view == msg
        assert child.result(30) == 100
