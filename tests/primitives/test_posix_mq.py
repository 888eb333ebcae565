"""PosixMessageQueue against the real kernel, with real second processes."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import threading
import time

import pytest

from ipcraft.errors import Busy, InvalidEndpoint, LimitExceeded, MessageTooLarge
from ipcraft.primitives.posix_mq import PRIORITY_MAX, PosixMessageQueue, unlink_message_queue
from ipcraft.testing import Child, run_in_child, unique_name

NOBODY = 65534


def _exists(name: str) -> bool:
    try:
        PosixMessageQueue.open(name).close()
    except FileNotFoundError:
        return False
    return True


@pytest.fixture()
def name():
    """A fresh queue name; fails the test if a queue of that name outlives it (/dev/mqueue is not
    always mounted, so the session leak check cannot be relied on for POSIX queues)."""
    n = "/" + unique_name("mq")
    yield n
    if _exists(n):
        unlink_message_queue(n)
        pytest.fail(f"POSIX message queue {n} leaked")


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def test_create_facts_and_repr(name):
    """create() makes an owner-only queue with the asked sizes, and its repr names them."""
    with PosixMessageQueue.create(name, maxmsg=4, msgsize=256) as q:
        assert (q.name, q.maxmsg, q.msgsize, q.owner, q.mode) == (name, 4, 256, True, 0o600)
        assert q.current_messages == 0
        assert repr(q) == f"<PosixMessageQueue {name!r} maxmsg=4 msgsize=256 owner open>"
    assert repr(q).endswith("closed>") and " owner" not in repr(q)


def test_release_ownership_and_unlink_on_close(name):
    """release_ownership() and unlink_on_close=False both keep the name after close()."""
    q = PosixMessageQueue.create(name, maxmsg=1, msgsize=8)
    q.unlink_on_close = False
    q.close()
    assert _exists(name)
    q = PosixMessageQueue.open(name)
    q.close()
    q2 = PosixMessageQueue.open_or_create(name)
    assert not q2.owner
    q2.unlink()
    assert not _exists(name)
    q2.close()
    q3 = PosixMessageQueue.create(name, maxmsg=1, msgsize=8)
    q3.release_ownership()
    q3.close()
    assert _exists(name)
    unlink_message_queue(name)


def test_open_or_create_owns_only_what_it_created(name):
    """open_or_create() owns a queue it created, not one it opened; explicit sizes must match."""
    with PosixMessageQueue.open_or_create(name, maxmsg=3, msgsize=32) as first:
        assert first.owner
        with PosixMessageQueue.open_or_create(name, maxmsg=3, msgsize=32) as second:
            assert not second.owner
        with pytest.raises(FileExistsError, match="maxmsg=3 msgsize=32"):
            PosixMessageQueue.open_or_create(name, msgsize=64)


@pytest.mark.parametrize("bad", ["", "/", "a/b", "..", "x" * 256, "a\0b"])
def test_bad_names_are_refused_before_the_kernel(bad):
    """Malformed names raise InvalidEndpoint naming the problem."""
    with pytest.raises(InvalidEndpoint):
        PosixMessageQueue.create(bad)


def test_priorities_order_delivery_across_processes(name):
    """A child's messages arrive highest priority first, oldest first within a priority."""
    with PosixMessageQueue.create(name, maxmsg=8, msgsize=64) as q:
        def sender() -> None:
            with PosixMessageQueue.open(name) as c:
                for data, prio in ((b"a", 1), (b"b", 5), (b"c", 3), (b"d", 5), (b"e", PRIORITY_MAX)):
                    c.send(data, prio)
        run_in_child(sender, timeout=10)
        got = [q.recv(timeout=5) for _ in range(5)]
    assert got == [(b"e", PRIORITY_MAX), (b"b", 5), (b"d", 5), (b"c", 3), (b"a", 1)]


def test_epoll_reports_readiness_when_another_process_sends(name):
    """fileno() works with epoll: readable once a child sends, not before, not after recv."""
    with PosixMessageQueue.create(name, maxmsg=2, msgsize=16) as q:
        ep = select.epoll()
        try:
            ep.register(q.fileno(), select.EPOLLIN)
            assert ep.poll(0) == []

            def sender() -> None:
                with PosixMessageQueue.open(name) as c:
                    c.send(b"ping", 2)
            run_in_child(sender, timeout=10)
            assert ep.poll(5) == [(q.fileno(), select.EPOLLIN)]
            assert q.recv(timeout=0) == (b"ping", 2)
            assert ep.poll(0) == []
        finally:
            ep.close()
        r, _, _ = select.select([q], [], [], 0)
        assert r == []


def test_notification_callback_runs_when_a_message_arrives(name):
    """A registered callback runs (in a new thread) when a child's message lands in the empty queue."""
    with PosixMessageQueue.create(name, maxmsg=2, msgsize=16) as q:
        fired = threading.Event()
        q.request_notification(fired.set)

        def sender() -> None:
            with PosixMessageQueue.open(name) as c:
                c.send(b"hello")
        run_in_child(sender, timeout=10)
        assert fired.wait(5)
        assert q.recv(timeout=0) == (b"hello", 0)


