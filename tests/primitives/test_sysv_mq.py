"""SysVMessageQueue against the real kernel, with real second processes."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import time

import pytest

from ipcraft.errors import LimitExceeded, MessageTooLarge, Timeout
from ipcraft.primitives.sysv_mq import (
    IPC_PRIVATE,
    TYPE_MAX,
    SysVMessageQueue,
    ftok,
    remove_message_queue,
)
from ipcraft.testing import Child, run_in_child, unique_key

NOBODY = 65534


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _exists(key: int) -> bool:
    try:
        SysVMessageQueue.open(key).close()
    except FileNotFoundError:
        return False
    return True


@pytest.fixture()
def key():
    """A fresh key in the session's range (the session leak check also watches it)."""
    k = unique_key()
    yield k
    if _exists(k):
        remove_message_queue(k)
        pytest.fail(f"System V message queue for key {k:#x} leaked")


def test_create_facts_and_repr(key):
    """create() makes an owner-only queue; repr shows key, id, qbytes, owner and state."""
    with SysVMessageQueue.create(key) as q:
        st = q.stat()
        assert (q.key, q.owner, st.mode, st.qnum, st.uid, st.cuid) == (key, True, 0o600, 0, os.geteuid(),
                                                                       os.geteuid())
        assert q.qbytes == st.qbytes > 0
        assert repr(q) == f"<SysVMessageQueue key={key:#010x} id={q.id} qbytes={q.qbytes} owner open>"
    assert repr(q).endswith(" closed>")


def test_owner_removes_on_close_opener_does_not(key):
    """Only the creating handle removes the queue on close; release_ownership() hands that on."""
    owner = SysVMessageQueue.create(key)
    SysVMessageQueue.open(key).close()
    assert _exists(key)
    owner.release_ownership()
    owner.close()
    assert _exists(key)
    again = SysVMessageQueue.open_or_create(key)
    assert not again.owner
    again.remove()
    assert again.closed and not _exists(key)


def test_exclusive_create_missing_open_and_open_or_create(key):
    """create() of an existing key is FileExistsError, open() of a missing one FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        SysVMessageQueue.open(key)
    with SysVMessageQueue.open_or_create(key, qbytes=4096) as q:
        assert q.owner and q.qbytes == 4096
        with pytest.raises(FileExistsError):
            SysVMessageQueue.create(key)
        with pytest.raises(FileExistsError, match="qbytes=4096"):
            SysVMessageQueue.open_or_create(key, qbytes=8192)


def test_ipc_private_always_makes_a_new_queue():
    """IPC_PRIVATE creates a distinct queue each time."""
    with SysVMessageQueue.create(IPC_PRIVATE) as a, SysVMessageQueue.create(IPC_PRIVATE) as b:
        assert a.id != b.id


def test_ftok_matches_the_c_library(tmp_path):
    """ftok() gives the key glibc's ftok(3) gives for the same file and project id."""
    path = tmp_path / "anchor"
    path.write_text("")
    libc = ctypes.CDLL(None)
    libc.ftok.argtypes = (ctypes.c_char_p, ctypes.c_int)
    for proj_id in (1, 7, 200):
        assert ftok(path, proj_id) == libc.ftok(os.fsencode(path), proj_id)
    with pytest.raises(FileNotFoundError):
        ftok(tmp_path / "missing")
    with pytest.raises(ValueError):
        ftok(path, 0)


def test_type_selection_across_processes(key):
    """recv(type=0|n|-n) and except_type select as msgrcv(2) says, among a child's messages."""
    with SysVMessageQueue.create(key) as q:
        def sender() -> None:
            with SysVMessageQueue.open(key) as c:
                for data, t in ((b"a", 3), (b"b", 1), (b"c", 2), (b"d", 5), (b"e", 1), (b"f", 4)):
                    c.send(data, t)
        run_in_child(sender, timeout=10)
        assert q.recv(type=1, timeout=0) == (b"b", 1)          # oldest of type 1
        assert q.recv(type=-2, timeout=0) == (b"e", 1)         # lowest type <= 2
        assert q.recv(type=3, except_type=True, timeout=0) == (b"c", 2)  # oldest not of type 3
        assert q.recv(type=-5, timeout=0) == (b"a", 3)
        assert q.recv(timeout=0) == (b"d", 5)                  # oldest of all
        assert q.recv(type=4, timeout=0) == (b"f", 4)
        with pytest.raises(Timeout):
            q.recv(type=9, timeout=0)
        with pytest.raises(ValueError):
            q.recv(type=0, except_type=True)
        with pytest.raises(ValueError):
            q.send(b"x", type=0)
        with pytest.raises(ValueError):
            q.send(b"x", type=TYPE_MAX + 1)


def test_truncation_only_when_asked(key):
    """A message longer than max_size raises and stays queued; truncate=True takes its head."""
    with SysVMessageQueue.create(key) as q:
        q.send(b"0123456789", 2)
        with pytest.raises(MessageTooLarge, match="stays in the queue") as exc:
            q.recv(max_size=4, timeout=0)
        assert exc.value.limit == 4
        assert q.current_messages == 1
        assert q.recv(max_size=4, truncate=True, timeout=0) == (b"0123", 2)
        assert q.current_messages == 0


def test_a_polled_receive_ends_on_time_and_cheaply(key):
    """recv(timeout=0.5), which polls, raises Timeout no earlier than 0.5 s and not much later, and
    spends little CPU (bounded loosely here; benchmarks/mq_overhead.py --poll-cost measures it)."""
    with SysVMessageQueue.create(key):
        def waiter() -> tuple[float, float]:
            with SysVMessageQueue.open(key) as c:
                t0, c0 = time.monotonic(), time.process_time()
                with pytest.raises(Timeout):
                    c.recv(timeout=0.5)
                return time.monotonic() - t0, time.process_time() - c0
        waited, cpu = run_in_child(waiter, timeout=10)
    assert 0.5 <= waited < 1.5
    assert cpu < 0.25  # generous: 0.008-0.014 s (1.5-2.8 % of the 0.5 s) measured


