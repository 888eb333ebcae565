"""Behaviour both message-queue primitives share, run over each (iceoryx2-style parametrization).

The facility-specific behaviour (priorities, notification, epoll; types, stat, qbytes) is tested in
test_posix_mq.py and test_sysv_mq.py.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ipcraft.errors import HandleClosed, Timeout
from ipcraft.primitives.posix_mq import PosixMessageQueue, unlink_message_queue
from ipcraft.primitives.sysv_mq import SysVMessageQueue, remove_message_queue
from ipcraft.testing import Child, run_in_child, unique_key, unique_name

NOBODY = 65534
#: Every queue here is full after two of these (POSIX: maxmsg=2; System V: qbytes=64).
CHUNK = b"x" * 32


class Kind:
    """How to make, open and forget one queue of a facility, by address."""

    def __init__(self, cls: Any, new_address: Any, small: dict[str, int], forget: Any) -> None:
        self.cls, self.new_address, self.small, self.forget = cls, new_address, small, forget

    def create(self, address: Any) -> Any:
        return self.cls.create(address, **self.small)

    def open(self, address: Any) -> Any:
        return self.cls.open(address)

    def exists(self, address: Any) -> bool:
        try:
            self.open(address).close()
        except FileNotFoundError:
            return False
        return True


KINDS = {
    "posix": Kind(PosixMessageQueue, lambda: "/" + unique_name("mq"), {"maxmsg": 2, "msgsize": 32},
                  unlink_message_queue),
    "sysv": Kind(SysVMessageQueue, unique_key, {"qbytes": 64}, remove_message_queue),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request) -> Kind:
    return KINDS[request.param]


@pytest.fixture()
def address(kind: Kind) -> Iterator[Any]:
    """A fresh address; fails the test if a queue there outlives it."""
    a = kind.new_address()
    yield a
    if kind.exists(a):
        kind.forget(a)
        pytest.fail(f"the queue at {a!r} leaked")


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def test_owner_removes_on_close_opener_does_not(kind, address):
    """Only the creating handle removes the queue on close; an opener's close leaves it."""
    owner = kind.create(address)
    opener = kind.open(address)
    assert owner.owner and not opener.owner
    opener.close()
    assert kind.exists(address)
    owner.close()
    assert not kind.exists(address)


def test_a_forked_copy_of_the_owner_never_removes(kind, address):
    """A child's copy of the owner handle is not the owner: its close() leaves the queue."""
    with kind.create(address) as owner:
        def child_closes() -> bool:
            was_owner = owner.owner
            owner.close()
            return was_owner
        assert run_in_child(child_closes, timeout=10) is False
        assert kind.exists(address) and owner.owner
    assert not kind.exists(address)


def test_exclusive_create_and_missing_open(kind, address):
    """create() of an existing queue is FileExistsError, open() of a missing one FileNotFoundError."""
    with pytest.raises(FileNotFoundError) as missing:
        kind.open(address)
    assert missing.value.errno == errno.ENOENT
    with kind.create(address):
        with pytest.raises(FileExistsError) as exists:
            kind.create(address)
        assert exists.value.errno == errno.EEXIST


def test_use_after_close_is_handle_closed(kind, address):
    """Every operation on a closed handle raises HandleClosed; close() is idempotent."""
    q = kind.create(address)
    q.close()
    q.close()
    for op in (lambda: q.send(b"x"), q.recv, lambda: q.current_messages):
        with pytest.raises(HandleClosed):
            op()


def test_sender_blocks_while_full_then_proceeds(kind, address):
    """A sender waits while the queue is full, and goes on once the receiver drains a message."""
    with kind.create(address) as q:
        def sender() -> float:
            with kind.open(address) as c:
                c.send(CHUNK)
                c.send(CHUNK)
                t0 = time.monotonic()
                c.send(b"last")  # blocks: the queue is full
                return time.monotonic() - t0
        child = Child(sender)
        deadline = time.monotonic() + 5
        while q.current_messages < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert q.current_messages == 2
        assert q.recv(timeout=5)[0] == CHUNK
        assert child.result(timeout=10) >= 0.25
        assert [q.recv(timeout=5)[0] for _ in range(2)] == [CHUNK, b"last"]


def test_timeouts_on_send_and_receive(kind, address):
    """recv on an empty queue and send on a full one raise Timeout no earlier than asked (and not
    much later); timeout=0 never waits; the queue stays usable."""
    with kind.create(address) as q:
        def waiter() -> tuple[float, float]:
            with kind.open(address) as c:
                t0 = time.monotonic()
                with pytest.raises(Timeout):
                    c.recv(timeout=0.3)
                recv_waited = time.monotonic() - t0
                c.send(CHUNK)
                c.send(CHUNK)
                t0 = time.monotonic()
                with pytest.raises(Timeout):
                    c.send(b"more", timeout=0.2)
                return recv_waited, time.monotonic() - t0
        recv_waited, send_waited = run_in_child(waiter, timeout=10)
        assert 0.3 <= recv_waited < 3 and 0.2 <= send_waited < 3
        with pytest.raises(Timeout):
            q.send(b"more", timeout=0)
        assert q.recv(timeout=0)[0] == CHUNK


def test_another_uid_is_denied(kind, address):
    """A child running as nobody cannot open an owner-only queue (PermissionError, EACCES)."""
    with kind.create(address):
        def intruder() -> tuple[str, int]:
            _drop_to_nobody()
            try:
                kind.open(address)
            except PermissionError as exc:
                return type(exc).__name__, exc.errno
            return "opened", 0
        assert run_in_child(intruder, timeout=10) == ("PermissionError", errno.EACCES)


def test_a_signal_does_not_end_a_blocking_receive(kind, address):
    """A signal whose handler returns resumes a blocking recv(); a message sent later arrives."""
    old = signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    try:
        with kind.create(address) as q:
            def send_late() -> None:
                with kind.open(address) as other:
                    other.send(b"late")
            timer = threading.Timer(0.1, signal.pthread_kill, (threading.get_ident(), signal.SIGUSR2))
            late = threading.Timer(0.3, send_late)
            timer.start()
            late.start()
            try:
                assert q.recv()[0] == b"late"
            finally:
                timer.join()
                late.join()
    finally:
        signal.signal(signal.SIGUSR2, old)
