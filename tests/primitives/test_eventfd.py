"""EventFD: counter and semaphore modes, timeouts, select readiness, use across fork."""

from __future__ import annotations

import select
import time

import pytest

from ipcraft.errors import HandleClosed, Timeout
from ipcraft.primitives.eventfd import EventFD
from ipcraft.testing import Child

from ._lockcheck import ROUNDS, count_in_two_processes


def test_counter_mode_coalesces():
    """In counter mode several sends are read back as one sum, and the counter resets to 0."""
    with EventFD() as efd:
        efd.send(3)
        efd.send(4)
        assert efd.recv() == 7
        with pytest.raises(Timeout):
            efd.recv(timeout=0)


def test_semaphore_mode_counts_down():
    """In semaphore mode each recv takes 1."""
    with EventFD(2, semaphore=True) as efd:
        assert [efd.recv(), efd.recv()] == [1, 1]
        with pytest.raises(Timeout):
            efd.recv(timeout=0)


def test_readable_in_select_and_timeout():
    """The fd is readable in select only while the counter is above 0; recv(timeout) waits that long."""
    with EventFD() as efd:
        assert select.select([efd], [], [], 0)[0] == []
        start = time.monotonic()
        with pytest.raises(Timeout):
            efd.recv(timeout=0.2)
        assert time.monotonic() - start >= 0.2
        efd.send()
        assert select.select([efd], [], [], 0)[0] == [efd]


def test_wakes_a_reader_in_another_process():
    """A child blocked in recv() wakes when the parent sends."""
    with EventFD() as efd:
        child = Child(efd.recv, 10)
        time.sleep(0.1)
        efd.send(5)
        assert child.result(timeout=10) == 5


def test_semaphore_mode_as_a_lock_between_processes():
    """An eventfd in semaphore mode with count 1 excludes: 2 x 10,000 increments end exact."""
    efd = EventFD(1, semaphore=True)

    def critical(_lock, body) -> None:
        efd.recv()
        body()
        efd.send()

    class _Unclosed:
        def close(self) -> None:
            pass

    assert count_in_two_processes(_Unclosed, critical) == 2 * ROUNDS
    efd.close()


def test_full_counter_and_bad_values():
    """A send that would pass 2**64-2 times out; out-of-range values are ValueErrors."""
    with EventFD() as efd:
        efd.send(2**64 - 2)
        with pytest.raises(Timeout):
            efd.send(1, timeout=0.05)
        with pytest.raises(ValueError):
            efd.send(0)
        with pytest.raises(ValueError):
            EventFD(2**32)
    with pytest.raises(HandleClosed):
        efd.recv()
