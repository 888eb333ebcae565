"""Fifo: named pipes, with the kernel's open semantics (blocking, O_NONBLOCK, ENXIO)."""

from __future__ import annotations

import errno
import io
import os
import stat
import time

import pytest

from ipcraft.errors import ChannelClosed, HandleClosed, InvalidEndpoint, PeerVanished, Timeout
from ipcraft.primitives.fifo import Fifo
from ipcraft.testing import Child, unique_name


@pytest.fixture()
def path(tmp_ipc_dir: str) -> str:
    return os.path.join(tmp_ipc_dir, unique_name("fifo"))


def test_create_makes_an_owner_only_fifo_whatever_the_umask(path: str) -> None:
    """create() makes a FIFO with exactly the mode asked (0600 by default), despite the umask."""
    old = os.umask(0o077)
    try:
        with Fifo.create(path) as f, Fifo.create(path + "b", mode=0o640) as g:
            st = os.stat(path)
            assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
            assert stat.S_IMODE(os.stat(path + "b").st_mode) == 0o640
            assert f.owner and g.owner
    finally:
        os.umask(old)


def test_creator_unlinks_on_close_and_opener_never(path: str) -> None:
    """The creating handle removes the FIFO on close; a handle from open() leaves it."""
    f = Fifo.create(path)
    g = Fifo.open(path)
    assert not g.owner
    g.close()
    assert os.path.exists(path)
    f.close()
    assert not os.path.exists(path)


def test_unlink_on_close_false_and_release_ownership_keep_the_name(path: str) -> None:
    """unlink_on_close=False and release_ownership() each leave the FIFO in place."""
    Fifo.create(path, unlink_on_close=False).close()
    assert os.path.exists(path)
    f = Fifo.open_or_create(path)
    assert not f.owner
    f.unlink()
    assert not os.path.exists(path)
    f.close()
    g = Fifo.open_or_create(path)
    assert g.owner
    g.release_ownership()
    g.close()
    assert os.path.exists(path)
    os.unlink(path)


def test_forked_copy_of_the_owner_does_not_unlink(path: str) -> None:
    """A child closing its inherited copy of the owner handle leaves the parent's FIFO alone."""
    with Fifo.create(path) as f:
        Child(f.close).result(10)
        assert os.path.exists(path)
    assert not os.path.exists(path)


def test_nonblocking_write_open_without_reader_is_enxio(path: str) -> None:
    """O_NONBLOCK write-open with no reader: OSError errno ENXIO, explained; the handle stays usable."""
    with Fifo.create(path) as f, Fifo.open(path) as w:
        with pytest.raises(OSError) as info:
            w.open_write(nonblocking=True)
        assert info.value.errno == errno.ENXIO
        assert "no process has it open for reading" in str(info.value)
        assert w.direction is None and not w.closed
        f.open_read(nonblocking=True)
        w.open_write(nonblocking=True)
        w.write(b"now")
        assert f.read(timeout=1) == b"now"


def test_nonblocking_read_open_succeeds_without_writer(path: str) -> None:
    """O_NONBLOCK read-open succeeds at once with no writer; reading then is end of file."""
    with Fifo.create(path) as f:
        f.open_read(nonblocking=True)
        assert f.direction == "read" and not f.blocking
        with pytest.raises(ChannelClosed):
            f.read(timeout=0)


@pytest.mark.timeout(30)
def test_blocking_open_rendezvous_between_two_processes(path: str) -> None:
    """Blocking opens wait for each other; data flows; EOF when the writer closes."""
    with Fifo.create(path) as f:
        def writer() -> int:
            with Fifo.open(path) as w:
                w.open_write()  # blocks until the parent opens for reading
                return w.write(b"x" * 100_000)

        c = Child(writer)
        f.open_read()  # blocks until the child opens for writing
        got = bytearray()
        with pytest.raises(ChannelClosed):
            while True:
                got += f.read(timeout=10)
        assert c.result(10) == 100_000
        assert got == b"x" * 100_000


