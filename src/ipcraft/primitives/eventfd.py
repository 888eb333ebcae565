"""EventFD: a 64-bit kernel counter behind a file descriptor (eventfd(2)), for wake-ups.

Decisions: the fd is always opened EFD_NONBLOCK; blocking and timeouts are done
with poll(2), so one fd serves blocking calls, timeouts, select/epoll and asyncio alike (the same
pattern as every fd transport).  Verbs follow ipcraft's vocabulary: ``send`` adds to
the counter (write(2)), ``recv`` takes from it (read(2)).

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable
from typing import TypeVar

from .._errors import translating
from .._resource import FdHandle
from .._wait import deadline_after, wait_fd
from ..errors import Timeout

__all__ = ("EventFD",)

_T = TypeVar("_T")

# The largest value the counter can hold (2**64 - 2); a send that would pass it waits.
_MAX_COUNT = 0xFFFFFFFFFFFFFFFE


class EventFD(FdHandle):
    """A kernel counter (eventfd) that wakes readers; usable with select/poll/epoll via :meth:`fileno`.

    ``send(n)`` adds ``n`` to the counter and wakes readers.  ``recv()`` waits while the counter is
    0, then, in counter mode, returns its value and resets it to 0 (many sends coalesce into one
    wake-up); in semaphore mode (``semaphore=True``, EFD_SEMAPHORE) it returns 1 and decrements it,
    so each unit wakes one ``recv``.  The fd is readable while the counter is above 0 and writable
    while it can take at least 1 more.

    The fd is shared with children by fork, or passed to other processes over a Unix socket
    (SCM_RIGHTS); :meth:`from_fd` wraps one received that way.  ``with efd:`` closes the handle.

    .. versionadded:: 0.1
    """

    semaphore: bool = False

    def __init__(self, initial: int = 0, *, semaphore: bool = False) -> None:
        """Create an eventfd whose counter starts at ``initial`` (0..2**32-1, eventfd(2)'s limit).

        Raises:
            ValueError: ``initial`` is out of range.
            LimitExceeded: out of file descriptors (RLIMIT_NOFILE or fs.file-max).
        """
        if not 0 <= initial <= 0xFFFFFFFF:
            raise ValueError(f"an eventfd's initial value must be in 0..2**32-1 (eventfd(2) takes an "
                             f"unsigned int); got {initial}")
        flags = os.EFD_NONBLOCK | os.EFD_CLOEXEC | (os.EFD_SEMAPHORE if semaphore else 0)
        with translating("creating an eventfd"):
            self._fd = os.eventfd(initial, flags)
        self.semaphore = semaphore

    @classmethod
    def from_fd(cls, fd: int, *, semaphore: bool = False) -> EventFD:
        """Wrap an existing eventfd ``fd`` (inherited or received); the handle takes it over and
        makes it non-blocking.  ``semaphore`` must say how it was created (only recv's docs depend
        on it: the kernel applies the mode it was created with)."""
        self = cls.__new__(cls)
        os.set_blocking(fd, False)
        self._fd = fd
        self.semaphore = semaphore
        return self

    def send(self, n: int = 1, *, timeout: float | None = None) -> None:
        """Add ``n`` (1..2**64-2) to the counter, waking readers.

        Waits up to ``timeout`` seconds (None: forever) only if the counter would pass 2**64-2.

        Raises:
            ValueError: ``n`` out of range; nothing added.
            Timeout: the counter stayed too full; nothing added.
            HandleClosed: this handle was closed.
        """
        if not 1 <= n <= _MAX_COUNT:
            raise ValueError(f"an eventfd send adds 1..2**64-2 (eventfd(2)); got {n}")
        self._retry(lambda fd: os.eventfd_write(fd, n), select.POLLOUT, timeout, f"sending {n} to")

    def recv(self, timeout: float | None = None) -> int:
        """Wait until the counter is above 0, then take from it (see the class docs).

        Returns the counter's value (counter mode) or 1 (semaphore mode).

        Raises:
            Timeout: the counter stayed 0 for ``timeout`` seconds (0: poll once); nothing taken.
            HandleClosed: this handle was closed.
        """
        return self._retry(os.eventfd_read, select.POLLIN, timeout, "receiving from")

    def _retry(self, op: Callable[[int], _T], events: int, timeout: float | None, what: str) -> _T:
        """Try the non-blocking ``op(fd)``; on EAGAIN sleep in poll(2) for ``events`` and retry."""
        fd = self.fileno()
        deadline = deadline_after(timeout)
        while True:
            try:
                with translating(f"{what} {self!r}"):
                    return op(fd)
            except BlockingIOError:
                if not wait_fd(fd, events, deadline):
                    raise Timeout(f"{what} {self!r}: timed out after {timeout} s") from None

    def __repr__(self) -> str:
        mode = " semaphore" if self.semaphore else ""
        state = " closed" if self._fd < 0 else f" fd={self._fd}"
        return f"<EventFD{mode}{state}>"
