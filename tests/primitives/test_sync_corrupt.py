"""SharedMutex against hostile shared memory and an unrepaired owner death.

A process of the same user can write any byte of a mutex it maps.  Every scribbled word is a
ProtocolError (never an abort, a crash, a bare EINVAL or a hang), and a mutex released after OwnerDied
without make_consistent() refuses everyone with ENOTRECOVERABLE, in this thread, this process and
others.  Each scenario that could crash runs in a forked child, whose death would fail the test.
"""

from __future__ import annotations

import errno
import mmap
import random
import time
from typing import Any

import pytest

from ipcraft.errors import IPCError, OwnerDied
from ipcraft.primitives.sync import SharedMutex
from ipcraft.testing import Child, run_in_child

from ._lockcheck import Holder

# glibc's struct __pthread_mutex_s on 64-bit Linux: the words pthread reads, as (offset, size).
FIELDS = {"lock": (0, 4), "count": (4, 4), "owner": (8, 4), "nusers": (12, 4), "kind": (16, 4),
          "spins": (20, 4), "list": (24, 16)}
OFFSET = 64


def _scribble_and_use(buf: mmap.mmap, field: str, seed: int, held: bool, peak_rss: Any) -> list[str]:
    """In the child: scribble ``field`` (while holding the mutex if ``held``), then use the mutex
    (peak RSS within 16 MiB)."""
    with peak_rss(16 * 1024, f"a mutex with a scribbled {field}"):
        return _use_scribbled(buf, field, seed, held)


def _use_scribbled(buf: mmap.mmap, field: str, seed: int, held: bool) -> list[str]:
    rng = random.Random(seed)
    m = SharedMutex.create(buf, OFFSET)
    if held:
        m.acquire(timeout=1)
    at, size = FIELDS[field]
    buf[OFFSET + at:OFFSET + at + size] = rng.randbytes(size)
    outcomes = []
    for op in ("release", "acquire", "release", "acquire", "release") if held else \
              ("acquire", "release", "acquire", "release"):
        try:
            if op == "acquire":
                m.acquire(timeout=0.05)
            else:
                m.release()
            outcomes.append(f"{op}:ok")
        except IPCError as exc:
            outcomes.append(f"{op}:{type(exc).__name__}")
        except RuntimeError:  # release of a mutex this thread does not hold (threading's rule)
            outcomes.append(f"{op}:RuntimeError")
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EFAULT):
                raise AssertionError(f"{op} raised a bare {errno.errorcode[exc.errno]}") from exc
            outcomes.append(f"{op}:OSError({errno.errorcode[exc.errno or 0]})")
    try:
        m.close()
    except IPCError:
        pass
    return outcomes


@pytest.mark.parametrize("held", [False, True], ids=["idle", "held"])
@pytest.mark.parametrize("field", sorted(FIELDS))
def test_scribbled_mutex_words_are_typed_errors_never_a_crash(shm: mmap.mmap, field: str, held: bool,
                                                              peak_rss: Any) -> None:
    """Random bytes in each word of an idle or held mutex: every operation returns or raises a typed
    error, the process survives (checked from outside: it runs in a child), and nothing hangs."""
    seen: set[str] = set()
    for seed in range(12):
        outcomes = run_in_child(_scribble_and_use, shm, field, seed, held, peak_rss, timeout=20)
        seen.update(outcomes)
    # A held mutex is released from this process's own record (its owner word is rewritten then);
    # the words pthread checks are refused at the next acquire.
    if field in ("lock", "kind") or (field == "owner" and not held):
        assert any("ProtocolError" in o for o in seen), f"no scribble of {field} was detected: {seen}"


