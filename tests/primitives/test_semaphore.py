"""PosixSemaphore and SysVSemaphoreSet with real processes: exclusion, death, undo, atomic ops."""

from __future__ import annotations

import errno
import os
import time

import pytest

from ipcraft.errors import HandleClosed, InvalidEndpoint, LimitExceeded, Timeout
from ipcraft.primitives.semaphore import PosixSemaphore, SysVSemaphoreSet
from ipcraft.testing import Child, run_in_child, unique_key, unique_name

from ._lockcheck import ROUNDS, Holder, count_in_two_processes, interrupted, with_statement


@pytest.fixture()
def sem():
    s = PosixSemaphore.create(unique_name("sem"), initial=1)
    yield s
    s.close()


@pytest.fixture()
def sysv():
    s = SysVSemaphoreSet.create(unique_key(), 3, initial=[1, 0, 2])
    yield s
    s.close()


def test_posix_two_processes_increment_exactly(sem):
    """Two processes incrementing 10,000 times each under `with sem:` end exact."""
    assert count_in_two_processes(lambda: PosixSemaphore.open(sem.name), with_statement) == 2 * ROUNDS


def test_posix_owner_unlinks_on_close_opener_does_not():
    """The creator's close() removes /dev/shm/sem.<name>; an opener's close() leaves it."""
    name = unique_name("sem")
    owner = PosixSemaphore.create(name)
    assert os.path.exists(f"/dev/shm/sem.{name}")
    PosixSemaphore.open(name).close()
    assert os.path.exists(f"/dev/shm/sem.{name}")
    owner.close()
    assert not os.path.exists(f"/dev/shm/sem.{name}")
    with pytest.raises(FileNotFoundError):
        PosixSemaphore.open(name)


def test_posix_create_exclusive_and_open_or_create(sem):
    """create() refuses an existing name; open_or_create() opens it without owning it."""
    with pytest.raises(FileExistsError):
        PosixSemaphore.create(sem.name)
    other = PosixSemaphore.open_or_create(sem.name)
    assert not other.owner and other.value == 1
    other.close()


def test_posix_timeout_and_value(sem):
    """acquire(timeout) raises Timeout after the timeout at value 0; release(n) adds n."""
    sem.acquire()
    assert sem.value == 0
    start = time.monotonic()
    with pytest.raises(Timeout):
        sem.acquire(timeout=0.2)
    assert time.monotonic() - start >= 0.2
    with pytest.raises(Timeout):
        sem.acquire(timeout=0)
    sem.release(3)
    assert sem.value == 3


def test_posix_with_statement_acquires_and_releases(sem):
    """`with sem:` takes the count inside the block and gives it back after."""
    with sem as s:
        assert s is sem and sem.value == 0
        assert run_in_child(lambda: _try(PosixSemaphore.open(sem.name))) == "busy"
    assert sem.value == 1


def _try(s: PosixSemaphore | SysVSemaphoreSet) -> str:
    try:
        s.acquire(timeout=0)
    except Timeout:
        return "busy"
    s.release()
    return "free"


def test_posix_killed_holder_keeps_the_count(sem):
    """Documented limit: a POSIX semaphore has no owner, so a killed holder's count is not restored."""
    with Holder(lambda: PosixSemaphore.open(sem.name).acquire() or True) as holder:
        holder.kill()
    with pytest.raises(Timeout):
        sem.acquire(timeout=0.3)
    assert sem.value == 0


def test_posix_bad_names_and_closed():
    """Bad names raise InvalidEndpoint; a closed handle raises HandleClosed."""
    with pytest.raises(InvalidEndpoint):
        PosixSemaphore.create("a/b")
    with pytest.raises(InvalidEndpoint):
        PosixSemaphore.open("x" * 300)
    s = PosixSemaphore.create(unique_name("sem"))
    s.close()
    s.close()
    with pytest.raises(HandleClosed):
        s.acquire()


def test_sysv_two_processes_increment_exactly(sysv):
    """Two processes incrementing 10,000 times each between acquire(0) and release(0) end exact."""
    def critical(s: SysVSemaphoreSet, body) -> None:
        s.acquire(0)
        body()
        s.release(0)

    assert count_in_two_processes(lambda: SysVSemaphoreSet.open(sysv.key), critical) == 2 * ROUNDS


