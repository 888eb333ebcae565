"""FileLock (flock) and RecordLock (fcntl, classic and OFD) with real processes."""

from __future__ import annotations

import errno
import os
import select
import time

import pytest

from ipcraft.errors import HandleClosed, Timeout
from ipcraft.primitives.locks import FileLock, LockHolder, RecordLock
from ipcraft.testing import Child, run_in_child

from ._lockcheck import ROUNDS, Holder, count_in_two_processes, interrupted, with_statement


@pytest.fixture()
def path(tmp_path):
    return str(tmp_path / "lock")


def _try_file(path: str, shared: bool = False) -> str:
    lock = FileLock.open_or_create(path)
    try:
        lock.acquire(timeout=0, shared=shared)
    except Timeout:
        return "busy"
    finally:
        lock.close()
    return "free"


def test_filelock_two_processes_increment_exactly(path):
    """Two processes incrementing 10,000 times each under `with FileLock` end exact."""
    assert count_in_two_processes(lambda: FileLock.open_or_create(path), with_statement) == 2 * ROUNDS


def test_filelock_killed_holder_released_by_kernel(path):
    """flock held by a process killed with SIGKILL is released; the next acquire proceeds within 1 s."""
    lock = FileLock.open_or_create(path)
    with Holder(lambda: _held(FileLock.open_or_create(path))) as holder:
        with pytest.raises(Timeout):
            lock.acquire(timeout=0.1)
        holder.kill()
        start = time.monotonic()
        lock.acquire(timeout=1)
        assert time.monotonic() - start < 1
    lock.close()


def _held(lock):
    lock.acquire()
    return lock


def test_filelock_shared_and_exclusive(path):
    """Shared locks coexist; an exclusive one excludes both kinds; close() drops the lock."""
    reader = FileLock.open_or_create(path, shared=True)
    with reader:
        assert reader.held == "shared"
        assert run_in_child(_try_file, path, True) == "free"
        assert run_in_child(_try_file, path, False) == "busy"
    assert reader.held is None
    writer = FileLock.open_or_create(path)
    writer.acquire()
    assert run_in_child(_try_file, path, True) == "busy"
    writer.close()
    assert run_in_child(_try_file, path, False) == "free"
    reader.close()


def test_filelock_two_handles_in_one_process_exclude(path):
    """flock belongs to the open file description: two handles of one process exclude each other."""
    a, b = FileLock.open_or_create(path), FileLock.open(path)
    with a:
        start = time.monotonic()
        with pytest.raises(Timeout):
            b.acquire(timeout=0.2)
        assert time.monotonic() - start >= 0.2
    with b:
        pass
    a.close()
    b.close()


def test_filelock_errors(path):
    """open() of a missing file, release() when not held, and use after close raise clear errors."""
    with pytest.raises(FileNotFoundError):
        FileLock.open(path)
    lock = FileLock.open_or_create(path)
    with pytest.raises(RuntimeError):
        lock.release()
    lock.close()
    with pytest.raises(HandleClosed):
        lock.acquire()


def test_recordlock_two_processes_increment_exactly(path):
    """Two processes incrementing 10,000 times each under `with RecordLock` end exact."""
    assert count_in_two_processes(lambda: RecordLock.open_or_create(path), with_statement) == 2 * ROUNDS


@pytest.mark.parametrize("ofd", [False, True])
def test_recordlock_killed_holder_released_by_kernel(path, ofd):
    """A record lock held by a process killed with SIGKILL is released within 1 s (classic and OFD)."""
    lock = RecordLock.open_or_create(path, ofd=ofd)
    with Holder(lambda: _held(RecordLock.open_or_create(path, ofd=ofd))) as holder:
        who = lock.holder()
        assert who is not None and who.pid == (-1 if ofd else holder.child.pid)
        holder.kill()
        start = time.monotonic()
        lock.acquire(timeout=1)
        assert time.monotonic() - start < 1
    lock.close()


def test_recordlock_ranges_and_holder(path):
    """Disjoint ranges do not conflict; F_GETLK reports the holder's pid, kind and range."""
    lock = RecordLock.open_or_create(path, start=0, length=10)
    with lock:
        def probe() -> tuple[str, LockHolder | None]:
            other = RecordLock.open(path)
            other.acquire(10, 5, timeout=0)  # disjoint: fine
            try:
                other.acquire(5, 1, timeout=0.1)
                got = "locked"
            except Timeout:
                got = "busy"
            return got, other.holder(5, 1, shared=True)

        got, who = run_in_child(probe)
        assert got == "busy"
        assert who == LockHolder(pid=os.getpid(), shared=False, start=0, length=10)
    assert run_in_child(lambda: RecordLock.open(path).holder()) is None
    lock.close()


def test_recordlock_edeadlk_is_a_clear_error(path):
    """Two processes each waiting for the other's range: the second blocking acquire raises EDEADLK."""
    lock = RecordLock.open_or_create(path)
    lock.acquire(0, 1)
    r, w = os.pipe()

    def child() -> str:
        mine = RecordLock.open(path)
        mine.acquire(1, 1)
        os.write(w, b"x")
        mine.acquire(0, 1)  # blocks until the parent lets byte 0 go
        return "got byte 0"

    c = Child(child)
    assert select.select([r], [], [], 10)[0] and os.read(r, 1) == b"x"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # wait until the child is asleep in F_SETLKW
        with open(f"/proc/{c.pid}/wchan") as f:
            if f.read() not in ("", "0"):
                break
        time.sleep(0.01)
    time.sleep(0.1)
    with pytest.raises(OSError) as info:
        lock.acquire(1, 1)
    assert info.value.errno == errno.EDEADLK
    assert "deadlock" in str(info.value)
    lock.release(0, 1)
    assert c.result(timeout=10) == "got byte 0"
    os.close(r)
    os.close(w)
    lock.close()


def test_ofd_locks_exclude_within_one_process(path):
    """OFD locks belong to the open file description: two handles in one process exclude."""
    a = RecordLock.open_or_create(path, ofd=True)
    b = RecordLock.open(path, ofd=True)
    with a:
        with pytest.raises(Timeout):
            b.acquire(timeout=0.1)
        assert b.holder() == LockHolder(pid=-1, shared=False, start=0, length=0)
    b.acquire(timeout=0)
    b.release()
    a.close()
    b.close()


def test_recordlock_bad_range(path):
    """A negative start or length is a ValueError naming the range."""
    lock = RecordLock.open_or_create(path)
    with pytest.raises(ValueError):
        lock.acquire(-1, 5)
    with pytest.raises(ValueError):
        RecordLock.open(path, length=-2)
    lock.close()


def test_ctrl_c_interrupts_blocked_locks(path):
    """SIGINT ends a blocked FileLock or RecordLock acquire with KeyboardInterrupt."""
    flock, record = FileLock.open_or_create(path), RecordLock.open_or_create(path)
    with flock, record:
        assert interrupted(lambda: FileLock.open(path).acquire()) == "interrupted"
        assert interrupted(lambda: RecordLock.open(path).acquire()) == "interrupted"
    flock.close()
    record.close()