def test_release_with_scribbled_list_links_never_writes_through_them(shm: mmap.mmap) -> None:
    """Two mutexes held, the robust-list links of both overwritten with a wild address: releasing them
    (in either order) never writes through the links, both are free for another process afterwards,
    and this thread keeps locking and unlocking normally (its robust list is intact)."""
    wild = (0x4141414141414140).to_bytes(8, "little") * 2

    def child(order: str) -> int:
        a = SharedMutex.create(shm, OFFSET)
        b = SharedMutex.create(shm, OFFSET + SharedMutex.SIZE)
        a.acquire(timeout=1)
        b.acquire(timeout=1)
        for base in (OFFSET, OFFSET + SharedMutex.SIZE):
            shm[base + 24:base + 40] = wild
        first, second = (a, b) if order == "a-first" else (b, a)
        first.release()
        second.release()
        assert run_in_child(_take_and_give_back, shm, timeout=20) == 2
        rounds = 0
        for _ in range(200):
            with a, b:
                rounds += 1
        return rounds

    for order in ("a-first", "b-first"):
        shm[:] = bytes(len(shm))
        assert run_in_child(child, order, timeout=30) == 200


def _take_and_give_back(buf: mmap.mmap) -> int:
    """In another process: acquire and release both mutexes; how many it got."""
    got = 0
    for off in (OFFSET, OFFSET + SharedMutex.SIZE):
        m = SharedMutex.open(buf, off)
        m.acquire(timeout=2)
        m.release()
        m.close()
        got += 1
    return got


def _unrecoverable(shm: mmap.mmap) -> SharedMutex:
    """A mutex whose owner died and whose next holder released it without make_consistent()."""
    m = SharedMutex.create(shm, OFFSET)

    def hold() -> SharedMutex:
        h = SharedMutex.open(shm, OFFSET)
        h.acquire(timeout=1)
        return h

    with Holder(hold) as holder:
        holder.kill()
    with pytest.raises(OwnerDied):
        m.acquire(timeout=5)
    m.release()
    return m


def _acquire_errno(m: SharedMutex, timeout: float | None) -> int:
    try:
        m.acquire(timeout)
    except OSError as exc:
        return exc.errno or 0
    m.release()
    return 0


@pytest.mark.parametrize("timeout", [None, 0, 1.0], ids=["blocking", "poll", "timed"])
def test_unrepaired_owner_death_refuses_everyone_with_enotrecoverable(shm: mmap.mmap,
                                                                      timeout: float | None) -> None:
    """After OwnerDied and a release without make_consistent(): every acquire, repeated in this
    thread, and in another process (even a blocking one), fails at once with ENOTRECOVERABLE: never
    EDEADLK, never a hang."""
    m = _unrecoverable(shm)
    try:
        for _ in range(3):
            assert _acquire_errno(m, timeout) == errno.ENOTRECOVERABLE
        start = time.monotonic()
        other = run_in_child(lambda: [_acquire_errno(SharedMutex.open(shm, OFFSET), timeout) for _ in range(3)],
                             timeout=15)
        assert other == [errno.ENOTRECOVERABLE] * 3
        assert time.monotonic() - start < 10
        assert _acquire_errno(m, timeout) == errno.ENOTRECOVERABLE
    finally:
        m.close()


def test_a_process_blocked_before_the_unrepaired_release_is_refused_too(shm: mmap.mmap) -> None:
    """A process already waiting in acquire() when the holder releases without make_consistent()
    gets ENOTRECOVERABLE instead of sleeping forever."""
    m = SharedMutex.create(shm, OFFSET)

    def hold() -> SharedMutex:
        h = SharedMutex.open(shm, OFFSET)
        h.acquire(timeout=1)
        return h

    try:
        with Holder(hold) as holder:
            holder.kill()
        with pytest.raises(OwnerDied):
            m.acquire(timeout=5)
        waiter = Child(lambda: _acquire_errno(SharedMutex.open(shm, OFFSET), None))
        time.sleep(0.3)
        m.release()
        assert waiter.result(timeout=15) == errno.ENOTRECOVERABLE
    finally:
        m.close()