def test_sysv_sem_undo_restores_killed_holders_count(sysv):
    """SEM_UNDO: a holder killed by SIGKILL gets its count back; the next acquire proceeds within 1 s."""
    with Holder(lambda: SysVSemaphoreSet.open(sysv.key).acquire(0) or True) as holder:
        assert sysv.value(0) == 0
        holder.kill()
    start = time.monotonic()
    sysv.acquire(0, timeout=1)
    assert time.monotonic() - start < 1
    sysv.release(0)


def test_sysv_without_undo_keeps_the_count(sysv):
    """undo=False: a process's changes outlive it (producer/consumer counts)."""
    run_in_child(lambda: SysVSemaphoreSet.open(sysv.key, undo=False).release(1, 5))
    assert sysv.value(1) == 5


def test_sysv_apply_is_all_or_nothing(sysv):
    """apply() changes several semaphores at once, or none if one cannot proceed."""
    with pytest.raises(Timeout):
        sysv.apply([(0, -1), (1, -1)], timeout=0.1)
    assert sysv.values() == [1, 0, 2]
    sysv.apply([(0, -1), (2, -2), (1, 3)])
    assert sysv.values() == [0, 3, 0]


def test_sysv_wait_for_zero(sysv):
    """wait_zero() returns once another process brings the value to 0, and times out otherwise."""
    with pytest.raises(Timeout):
        sysv.wait_zero(2, timeout=0.1)

    def waiter() -> str:
        SysVSemaphoreSet.open(sysv.key).wait_zero(2, timeout=10)
        return "zero"

    child = Child(waiter)
    deadline = time.monotonic() + 5
    while sysv.waiters(2)[1] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sysv.waiters(2) == (0, 1)
    sysv.acquire(2, 2, undo=False)
    assert child.result(timeout=10) == "zero"


def test_sysv_timeout_and_last_pid(sysv):
    """acquire(timeout) on a zero value raises Timeout after the timeout; last_pid names the changer."""
    start = time.monotonic()
    with pytest.raises(Timeout):
        sysv.acquire(1, timeout=0.2)
    assert time.monotonic() - start >= 0.2
    sysv.release(1)
    assert sysv.last_pid(1) == os.getpid()


def test_sysv_limits_and_bad_input(sysv):
    """Out-of-range indexes, deltas and values raise clear errors and change nothing."""
    with pytest.raises(IndexError):
        sysv.acquire(3)
    with pytest.raises(ValueError):
        sysv.release(0, 40000)
    sysv.set_value(1, 32767)
    with pytest.raises(LimitExceeded) as info:
        sysv.release(1)
    assert info.value.errno == errno.ERANGE and "SEMVMX" in str(info.value)
    assert sysv.value(1) == 32767
    with pytest.raises(ValueError):
        SysVSemaphoreSet.create(unique_key(), 2, initial=[1])


def test_sysv_owner_removes_on_close_and_waiters_see_eidrm():
    """Removing the set wakes a blocked waiter with EIDRM; the owner's close() removes the set."""
    s = SysVSemaphoreSet.create(unique_key(), 1)

    def waiter() -> int:
        try:
            SysVSemaphoreSet.open(s.key).acquire(timeout=10)
        except OSError as exc:
            return exc.errno or 0
        return 0

    child = Child(waiter)
    deadline = time.monotonic() + 5
    while s.waiters(0)[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    s.close()
    assert child.result(timeout=10) == errno.EIDRM
    with pytest.raises(FileNotFoundError):
        SysVSemaphoreSet.open(s.key)


def test_sysv_other_user_is_refused(sysv):
    """A set created 0600 by root cannot be opened by user nobody."""
    def as_nobody() -> str:
        os.setgid(65534)
        os.setuid(65534)
        try:
            SysVSemaphoreSet.open(sysv.key)
        except PermissionError:
            return "refused"
        return "opened"

    assert run_in_child(as_nobody) == "refused"


def test_ctrl_c_interrupts_blocked_acquires(sem, sysv):
    """SIGINT ends a blocked acquire of either semaphore with KeyboardInterrupt."""
    sem.acquire()
    assert interrupted(lambda: PosixSemaphore.open(sem.name).acquire()) == "interrupted"
    assert interrupted(lambda: SysVSemaphoreSet.open(sysv.key).acquire(1)) == "interrupted"


def test_sysv_too_many_semaphores_names_semmsl():
    """Asking for more semaphores than SEMMSL is LimitExceeded naming /proc/sys/kernel/sem."""
    with open("/proc/sys/kernel/sem") as f:
        semmsl = int(f.read().split()[0])
    with pytest.raises(LimitExceeded) as info:
        SysVSemaphoreSet.create(unique_key(), semmsl + 1)
    assert "SEMMSL" in str(info.value)
