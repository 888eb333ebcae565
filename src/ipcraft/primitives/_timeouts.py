"""Deadlines, fd readiness and try-again loops shared by the primitives that wait.

Primitives may not import the transport layer (STYLE.md R1), so they keep their own small copy of the
deadline arithmetic.  ``retry_until`` is for calls the kernel cannot time out (flock, F_SETLKW): it
retries the non-blocking form with a growing sleep, from 50 µs up to 5 ms, so a lock freed by its
holder (or by the holder's death) is taken within 5 ms, while a long wait costs at most 200 tries a
second.

``LockLike`` gives the lock-like handles (STYLE.md R8's exception) their ``with`` behaviour.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

_FIRST_SLEEP = 50e-6
_MAX_SLEEP = 5e-3


def deadline_after(timeout: float | None) -> float | None:
    """The absolute time.monotonic() deadline for ``timeout`` seconds (None: never)."""
    if timeout is None:
        return None
    if not timeout >= 0:  # also refuses NaN
        raise ValueError(f"timeout must be a number of seconds >= 0, or None; not {timeout!r}")
    return time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (never negative), or None for no deadline."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def wait_fd(fd: int, events: int, deadline: float | None) -> bool:
    """Sleep in poll(2) until ``fd`` has one of ``events`` or the deadline passes (False)."""
    p = select.poll()
    p.register(fd, events)
    while True:
        left = remaining(deadline)
        if p.poll(None if left is None else int(left * 1000 + 0.999)):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


def retry_until(attempt: Callable[[], T | None], deadline: float | None) -> T | None:
    """Call ``attempt()`` until it returns something other than None or the deadline passes.

    Returns the first non-None result, or None when the deadline passed first (``attempt`` is always
    called at least once, so a zero timeout is a single try).
    """
    sleep = _FIRST_SLEEP
    while True:
        result = attempt()
        if result is not None:
            return result
        left = remaining(deadline)
        if left is not None and left <= 0:
            return None
        time.sleep(sleep if left is None else min(sleep, left))
        sleep = min(sleep * 2, _MAX_SLEEP)


class LockLike:
    """Mixin: ``with obj:`` calls ``obj.acquire()`` and ``obj.release()`` (put it first in the bases)."""

    def acquire(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
