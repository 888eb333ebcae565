"""Deadlines and waiting for fd readiness: the one poll(2) loop every layer shares.

Deadlines are absolute ``time.monotonic()`` values, or None for "wait forever"; a relative ``timeout``
becomes one once, at the top of an operation, so a retry loop never stretches the caller's bound.
"""

from __future__ import annotations

import select
import time

from .errors import HandleClosed

POLLIN = select.POLLIN | select.POLLPRI
POLLOUT = select.POLLOUT


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (never negative), or None for no deadline."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def deadline_after(timeout: float | None) -> float | None:
    """The absolute deadline for a relative ``timeout`` (None: wait forever)."""
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, not {timeout}")
    return time.monotonic() + timeout


def wait_fd(fd: int, events: int, deadline: float | None) -> bool:
    """Sleep until ``fd`` has one of ``events`` (POLLIN/POLLOUT) or the deadline passes.

    Returns False on timeout.  Errors and hang-ups count as ready: the next operation reports them.
    """
    if fd < 0:
        raise HandleClosed("the file descriptor is closed")
    p = select.poll()
    p.register(fd, events)
    while True:
        left = remaining(deadline)
        ms = -1 if left is None else int(left * 1000 + 0.999)
        if p.poll(ms):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
