"""Shared checks for lock-like primitives: contention between processes, and a holder killed."""

from __future__ import annotations

import mmap
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

from ipcraft.testing import Child

ROUNDS = 10_000


def shared_counter() -> mmap.mmap:
    """An 8-byte counter in anonymous shared memory, visible to children forked afterwards."""
    return mmap.mmap(-1, mmap.PAGESIZE, mmap.MAP_SHARED)


def read_counter(buf: mmap.mmap) -> int:
    return int.from_bytes(buf[:8], "little")


def count_in_two_processes(open_lock: Callable[[], Any], critical: Callable[[Any, Callable[[], None]], None],
                           rounds: int = ROUNDS) -> int:
    """Two forked processes each open a lock and increment one shared counter ``rounds`` times.

    ``critical(lock, body)`` must run ``body`` (a non-atomic read-modify-write) under the lock.
    Returns the final counter, which is exactly 2 * rounds only if the lock excluded.
    """
    counter = shared_counter()

    def body() -> None:
        value = int.from_bytes(counter[:8], "little")
        counter[:8] = (value + 1).to_bytes(8, "little")

    def worker() -> None:
        lock = open_lock()
        try:
            for _ in range(rounds):
                critical(lock, body)
        finally:
            lock.close()

    children = [Child(worker) for _ in range(2)]
    for child in children:
        child.result(timeout=50)
    total = read_counter(counter)
    counter.close()
    return total


def with_statement(lock: Any, body: Callable[[], None]) -> None:
    """The critical section as ``with lock:``."""
    with lock:
        body()


class Holder:
    """A forked child that takes a lock, reports it, then sleeps until killed."""

    def __init__(self, take: Callable[[], Any]) -> None:
        r, w = os.pipe()

        def hold() -> None:
            os.close(r)
            keep = take()  # noqa: F841 - the lock object must stay alive
            os.write(w, b"x")
            time.sleep(60)

        self.child = Child(hold)
        os.close(w)
        ready, _, _ = select.select([r], [], [], 10)
        got = os.read(r, 1) if ready else b""
        os.close(r)
        if got != b"x":
            self.child.kill()
            self.child.wait()
            raise AssertionError("the holder child did not take the lock")

    def kill(self) -> None:
        """SIGKILL the holder and reap it."""
        self.child.kill(signal.SIGKILL)
        self.child.wait()

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def interrupted(block: Callable[[], Any]) -> str:
    """In a child: run ``block`` (which should wait) with SIGINT arriving after 0.2 s.

    Returns "interrupted" if the wait ended in KeyboardInterrupt, as Ctrl-C must.
    """
    def child() -> str:
        signal.signal(signal.SIGALRM, lambda *a: signal.raise_signal(signal.SIGINT))
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        try:
            block()
        except KeyboardInterrupt:
            return "interrupted"
        return "returned"

    return Child(child).result(timeout=10)