def test_notification_callback_errors_reach_unraisablehook(name, monkeypatch):
    """An exception in a notification callback is reported through sys.unraisablehook."""
    reported = threading.Event()
    seen: list[object] = []
    monkeypatch.setattr("sys.unraisablehook", lambda args: (seen.append(args.exc_value), reported.set()))

    def broken() -> None:
        raise RuntimeError("callback failed")
    with PosixMessageQueue.create(name, maxmsg=2, msgsize=16) as q:
        q.request_notification(broken)
        with PosixMessageQueue.open(name) as other:
            other.send(b"x")
        assert reported.wait(5)
    assert [str(e) for e in seen] == ["callback failed"]


def test_notification_by_signal(name):
    """request_notification(signal=) makes the kernel signal this process when a message arrives."""
    got: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    try:
        with PosixMessageQueue.create(name, maxmsg=2, msgsize=16) as q:
            q.request_notification(signal=signal.SIGUSR1)

            def sender() -> None:
                with PosixMessageQueue.open(name) as c:
                    c.send(b"hello")
            run_in_child(sender, timeout=10)
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                time.sleep(0.01)
            assert got == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_notification_is_exclusive_and_cancellable(name):
    """A second process cannot register while one is (Busy); after cancelling it can."""
    with PosixMessageQueue.create(name, maxmsg=2, msgsize=16) as q:
        q.request_notification(lambda: None)

        def register() -> str:
            with PosixMessageQueue.open(name) as c:
                try:
                    c.request_notification(signal=signal.SIGUSR2)
                except Busy:
                    return "busy"
                c.request_notification()
                return "registered"
        assert run_in_child(register, timeout=10) == "busy"
        q.request_notification()
        assert run_in_child(register, timeout=10) == "registered"
        with pytest.raises(ValueError):
            q.request_notification(lambda: None, signal=signal.SIGUSR1)


def test_unlink_while_a_process_waits_does_not_wake_it(name):
    """Unlinking the name leaves the queue working for a waiting child (kernel semantics): a message
    sent through an open handle still reaches it, and new opens fail."""
    q = PosixMessageQueue.create(name, maxmsg=2, msgsize=16)
    try:
        def waiter() -> tuple[bytes, int]:
            with PosixMessageQueue.open(name) as c:
                os.write(w, b"r")
                return c.recv(timeout=10)
        r, w = os.pipe()
        child = Child(waiter)
        os.close(w)
        assert select.select([r], [], [], 10)[0]
        os.close(r)
        q.unlink()
        assert not q.owner and not _exists(name)
        q.send(b"after", 1)
        assert child.result(timeout=15) == (b"after", 1)
    finally:
        q.close()


def test_message_larger_than_msgsize(name):
    """A message over msgsize is MessageTooLarge naming the size, msgsize and the system knob."""
    with PosixMessageQueue.create(name, maxmsg=1, msgsize=100) as q:
        with pytest.raises(MessageTooLarge) as exc:
            q.send(b"x" * 101)
        assert (exc.value.size, exc.value.limit) == (101, 100)
        assert "msgsize 100" in str(exc.value) and "/proc/sys/fs/mqueue/msgsize_max" in str(exc.value)
        q.send(b"x" * 100)  # still usable
        with pytest.raises(ValueError):
            q.send(b"", priority=PRIORITY_MAX + 1)


def test_sizes_above_the_system_maximum_name_the_knob(name):
    """Without CAP_SYS_RESOURCE, maxmsg above msg_max is LimitExceeded naming msg_max."""
    def create_too_big() -> str:
        _drop_to_nobody()
        try:
            PosixMessageQueue.create(name, maxmsg=100000, msgsize=8).close()
        except LimitExceeded as exc:
            return str(exc)
        return "created"
    text = run_in_child(create_too_big, timeout=10)
    assert "/proc/sys/fs/mqueue/msg_max" in text and "maxmsg=100000" in text


def test_rlimit_msgqueue_exhausted_is_limit_exceeded(name):
    """A queue that does not fit RLIMIT_MSGQUEUE is LimitExceeded naming that rlimit."""
    def create_over_rlimit() -> tuple[int, str]:
        import resource
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, (1024, 1024))
        try:
            PosixMessageQueue.create(name, maxmsg=4, msgsize=4096).close()
        except LimitExceeded as exc:
            return exc.errno, str(exc)
        return 0, "created"
    err, text = run_in_child(create_over_rlimit, timeout=10)
    assert err == errno.EMFILE and "RLIMIT_MSGQUEUE" in text


def _unshare_ipc() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x08000000) != 0:  # CLONE_NEWIPC
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWIPC)")


def test_out_of_queues_is_limit_exceeded_naming_queues_max():
    """When queues_max queues exist, create() is LimitExceeded naming queues_max (in a private IPC
    namespace, so the machine's real limit is not touched)."""
    def exhaust() -> str:
        _unshare_ipc()
        with open("/proc/sys/fs/mqueue/queues_max", "w") as f:
            f.write("1")
        _drop_to_nobody()  # root (CAP_SYS_RESOURCE) may exceed queues_max
        first = PosixMessageQueue.create("/first", maxmsg=1, msgsize=8)
        try:
            PosixMessageQueue.create("/second", maxmsg=1, msgsize=8).close()
        except LimitExceeded as exc:
            return str(exc)
        finally:
            first.close()
        return "created"
    assert "/proc/sys/fs/mqueue/queues_max = 1" in run_in_child(exhaust, timeout=10)
