"""SharedMutex and SharedCondition across real processes: exclusion, owner death, timeouts, Ctrl-C."""

from __future__ import annotations

import errno
import mmap
import threading
import time

import pytest

from ipcraft.errors import HandleClosed, OwnerDied, ProtocolError, Timeout
from ipcraft.primitives.sync import SharedCondition, SharedMutex
from ipcraft.testing import Child, run_in_child

from ._lockcheck import ROUNDS, Holder, count_in_two_processes, interrupted, with_statement


def _locked(shm: mmap.mmap) -> SharedMutex:
    return _locked_at(shm, 64)


@pytest.fixture()
def mutex(shm):
    m = SharedMutex.create(shm, 64)
    yield m
    m.close()


def test_two_processes_increment_exactly(shm, mutex):
    """Two processes incrementing a shared counter 10,000 times each under `with mutex:` end exact."""
    total = count_in_two_processes(lambda: SharedMutex.open(shm, 64), with_statement)
    assert total == 2 * ROUNDS


def test_killed_owner_reported_to_next_acquirer(shm, mutex):
    """A holder killed by SIGKILL: the next acquire gets OwnerDied holding the mutex, within 1 s."""
    with Holder(lambda: _locked(shm)) as holder:
        holder.kill()
        start = time.monotonic()
        with pytest.raises(OwnerDied):
            mutex.acquire(timeout=1)
        assert time.monotonic() - start < 1
    mutex.make_consistent()
    mutex.release()
    mutex.acquire(timeout=1)  # usable again, normally
    mutex.release()


def test_blocked_waiter_woken_by_owner_death(shm, mutex):
    """A waiter already blocked in acquire is woken with OwnerDied when the owner is killed."""
    with Holder(lambda: _locked(shm)) as holder:
        killer = threading.Timer(0.2, holder.kill)
        killer.start()
        start = time.monotonic()
        with pytest.raises(OwnerDied):
            mutex.acquire(timeout=5)
        assert time.monotonic() - start < 1.2
        killer.join()
    mutex.make_consistent()
    mutex.release()


def test_release_without_make_consistent_is_unrecoverable(shm, mutex):
    """Releasing after OwnerDied without make_consistent() makes every later acquire fail clearly."""
    with Holder(lambda: _locked(shm)) as holder:
        holder.kill()
    with pytest.raises(OwnerDied):
        mutex.acquire(timeout=1)
    mutex.release()
    with pytest.raises(OSError) as info:
        mutex.acquire(timeout=1)
    assert info.value.errno == errno.ENOTRECOVERABLE
    assert "make_consistent" in str(info.value)


def test_timeout_honoured(shm, mutex):
    """acquire(timeout) raises Timeout no earlier than the timeout while another process holds it."""
    with Holder(lambda: _locked(shm)):
        start = time.monotonic()
        with pytest.raises(Timeout):
            mutex.acquire(timeout=0.2)
        assert 0.2 <= time.monotonic() - start < 2
        with pytest.raises(Timeout):
            mutex.acquire(timeout=0)


def test_gil_released_while_blocked(shm, mutex):
    """Another thread keeps running while acquire waits for a mutex held by another process."""
    ticks = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.001)

    with Holder(lambda: _locked(shm)):
        t = threading.Thread(target=tick)
        t.start()
        with pytest.raises(Timeout):
            mutex.acquire(timeout=0.3)
        stop.set()
        t.join()
    assert len(ticks) > 10


def test_ctrl_c_interrupts_blocked_acquire(shm, mutex):
    """SIGINT during a blocked acquire raises KeyboardInterrupt without taking the mutex."""
    with mutex:
        assert interrupted(lambda: SharedMutex.open(shm, 64).acquire()) == "interrupted"


def test_with_statement_acquires_and_releases(shm, mutex):
    """`with mutex:` holds the mutex inside the block (another process times out) and frees it after."""
    def try_lock() -> str:
        m = SharedMutex.open(shm, 64)
        try:
            m.acquire(timeout=0)
        except Timeout:
            return "busy"
        m.release()
        return "free"

    with mutex as m:
        assert m is mutex
        assert run_in_child(try_lock) == "busy"
    assert run_in_child(try_lock) == "free"


def test_same_thread_errors_instead_of_deadlocking(mutex):
    """Locking twice in one thread raises EDEADLK; releasing an unheld mutex raises RuntimeError."""
    with pytest.raises(RuntimeError):
        mutex.release()
    with mutex:
        with pytest.raises(OSError) as info:
            mutex.acquire()
        assert info.value.errno == errno.EDEADLK


