"""Deadlines and waits: the one module every layer (primitives, rings, transports, channels) waits with.

Deadlines are absolute ``time.monotonic()`` values, or None for "wait forever"; a relative ``timeout``
becomes one once, at the top of an operation, so a retry loop never stretches the caller's bound.

Decisions:

* **Timeouts**: a number of seconds >= 0, or None.  ``0`` means "try once, never wait".  A negative
  number and NaN are refused with ValueError (``NaN >= 0`` is false, so NaN cannot slip through as "no
  time left" or "forever").  ``float("inf")`` means what it says: no deadline, the same as None.
* **Waiting for an fd** is poll(2) (no FD_SETSIZE limit), retried until the deadline when the kernel
  wakes early (EINTR is retried by Python itself, PEP 475).  Errors and hang-ups count as ready: the
  next operation on the fd reports them with its own errno.  A **closed fd** is not "ready": a
  negative fd, or one poll(2) reports as not open (POLLNVAL), raises HandleClosed at once.
* **Calls the kernel cannot time out** (flock, F_SETLKW, msgsnd without IPC_NOWAIT ...): ``retry_until``
  retries the non-blocking form with a sleep growing from 50 us to 5 ms, so a lock freed by its holder
  (or by the holder's death) is taken within 5 ms, while a long wait costs at most 200 tries a second.
"""

from __future__ import annotations

import math
import select
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import HandleClosed

T = TypeVar("T")

POLLIN = select.POLLIN | select.POLLPRI
POLLOUT = select.POLLOUT

_FIRST_SLEEP = 50e-6
_MAX_SLEEP = 5e-3
_MAX_POLL_MS = 2**31 - 1  # poll(2) takes an int; a longer wait is several polls


def deadline_after(timeout: float | None) -> float | None:
    """The absolute deadline for a relative ``timeout`` (None or infinity: wait forever).

    Raises:
        ValueError: ``timeout`` is negative or NaN.
    """
    if timeout is None:
        return None
    if not timeout >= 0:  # also refuses NaN
        raise ValueError(f"timeout must be a number of seconds >= 0, or None; not {timeout!r}")
    if math.isinf(timeout):
        return None
    return time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (never negative), or None for no deadline."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def wait_fd(fd: int, events: int, deadline: float | None) -> bool:
    """Sleep in poll(2) until ``fd`` has one of ``events`` (POLLIN/POLLOUT) or the deadline passes.

    Returns False on timeout.  Errors and hang-ups count as ready: the next operation reports them.

    Raises:
        HandleClosed: ``fd`` is negative or not an open file descriptor (POLLNVAL).
    """
    if fd < 0:
        raise HandleClosed("the file descriptor is closed")
    p = select.poll()
    p.register(fd, events)
    while True:
        left = remaining(deadline)
        ms = -1 if left is None else min(_MAX_POLL_MS, math.ceil(left * 1000))
        ready = p.poll(ms)
        if ready:
            if ready[0][1] & select.POLLNVAL:
                raise HandleClosed(f"file descriptor {fd} is not open (it was closed while in use)")
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
