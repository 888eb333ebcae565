"""fifo://: one reader, many writers, messages never interleaved, writers that vanish mid-message."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import select
import signal
import stat
import struct
import time
from typing import Any

import pytest

import ipcraft
from ipcraft._endpoint import Endpoint
from ipcraft._framing import header
from ipcraft._transports import fifo as fifo_transport
from ipcraft.errors import LimitExceeded, MessageTooLarge, PeerVanished, ProtocolError, Timeout
from ipcraft.testing import Child, unique_name


@pytest.fixture()
def url(tmp_ipc_dir: str) -> str:
    return f"fifo://{tmp_ipc_dir}/{unique_name('q')}"


def _path(url: str) -> str:
    return url.removeprefix("fifo://")


def _write(url: str, items: list[Any], raw: bool = False) -> int:
    with ipcraft.queue(url) as q:
        for item in items:
            q.send_bytes(item) if raw else q.send(item)
    return len(items)


def test_round_trip_from_a_child_writer(url: str) -> None:
    """A child's messages, small and large, arrive whole and in order at the creating reader."""
    with ipcraft.queue(url, create=True) as q:
        assert q.owner and q.authenticated and q.extra("role") == "reader"
        items = [b"", b"x", {"k": list(range(100))}, b"L" * 3_000_000, "end"]
        child = Child(_write, url, items)
        assert [q.recv(timeout=10) for _ in items] == items
        assert child.result(20) == len(items)


def test_empty_messages_between_others_arrive(url: str) -> None:
    """Zero-byte messages (a bare frame header) travel like any other and do not stall the writer."""
    with ipcraft.queue(url, create=True) as q:
        items = [b"", b"a", b"", b"", b"bb" * 5000, b""]
        child = Child(_write, url, items, raw=True)
        assert [q.recv_bytes(timeout=10) for _ in items] == items
        assert child.result(20) == len(items)


def test_fifo_and_lock_file_are_owner_only_and_removed_on_close(url: str) -> None:
    """create makes the FIFO (mode 0600, whatever the umask) and its lock file; close removes both."""
    path = _path(url)
    old = os.umask(0o077)
    try:
        q = ipcraft.queue(url, create=True)
    finally:
        os.umask(old)
    st = os.stat(path)
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path + ".lock").st_mode) == 0o600
    w = ipcraft.queue(url)
    assert not w.owner
    w.close()
    assert os.path.exists(path)
    q.close()
    assert not os.path.exists(path) and not os.path.exists(path + ".lock")


def test_create_is_exclusive_and_if_missing_opens_a_writer(url: str) -> None:
    """create=True on an existing FIFO is FileExistsError; "if_missing" then gives a writer."""
    with ipcraft.queue(url, create="if_missing") as q:
        assert q.owner
        with pytest.raises(FileExistsError):
            ipcraft.queue(url, create=True)
        with ipcraft.queue(url, create="if_missing") as w:
            assert not w.owner
            w.send(7)
        assert q.recv(timeout=5) == 7


def test_opening_with_no_reader_fails_at_once_with_enxio(tmp_ipc_dir: str) -> None:
    """A writer opening a FIFO nobody reads gets OSError ENXIO explaining that no reader has it open."""
    path = os.path.join(tmp_ipc_dir, unique_name("bare"))
    os.mkfifo(path, 0o600)
    with pytest.raises(OSError, match="no process has it open for reading") as info:
        ipcraft.queue(f"fifo://{path}")
    assert info.value.errno == errno.ENXIO
    os.unlink(path)