def test_open_refuses_memory_without_a_mutex(shm):
    """open() on uninitialised memory raises ProtocolError; bad offsets raise ValueError."""
    with pytest.raises(ProtocolError):
        SharedMutex.open(shm, 0)
    with pytest.raises(ValueError):
        SharedMutex.create(shm, 3)
    with pytest.raises(ValueError):
        SharedMutex.create(shm, len(shm) - 8)


def test_close_unpins_and_then_refuses(shm):
    """An open handle pins the mapping; after close() operations raise HandleClosed."""
    m = SharedMutex.create(shm, 0)
    with pytest.raises(BufferError):
        shm.close()
    m.close()
    m.close()  # idempotent
    with pytest.raises(HandleClosed):
        m.acquire()
    with pytest.raises(HandleClosed):
        with m:
            pass


def test_make_consistent_outside_owner_died(mutex):
    """make_consistent() on a healthy mutex is a RuntimeError and changes nothing."""
    with mutex:
        with pytest.raises(RuntimeError):
            mutex.make_consistent()


def _wait_for_byte(shm: mmap.mmap, at: int, value: int, timeout: float | None = 10) -> bool:
    """In a child: open the mutex and condition, and wait until shm[at] == value."""
    m = SharedMutex.open(shm, 64)
    c = SharedCondition.open(shm, 128, m)
    with m:
        return bool(c.wait_for(lambda: shm[at] == value, timeout=timeout))


def _set_and_notify(shm: mmap.mmap, mutex: SharedMutex, cond: SharedCondition, at: int, value: int,
                    waiter: Child) -> bool:
    time.sleep(0.1)
    with mutex:
        shm[at] = value
        cond.notify()
    return bool(waiter.result(timeout=15))


def test_condition_notify_across_processes(shm, mutex):
    """A waiter in another process sees the predicate set and notified by this one."""
    cond = SharedCondition.create(shm, 128, mutex)
    assert _set_and_notify(shm, mutex, cond, 512, 1, Child(_wait_for_byte, shm, 512, 1)) is True
    cond.close()


def test_condition_wait_timeout_keeps_mutex(shm, mutex):
    """wait(timeout) with no notify returns False after the timeout, holding the mutex again."""
    cond = SharedCondition.create(shm, 128, mutex)
    with mutex:
        start = time.monotonic()
        assert cond.wait(0.2) is False
        assert time.monotonic() - start >= 0.2
        with pytest.raises(OSError):  # still held by this thread: relocking is EDEADLK
            mutex.acquire(timeout=0)
    with pytest.raises(RuntimeError):
        cond.wait(0.01)  # not held
    cond.close()


def test_condition_survives_killed_waiter(shm, mutex):
    """A waiter killed inside wait() leaves the condition working for the next waiter."""
    cond = SharedCondition.create(shm, 128, mutex)

    doomed = Child(_wait_for_byte, shm, 600, 7, None)
    time.sleep(0.2)
    doomed.kill()
    doomed.wait()
    assert _set_and_notify(shm, mutex, cond, 600, 7, Child(_wait_for_byte, shm, 600, 7)) is True
    cond.close()


def test_condition_notify_without_waiters(shm, mutex):
    """notify() with nobody waiting wakes nobody and returns 0."""
    cond = SharedCondition.create(shm, 128, mutex)
    assert cond.notify() == 0
    assert cond.notify_all() == 0
    cond.close()
    with pytest.raises(HandleClosed):
        cond.notify()


def test_close_while_another_thread_waits_keeps_memory_mapped():
    """Closing handles while a thread waits keeps the mapping pinned until that wait ends."""
    buf = mmap.mmap(-1, mmap.PAGESIZE, mmap.MAP_SHARED)
    first = SharedMutex.create(buf, 0)
    with Holder(lambda: _locked_at(buf, 0)):
        waiter = SharedMutex.open(buf, 0)
        outcome = []

        def wait() -> None:
            try:
                waiter.acquire(timeout=0.5)
            except Timeout:
                outcome.append("timeout")

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.1)
        first.close()
        waiter.close()
        with pytest.raises(BufferError):
            buf.close()
        t.join()
    assert outcome == ["timeout"]
    buf.close()


def _locked_at(buf: mmap.mmap, offset: int) -> SharedMutex:
    m = SharedMutex.open(buf, offset)
    m.acquire()
    return m