@pytest.mark.timeout(30)
def test_bounded_opens_wait_for_a_late_peer(path: str) -> None:
    """open_read/open_write with a timeout succeed when the peer comes during the wait."""
    with Fifo.create(path) as f:
        def late_writer() -> None:
            time.sleep(0.2)
            with Fifo.open(path).open_write(timeout=10) as w:
                w.write(b"late")

        c = Child(late_writer)
        t0 = time.monotonic()
        f.open_read(timeout=10)
        assert time.monotonic() - t0 >= 0.1  # it really waited for the writer
        assert f.blocking  # the bounded open restored blocking mode
        assert f.read(timeout=10) == b"late"
        c.result(10)


def test_bounded_opens_time_out_without_peer(path: str) -> None:
    """With no peer, open_read/open_write(timeout=) raise Timeout and leave no end open."""
    with Fifo.create(path) as f:
        with pytest.raises(Timeout, match="no writer"):
            f.open_read(timeout=0.05)
        with pytest.raises(Timeout, match="no reader"):
            f.open_write(timeout=0.05)
        assert f.direction is None


def test_eof_only_when_the_last_writer_closes(path: str) -> None:
    """With two writers, the reader sees EOF only after both have closed."""
    with Fifo.create(path) as r:
        r.open_read(nonblocking=True)
        w1 = Fifo.open(path).open_write(timeout=1)
        w2 = Fifo.open(path).open_write(timeout=1)
        w1.write(b"1")
        w1.close()
        assert r.read(timeout=1) == b"1"
        with pytest.raises(Timeout):  # w2 still holds it open: no EOF, just no data
            r.read(timeout=0.05)
        w2.write(b"2")
        w2.close()
        assert r.read(timeout=1) == b"2"
        with pytest.raises(ChannelClosed):
            r.read(timeout=1)


def test_write_after_reader_left_is_peer_vanished(path: str) -> None:
    """Writing when every reader has closed raises PeerVanished (EPIPE)."""
    with Fifo.create(path) as r:
        r.open_read(nonblocking=True)
        with Fifo.open(path).open_write(nonblocking=True) as w:
            r.close()
            with pytest.raises(PeerVanished):
                w.write(b"x")


def test_capacity_of_a_fifo(path: str) -> None:
    """A FIFO's capacity is a pipe's: read and set through either end."""
    with Fifo.create(path) as f:
        f.open_read(nonblocking=True)
        assert f.capacity == 65536
        assert f.set_capacity(1 << 18) == 1 << 18


def test_wrong_direction_and_no_end_are_unsupported(path: str) -> None:
    """Reading a write end, or doing I/O before open_*(), is io.UnsupportedOperation."""
    with Fifo.create(path) as f:
        with pytest.raises(io.UnsupportedOperation, match="no end open"):
            f.read(timeout=0)
        f.open_read(nonblocking=True)
        with pytest.raises(io.UnsupportedOperation, match="not writing"):
            f.write(b"x")
        with pytest.raises(io.UnsupportedOperation, match="already"):
            f.open_read()
    with pytest.raises(HandleClosed):
        f.read()


def test_bad_names(path: str, tmp_ipc_dir: str) -> None:
    """create on an existing path, open of a missing path or a non-FIFO, an empty path: typed errors."""
    with Fifo.create(path):
        with pytest.raises(FileExistsError):
            Fifo.create(path)
    with pytest.raises(FileNotFoundError):
        Fifo.open(path)
    regular = os.path.join(tmp_ipc_dir, "regular")
    open(regular, "w").close()
    with pytest.raises(InvalidEndpoint, match="regular file"):
        Fifo.open(regular)
    with pytest.raises(InvalidEndpoint):
        Fifo.create("")
    with pytest.raises(TypeError):
        Fifo()  # type: ignore[call-arg]