def test_a_timed_receive_takes_a_message_that_arrives_while_waiting(key):
    """A message sent during a timed wait is received, not lost to the polling."""
    with SysVMessageQueue.create(key) as q:
        def late_sender() -> None:
            time.sleep(0.2)
            with SysVMessageQueue.open(key) as c:
                c.send(b"late", 7)
        child = Child(late_sender)
        assert q.recv(timeout=10) == (b"late", 7)
        child.result(timeout=10)


def test_queue_removed_while_a_process_waits(key):
    """Removing the queue wakes a child blocked in recv() with EIDRM at once (no hang)."""
    q = SysVMessageQueue.create(key)

    def waiter() -> tuple[str, int | None]:
        with SysVMessageQueue.open(key) as c:
            os.write(w, b"r")
            try:
                c.recv()
            except OSError as exc:
                return type(exc).__name__, exc.errno
            return "received", None
    r, w = os.pipe()
    child = Child(waiter)
    os.close(w)
    assert select.select([r], [], [], 10)[0]
    os.close(r)
    time.sleep(0.1)  # let the child block in msgrcv
    q.remove()
    assert child.result(timeout=10) == ("OSError", errno.EIDRM)


def test_only_the_owner_may_change_qbytes_or_remove(key):
    """Another uid with read/write access still may not set qbytes or remove (PermissionError)."""
    with SysVMessageQueue.create(key, mode=0o666) as q:
        def other() -> list[str]:
            _drop_to_nobody()
            out = []
            with SysVMessageQueue.open(key) as c:
                c.send(b"hi")
                for op in (lambda: setattr(c, "qbytes", 100), c.remove):
                    try:
                        op()
                        out.append("done")
                    except PermissionError:
                        out.append("denied")
            return out
        assert run_in_child(other, timeout=10) == ["denied", "denied"]
        assert q.recv(timeout=0) == (b"hi", 1)


def test_stat_reports_the_last_sender_and_receiver(key):
    """stat() shows qnum, and the pids and times of the last msgsnd and msgrcv."""
    with SysVMessageQueue.create(key) as q:
        def sender() -> int:
            with SysVMessageQueue.open(key) as c:
                c.send(b"one")
                c.send(b"two")
            return os.getpid()
        before = int(time.time())
        pid = run_in_child(sender, timeout=10)
        st = q.stat()
        assert (st.qnum, st.lspid, st.lrpid, st.rtime) == (2, pid, 0, 0)
        assert st.stime >= before
        q.recv(timeout=0)
        st = q.stat()
        assert (st.qnum, st.lrpid) == (1, os.getpid()) and st.rtime >= before


def test_setting_qbytes(key):
    """Setting qbytes changes the queue's byte limit (and the largest message send() takes)."""
    with SysVMessageQueue.create(key) as q:
        q.qbytes = 100
        assert q.qbytes == q.stat().qbytes == 100
        with pytest.raises(MessageTooLarge, match="qbytes") as exc:
            q.send(b"x" * 101)
        assert exc.value.limit == 100
        with pytest.raises(ValueError):
            q.qbytes = 0


def test_qbytes_above_msgmnb_needs_privilege_and_leaves_nothing(key):
    """create(qbytes > msgmnb) without CAP_SYS_RESOURCE is PermissionError naming msgmnb, and the
    half-made queue is removed."""
    def create_big() -> str:
        _drop_to_nobody()
        with open("/proc/sys/kernel/msgmnb") as f:
            msgmnb = int(f.read())
        try:
            SysVMessageQueue.create(key, qbytes=msgmnb + 1).close()
        except PermissionError as exc:
            return str(exc)
        return "created"
    assert "/proc/sys/kernel/msgmnb" in run_in_child(create_big, timeout=10)
    assert not _exists(key)


def test_message_larger_than_msgmax(key):
    """A message over msgmax is MessageTooLarge naming the size and /proc/sys/kernel/msgmax."""
    with open("/proc/sys/kernel/msgmax") as f:
        msgmax = int(f.read())
    with SysVMessageQueue.create(key) as q:
        if q.qbytes < msgmax:
            pytest.skip("msgmnb < msgmax on this machine")
        q.send(b"x" * msgmax)  # sysv_ipc's own 2048-byte default does not apply
        assert q.recv(timeout=0)[0] == b"x" * msgmax
        with pytest.raises(MessageTooLarge, match="/proc/sys/kernel/msgmax") as exc:
            q.send(b"x" * (msgmax + 1))
        assert (exc.value.size, exc.value.limit) == (msgmax + 1, msgmax)


def test_out_of_queues_is_limit_exceeded_naming_msgmni():
    """When msgmni queues exist, create() is LimitExceeded naming msgmni (in a private IPC
    namespace, so the machine's real limit is not touched)."""
    def exhaust() -> str:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x08000000) != 0:  # CLONE_NEWIPC
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWIPC)")
        with open("/proc/sys/kernel/msgmni", "w") as f:
            f.write("1")
        first = SysVMessageQueue.create(IPC_PRIVATE)
        try:
            SysVMessageQueue.create(IPC_PRIVATE).close()
        except LimitExceeded as exc:
            return f"{exc.errno} {exc}"
        finally:
            first.close()
        return "created"
    text = run_in_child(exhaust, timeout=10)
    assert text.startswith(f"{errno.ENOSPC} ") and "/proc/sys/kernel/msgmni = 1" in text
