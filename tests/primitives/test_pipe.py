"""Pipe: a one-way byte stream, faithful to pipe(7)."""

from __future__ import annotations

import errno
import os
import select

import pytest

from ipcraft.errors import ChannelClosed, HandleClosed, LimitExceeded, PeerVanished, Timeout
from ipcraft.primitives.pipe import Pipe
from ipcraft.testing import Child, run_in_child


def _drop_to_nobody() -> None:
    os.setgid(65534)
    os.setuid(65534)


def test_write_then_read_returns_the_bytes() -> None:
    """Bytes written come out of the read end, in order; read returns what is there."""
    with Pipe() as p:
        assert p.write(b"hello ") == 6
        p.write(bytearray(b"world"))
        assert p.available == 11
        assert p.read(100, timeout=0) == b"hello world"


def test_read_into_fills_a_buffer() -> None:
    """read_into writes into the caller's buffer and returns the count."""
    with Pipe() as p:
        p.write(b"abc")
        buf = bytearray(8)
        assert p.read_into(buf, timeout=1) == 3
        assert buf[:3] == b"abc"


def test_fds_are_close_on_exec() -> None:
    """Both ends are created with O_CLOEXEC (pipe2)."""
    with Pipe() as p:
        assert not os.get_inheritable(p.read_fd)
        assert not os.get_inheritable(p.write_fd)


def test_pipe_buf_is_selects() -> None:
    """PIPE_BUF is the kernel's atomic-write size, select.PIPE_BUF."""
    assert Pipe.PIPE_BUF == select.PIPE_BUF == 4096


def test_eof_after_every_writer_closes_is_channel_closed() -> None:
    """Once the child's write end and ours are closed, the reader drains, then gets ChannelClosed."""
    with Pipe() as p:
        def child() -> None:
            p.close_read()
            p.write(b"x" * 10_000)

        c = Child(child)
        p.close_write()
        got = bytearray()
        with pytest.raises(ChannelClosed):
            while True:
                got += p.read(timeout=10)
        c.result(10)
        assert got == b"x" * 10_000
        with pytest.raises(ChannelClosed):  # again, and the handle stays open
            p.read(timeout=0)
        assert not p.closed


def test_write_without_reader_is_peer_vanished() -> None:
    """Writing after the read end is closed raises PeerVanished carrying EPIPE."""
    with Pipe() as p:
        p.close_read()
        with pytest.raises(PeerVanished) as info:
            p.write(b"x")
        assert info.value.errno == errno.EPIPE
        assert "read end" in str(info.value)


def test_read_timeout_leaves_pipe_usable() -> None:
    """A read that times out raises Timeout; a later write/read still works."""
    with Pipe() as p:
        with pytest.raises(Timeout):
            p.read(timeout=0.05)
        p.write(b"ok")
        assert p.read(timeout=1) == b"ok"


@pytest.mark.parametrize("blocking", [True, False])
def test_write_timeout_on_full_pipe_reports_bytes_written(blocking: bool) -> None:
    """A write into a full pipe times out with Timeout.written, in blocking and non-blocking mode."""
    with Pipe(blocking=blocking) as p:
        cap = p.capacity
        with pytest.raises(Timeout) as info:
            p.write(b"y" * (cap + 10_000), timeout=0.1)
        assert info.value.written == cap  # type: ignore[attr-defined]
        assert len(p.read(cap * 2, timeout=0)) == cap
        assert os.get_blocking(p.write_fd) is blocking  # ipcraft never flipped the mode


def test_nonblocking_mode_is_the_kernels() -> None:
    """set_blocking(False) sets O_NONBLOCK: a raw read of the empty pipe fails with EAGAIN."""
    with Pipe() as p:
        assert p.blocking
        p.set_blocking(False)
        assert not p.blocking and not os.get_blocking(p.read_fd)
        with pytest.raises(BlockingIOError):
            os.read(p.read_fd, 1)
        with pytest.raises(Timeout):
            p.read(timeout=0)
        p.write(b"z")
        assert p.read(timeout=None) == b"z"


@pytest.mark.timeout(60)
def test_records_of_pipe_buf_bytes_never_interleave() -> None:
    """Several processes writing PIPE_BUF-sized records to one pipe: every record arrives whole."""
    writers, records = 4, 300
    with Pipe() as p:
        def writer(k: int) -> None:
            p.close_read()
            for _i in range(records):
                p.write(bytes([k]) * Pipe.PIPE_BUF)

        children = [Child(writer, k + 1) for k in range(writers)]
        p.close_write()
        data = bytearray()
        try:
            while True:
                data += p.read(1 << 20, timeout=30)
        except ChannelClosed:
            pass
        for c in children:
            c.result(30)
    assert len(data) == writers * records * Pipe.PIPE_BUF
    counts = dict.fromkeys(range(1, writers + 1), 0)
    for off in range(0, len(data), Pipe.PIPE_BUF):
        block = data[off:off + Pipe.PIPE_BUF]
        assert block.count(block[0]) == Pipe.PIPE_BUF, f"record at {off} is interleaved"
        counts[block[0]] += 1
    assert set(counts.values()) == {records}


def test_capacity_get_and_set_rounds_up() -> None:
    """set_capacity asks F_SETPIPE_SZ and returns the granted (power-of-two pages) capacity."""
    with Pipe() as p:
        assert p.capacity == 65536
        assert p.set_capacity(100_000) == 131072 == p.capacity
        with Pipe(capacity=8192) as q:
            assert q.capacity == 8192


def test_shrinking_below_the_content_is_ebusy() -> None:
    """Shrinking a pipe below the data it holds fails with EBUSY, explained; nothing changes."""
    with Pipe() as p:
        p.write(b"d" * 60_000)
        with pytest.raises(OSError) as info:
            p.set_capacity(4096)
        assert info.value.errno == errno.EBUSY
        assert "holds more data" in str(info.value)
        assert p.capacity == 65536 and p.available == 60_000


def test_capacity_above_pipe_max_size_unprivileged_is_limit_exceeded() -> None:
    """As nobody, asking more than /proc/sys/fs/pipe-max-size is LimitExceeded naming that knob."""
    with open("/proc/sys/fs/pipe-max-size") as f:
        top = int(f.read())

    def child() -> tuple[int, str, int]:
        _drop_to_nobody()
        with Pipe() as p:
            try:
                p.set_capacity(top * 2)
            except LimitExceeded as exc:
                return exc.errno, str(exc), p.capacity
        return 0, "", 0

    err, text, cap = run_in_child(child, timeout=10)
    assert err == errno.EPERM
    assert "/proc/sys/fs/pipe-max-size" in text and str(top) in text
    assert cap == 65536


def test_bad_capacity_is_value_error() -> None:
    """A capacity that is not a positive int below 2**31 is refused before the kernel sees it."""
    with Pipe() as p:
        for bad in (0, -1, 2**40, 1.5, True):
            with pytest.raises(ValueError):
                p.set_capacity(bad)  # type: ignore[arg-type]


def test_use_after_close_is_handle_closed() -> None:
    """close() is idempotent; every later use raises HandleClosed; a closed end alone too."""
    p = Pipe()
    p.close_write()
    with pytest.raises(HandleClosed, match="write end"):
        p.write(b"x")
    with pytest.raises(ChannelClosed):  # the read end still works: it reports end of file
        p.read(timeout=0)
    p.close()
    p.close()
    assert p.closed
    for op in (lambda: p.write(b"x"), lambda: p.read(), lambda: p.capacity):
        with pytest.raises(HandleClosed):
            op()