def test_opening_a_missing_queue_is_file_not_found(url: str) -> None:
    """Opening a fifo:// queue that does not exist raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        ipcraft.queue(url)


def test_roles_are_one_way(url: str) -> None:
    """The reader cannot send and a writer cannot receive: io.UnsupportedOperation naming the role."""
    with ipcraft.queue(url, create=True) as q, ipcraft.queue(url) as w:
        with pytest.raises(io.UnsupportedOperation, match="only reads"):
            q.send(1)
        with pytest.raises(io.UnsupportedOperation, match="only writes"):
            w.recv(timeout=0)


def test_queue_has_no_end_of_stream_when_writers_leave(url: str) -> None:
    """After every writer closes, recv times out (no EOF, no busy wakeups) and a new writer is heard."""
    with ipcraft.queue(url, create=True) as q:
        _write(url, ["one"])
        assert q.recv(timeout=5) == "one"
        assert not q.poll(0.1)
        with pytest.raises(Timeout):
            q.recv(timeout=0.1)
        _write(url, ["two"])
        assert q.recv(timeout=5) == "two"


# -- many writers ----------------------------------------------------------------------------------

_SIZES = (1 << 20, 100, 4096 - 8 - 48, 4096, 70_000, 1, 300_000)


def _message(wid: int, seq: int) -> bytes:
    size = _SIZES[(wid + seq) % len(_SIZES)]
    body = random.Random(wid * 100_003 + seq).randbytes(size)
    head = struct.pack("<II", wid, seq)
    return head + body + hashlib.sha256(head + body).digest()


def _writer(url: str, wid: int, count: int) -> int:
    with ipcraft.queue(url) as q:
        for seq in range(count):
            q.send_bytes(_message(wid, seq))
    return count


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pipe_size", [None, 4096], ids=["1MiB-pipe", "4KiB-pipe"])
def test_concurrent_writers_of_large_and_small_messages_never_interleave(url: str, pipe_size: int | None) -> None:
    """Four writer processes sending 1 MiB, PIPE_BUF-sized and tiny messages at once: every message
    arrives intact (checksum), once, and in each writer's order."""
    opts = {} if pipe_size is None else {"pipe_size": pipe_size}
    writers, count = 4, 24
    with ipcraft.queue(url, create=True, **opts) as q:
        if pipe_size:
            assert q.extra("pipe_size") == pipe_size
        children = [Child(_writer, url, wid, count) for wid in range(writers)]
        next_seq = [0] * writers
        for _ in range(writers * count):
            data = q.recv_bytes(timeout=30)
            wid, seq = struct.unpack_from("<II", data)
            assert hashlib.sha256(data[:-32]).digest() == data[-32:], f"message {wid}/{seq} is corrupt"
            assert data == _message(wid, seq)
            assert seq == next_seq[wid]
            next_seq[wid] += 1
        assert [c.result(30) for c in children] == [count] * writers
        with pytest.raises(Timeout):
            q.recv_bytes(timeout=0.1)


# -- writers that stop mid-message ----------------------------------------------------------------

_HUGE = 16 * 1024 * 1024


def _write_huge(url: str, timeout: float | None = None) -> str:
    with ipcraft.queue(url) as q:
        try:
            q.send_bytes(b"\xee" * _HUGE, timeout=timeout)  # blocks: the pipe holds 1 MiB
        except Timeout as exc:
            return f"Timeout: {exc}"
    return "sent"


def _wait_until_mid_frame(q: Any) -> None:
    assert select.select([q], [], [], 10)[0]  # part of the huge frame is in the pipe
    time.sleep(0.1)


@pytest.mark.timeout(30)
def test_writer_killed_mid_message_raises_peer_vanished_without_hanging(url: str) -> None:
    """A writer SIGKILLed in the middle of a message (no other writer left) makes recv raise
    PeerVanished promptly: the partial message is discarded, nothing hangs."""
    with ipcraft.queue(url, create=True) as q:
        child = Child(_write_huge, url)
        _wait_until_mid_frame(q)
        child.kill(signal.SIGKILL)
        child.wait()
        with pytest.raises(PeerVanished, match="stopped in the middle of a message"):
            q.recv_bytes(timeout=20)
        # A queue has no end of stream: the next writer's message still arrives on the same handle.
        assert Child(_write, url, [b"after the crash"], raw=True).result(20) == 1
        assert q.recv_bytes(timeout=20) == b"after the crash"


def _reader(url: str, **opts: Any) -> fifo_transport.FifoReader:
    return fifo_transport.open_queue(Endpoint.parse(url, **opts), True)  # type: ignore[return-value]


def _recv(t: Any, timeout: float = 20) -> bytes:
    return bytes(t.recv_message(time.monotonic() + timeout).payload)


@pytest.mark.timeout(30)
def test_reader_stays_usable_after_a_writer_vanishes_and_the_next_writer_is_never_spliced(url: str) -> None:
    """A writer killed mid-message while another waits to write: the reader gets PeerVanished for the
    partial message, then the waiting writer's message intact; the queue (transport) stays usable."""
    t = _reader(url)
    try:
        victim = Child(_write_huge, url)
        assert t.wait_readable(time.monotonic() + 10)
        time.sleep(0.1)
        follower = Child(_write, url, [b"after the crash"], raw=True)
        time.sleep(0.2)  # the follower is now waiting for the writers' lock
        victim.kill(signal.SIGKILL)
        victim.wait()
        with pytest.raises(PeerVanished):
            _recv(t)
        assert _recv(t) == b"after the crash"
        assert follower.result(20) == 1
        assert Child(_write, url, [b"and later"], raw=True).result(20) == 1
        assert _recv(t) == b"and later"
    finally:
        t.close()


@pytest.mark.timeout(30)
def test_writer_timing_out_mid_message_costs_only_its_own_message(url: str) -> None:
    """A writer whose send times out mid-message (its queue is then closed) leaves a partial message that
    the reader discards with PeerVanished; the next message arrives intact."""
    t = _reader(url)
    try:
        result = Child(_write_huge, url, 0.3).result(20)
        assert result.startswith("Timeout") and "closed" in result
        with pytest.raises(PeerVanished):
            _recv(t)
        assert Child(_write, url, [b"next"], raw=True).result(20) == 1
        assert _recv(t) == b"next"
    finally:
        t.close()


