"""Signals: scoped handlers, sigqueue payloads through signalfd, select readiness, permissions."""

from __future__ import annotations

import os
import select
import signal
import threading
import time

import pytest

from ipcraft.errors import HandleClosed, Timeout
from ipcraft.primitives.signals import SI_QUEUE, SignalFD, SignalReceiver, sigqueue
from ipcraft.testing import Child, run_in_child

RT = signal.SIGRTMIN + 1


def test_thousand_queued_realtime_signals_arrive_intact_in_order():
    """1000 sigqueue'd real-time signals from another process all arrive, in order, with payloads."""
    with SignalFD([RT]) as sfd:
        parent = os.getpid()

        def send() -> int:
            for i in range(1000):
                sigqueue(parent, RT, i * 7 - 3000)
            return os.getpid()

        sender = run_in_child(send)
        got = []
        while len(got) < 1000:
            got += sfd.recv_many(256, timeout=5)
        assert [g.value for g in got] == [i * 7 - 3000 for i in range(1000)]
        assert {(g.signo, g.pid, g.uid, g.code) for g in got} == {(RT, sender, os.getuid(), SI_QUEUE)}
        with pytest.raises(Timeout):
            sfd.recv(timeout=0.05)


def test_signalfd_readable_in_select():
    """A pending signal makes the signalfd readable in select; reading it clears that."""
    with SignalFD([signal.SIGUSR2]) as sfd:
        assert select.select([sfd], [], [], 0)[0] == []
        os.kill(os.getpid(), signal.SIGUSR2)
        assert select.select([sfd], [], [], 5)[0] == [sfd]
        info = sfd.recv(timeout=0)
        assert (info.signo, info.pid) == (signal.SIGUSR2, os.getpid())
        assert select.select([sfd], [], [], 0)[0] == []


def test_signalfd_close_restores_the_mask():
    """Closing a SignalFD unblocks what it blocked, discarding what was still pending."""
    assert signal.SIGUSR2 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    sfd = SignalFD([signal.SIGUSR2])
    assert signal.SIGUSR2 in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    os.kill(os.getpid(), signal.SIGUSR2)  # pending; close() must not let it kill us
    sfd.close()
    assert signal.SIGUSR2 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with pytest.raises(HandleClosed):
        sfd.recv()


def test_receiver_restores_handlers_after_the_scope():
    """SignalReceiver installs its handlers for the block and puts the previous ones back."""
    def previous(signum, frame) -> None:
        pass

    old = signal.signal(signal.SIGUSR1, previous)
    try:
        with SignalReceiver([signal.SIGUSR1, signal.SIGHUP]):
            assert signal.getsignal(signal.SIGUSR1) is not previous
        assert signal.getsignal(signal.SIGUSR1) is previous
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_receiver_waits_with_timeout_for_another_process():
    """recv() times out with nothing pending, then returns a signal another process sent."""
    with SignalReceiver([signal.SIGUSR1]) as rx:
        start = time.monotonic()
        with pytest.raises(Timeout):
            rx.recv(timeout=0.2)
        assert time.monotonic() - start >= 0.2
        parent = os.getpid()
        child = Child(lambda: os.kill(parent, signal.SIGUSR1))
        assert rx.recv(timeout=5) == signal.SIGUSR1
        child.result(timeout=5)


def test_receiver_recv_from_another_thread():
    """A thread other than main can wait in recv(); the handler running in main wakes it."""
    with SignalReceiver([signal.SIGUSR1]) as rx:
        got = []
        t = threading.Thread(target=lambda: got.append(rx.recv(timeout=5)))
        t.start()
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)
        t.join()
        assert got == [signal.SIGUSR1]


def test_receiver_only_in_main_thread():
    """Creating a SignalReceiver off the main thread is a ValueError that installs nothing."""
    errors = []

    def make() -> None:
        try:
            SignalReceiver([signal.SIGUSR1])
        except ValueError as exc:
            errors.append(exc)

    t = threading.Thread(target=make)
    t.start()
    t.join()
    assert errors and "main thread" in str(errors[0])


def test_sigqueue_errors():
    """Bad payloads, dead pids and other users' processes give clear typed errors."""
    with pytest.raises(ValueError):
        sigqueue(os.getpid(), RT, 2**31)
    child = Child(lambda: None)
    child.result(timeout=5)
    with pytest.raises(ProcessLookupError):
        sigqueue(child.pid, RT, 1)
    with pytest.raises(ValueError):
        SignalFD([signal.SIGKILL])
    parent = os.getpid()

    def as_nobody() -> str:
        os.setgid(65534)
        os.setuid(65534)
        try:
            sigqueue(parent, RT, 1)
        except PermissionError:
            return "refused"
        return "sent"

    with SignalFD([RT]):  # had it been sent, it would wait here instead of killing the test run
        assert run_in_child(as_nobody) == "refused"
