"""The one handle lifecycle every ipcraft object shares.

``close()`` is idempotent and always closes: an error raised while closing means "not graceful", never
"still open".  ``closed`` is a property.  ``with handle:`` closes on exit (lock-like handles override
``__enter__``/``__exit__`` to acquire and release, as threading does).  A handle garbage-collected while
open warns ``ResourceWarning`` and then closes by the raw path.

Fields are initialised at class level, so ``close()`` and ``__del__`` are safe after a constructor
that failed halfway.
"""

from __future__ import annotations

import os
import warnings
from types import TracebackType
from typing import Any, NoReturn

from . import _native
from .errors import Busy, HandleClosed


class Handle:
    """Base of every object that owns a kernel resource."""

    _closed: bool = False

    def _close(self) -> None:
        """Release the kernel resource.  Called at most once."""

    def close(self) -> None:
        """Release the resource.  Idempotent; after it, every other operation raises HandleClosed."""
        if self._closed:
            return
        self._closed = True
        self._close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            self._raise_closed()

    def _raise_closed(self) -> NoReturn:
        raise HandleClosed(f"{self!r} is closed")

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        try:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
        except Exception:  # noqa: BLE001 (a finalizer must not raise; warnings may be errors)
            pass
        try:
            self.close()
        except Exception:  # noqa: BLE001 (a finalizer must not raise)
            pass


class FdHandle(Handle):
    """A handle that owns one file descriptor.

    Closing sets ``_fd`` to -1 at once, so a stale number (which the kernel may already have reused for
    another file) is never touched again: a later use raises HandleClosed instead.
    """

    _fd: int = -1

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def fileno(self) -> int:
        """The file descriptor, for select/poll/epoll.  Raises HandleClosed once closed."""
        if self._fd < 0:
            self._raise_closed()
        return self._fd


class ConflictDetector(_native.BusyLock):
    """Refuses a second concurrent user of one direction of a handle (trio's ConflictDetector).

    Two threads receiving on one byte stream would each get half a frame; the second gets
    :class:`Busy` instead.  A flag tested and set under the GIL (``_native.BusyLock``), so that the
    zero-copy context managers in C can take and drop it without a call back into Python; ``held``
    tells whether someone is inside.
    """

    __slots__ = ()

    def __init__(self, what: str) -> None:
        super().__init__(f"another thread is already {what} on this handle", Busy)


class LockLike:
    """Mixin: ``with obj:`` calls ``obj.acquire()`` and ``obj.release()`` (put it first in the bases).

    Lock-like handles (locks, semaphores) use ``with`` to acquire and release, as threading does; their
    lifetime ends with ``close()`` (or ``contextlib.closing``).
    """

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