# -- bad input ------------------------------------------------------------------------------------

def test_oversized_message_is_refused_and_skipped(url: str) -> None:
    """A message over the reader's max_message_size raises MessageTooLarge, is skipped as it arrives,
    and the next message is received."""
    with ipcraft.queue(url, create=True, max_message_size=100_000) as q:
        child = Child(_write, url, [b"z" * 500_000, b"small"], raw=True)
        with pytest.raises(MessageTooLarge, match="max_message_size is 100000"):
            q.recv_bytes(timeout=10)
        assert q.recv_bytes(timeout=10) == b"small"
        assert child.result(20) == 2


def test_foreign_bytes_are_a_protocol_error_and_the_queue_resynchronises(url: str) -> None:
    """Bytes that are not a frame (a foreign writer) raise ProtocolError; they are dropped and the
    next ipcraft message is received whole."""
    with ipcraft.queue(url, create=True) as q:
        fd = os.open(_path(url), os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"hello from echo\n")
        os.close(fd)
        with pytest.raises(ProtocolError):
            q.recv_bytes(timeout=5)
        _write(url, [b"clean again"], raw=True)
        assert q.recv_bytes(timeout=5) == b"clean again"


def test_frame_header_from_writer_is_checked_against_the_payload(url: str) -> None:
    """A whole frame written by hand is received like any other (the header format is the channel's)."""
    with ipcraft.queue(url, create=True) as q:
        fd = os.open(_path(url), os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, header(0, 3) + b"abc")
        os.close(fd)
        assert q.recv_bytes(timeout=5) == b"abc"


def _create_as_nobody(url: str, pipe_size: int) -> str:
    os.setgid(65534)
    os.setuid(65534)
    try:
        ipcraft.queue(url, create=True, pipe_size=pipe_size).close()
    except LimitExceeded as exc:
        return f"LimitExceeded errno={exc.errno}: {exc}"
    return "created"


def test_pipe_size_beyond_pipe_max_size_is_limit_exceeded_for_an_unprivileged_user(tmp_ipc_dir: str) -> None:
    """pipe_size= above /proc/sys/fs/pipe-max-size fails with LimitExceeded (EPERM) naming the knob,
    and leaves no FIFO behind."""
    os.chmod(tmp_ipc_dir, 0o777)
    with open("/proc/sys/fs/pipe-max-size") as f:
        too_big = int(f.read()) * 2
    url = f"fifo://{tmp_ipc_dir}/{unique_name('q')}"
    result = Child(_create_as_nobody, url, too_big).result(20)
    assert result.startswith(f"LimitExceeded errno={errno.EPERM}") and "pipe-max-size" in result
    assert os.listdir(tmp_ipc_dir) == []


def test_a_forked_copy_of_the_reader_closing_leaves_the_queue(url: str) -> None:
    """A child that inherited the reading handle and closes it removes neither the FIFO nor its lock file."""
    with ipcraft.queue(url, create=True) as q:
        Child(q.close).result(20)
        assert os.path.exists(_path(url)) and os.path.exists(_path(url) + ".lock")
        _write(url, ["still here"])
        assert q.recv(timeout=5) == "still here"
    assert not os.path.exists(_path(url))


def _write_batches(url: str, tag: int, batches: int) -> int:
    """Batches mixing frames joined into one PIPE_BUF write with frames larger than PIPE_BUF."""
    sent = 0
    with ipcraft.queue(url, serializer="raw") as q:
        for b in range(batches):
            msgs = [bytes([tag]) + struct.pack("<I", b * 100 + i) * (1 + (i * 97) % (3 if i % 9 else 3000))
                    for i in range(40)]
            sent += q.send_many(msgs, timeout=30)
    return sent


def test_batches_from_two_writers_arrive_whole_and_in_order(url: str) -> None:
    """send_many writes a batch under one acquisition of the writers' lock: two writers' batches
    (small frames joined, large ones on their own) are never interleaved or torn, each in order."""
    with ipcraft.queue(url, create=True, serializer="raw") as q:
        writers = [Child(_write_batches, url, tag, 60) for tag in (1, 2)]
        got: dict[int, list[int]] = {1: [], 2: []}
        while sum(len(v) for v in got.values()) < 2 * 60 * 40:
            for msg in q.recv_many(64, timeout=30):
                seq = struct.unpack_from("<I", msg, 1)[0]
                assert msg[1:] == struct.pack("<I", seq) * ((len(msg) - 1) // 4), "a torn message"
                got[msg[0]].append(seq)
        assert [w.result(30) for w in writers] == [60 * 40, 60 * 40]
    for seqs in got.values():
        assert seqs == [b * 100 + i for b in range(60) for i in range(40)]
