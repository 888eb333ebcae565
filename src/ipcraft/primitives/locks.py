"""Advisory file locks: whole-file flock(2) and fcntl(2) byte-range (record) locks.

Decisions:

* **Two classes, because the kernel has two lock families with different owners.**  A flock lock
  belongs to the *open file description*; a classic fcntl record lock belongs to the *process*
  (pid + inode), and an open-file-description (OFD, Linux 3.15) record lock belongs to the open file
  description again.  The owner decides everything users trip over: what a fork shares, what a
  close drops, and when death releases.  :class:`FileLock` is flock; :class:`RecordLock` is fcntl,
  classic by default, OFD with ``ofd=True``.
* **Timeouts poll.**  Neither flock nor F_SETLKW takes a timeout, and a signal-driven timeout would
  steal the process's SIGALRM.  ``timeout=None`` makes the blocking call (GIL released, EINTR retried
  after Python's handlers ran); any other timeout retries the non-blocking form with a sleep growing
  from 50 µs to 5 ms, so a freed lock is taken within ~5 ms.
* **Kernel deadlock detection (EDEADLK) only exists for blocking classic record locks**, so only
  ``RecordLock.acquire(timeout=None)`` without ``ofd`` can raise it; it is raised as
  ``OSError(EDEADLK)`` naming the range, never turned into a hang or a timeout.

How process death releases each (the kernel closes every fd of a dying process):

============  ===================================================================================
FileLock      released when the *last* fd of its open file description closes.  A child forked
              while it was held shares it: the lock survives the parent's death until the child
              closes its copy too.
RecordLock    released at once when the owning process dies (or closes *any* fd of the file:
              the classic-lock trap).  Children never inherit it.
RecordLock    like FileLock: tied to the open file description, shared with forked children,
(ofd=True)    released when the last fd of it closes; closing other fds of the file is harmless.
============  ===================================================================================

All are advisory: they bind only processes that lock too.

.. versionadded:: 0.1
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import struct
from typing import NamedTuple

from .._errors import lock_error, translating
from .._names import DEFAULT_MODE
from .._resource import FdHandle, LockLike
from .._wait import deadline_after, retry_until

__all__ = ("FileLock", "RecordLock", "LockHolder")

# struct flock on Linux (x86_64, aarch64): short l_type, l_whence; off_t l_start, l_len; pid_t l_pid.
_FLOCK = struct.Struct("=hh4xqqi4x")
_WOULD_BLOCK = (_errno.EAGAIN, _errno.EACCES)


def _open_fd(path: str | os.PathLike[str], create: bool, mode: int) -> int:
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    with translating(f"opening lock file {os.fspath(path)!r}", os.fspath(path)):
        return os.open(path, flags, mode)


class _FileLockBase(FdHandle):
    """Shared constructors of the two lock-file handles."""

    path: str = ""

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def _from_path(cls, path: str | os.PathLike[str], create: bool, mode: int):  # type: ignore[no-untyped-def]
        fd = _open_fd(path, create, mode)
        return cls(fd, os.fspath(path))

    @classmethod
    def _from_fd(cls, fd: int):  # type: ignore[no-untyped-def]
        with translating(f"duplicating fd {fd} for a lock"):
            dup = os.dup(fd)  # the dup shares the open file description, and its flock/OFD locks
        return cls(dup, f"fd {fd}")


class FileLock(LockLike, _FileLockBase):
    """A whole-file advisory lock (flock), shared or exclusive, on a lock file.

    A lock-like handle: ``with lock:`` acquires and releases it (exclusive unless the handle was
    made with ``shared=True``), as ``threading.Lock`` does; the handle's lifetime (its fd) is ended
    with :meth:`close` (or ``contextlib.closing``), which also drops the lock (the
    exception for lock-like handles).

    The lock belongs to the open file description: two handles opened separately exclude each other
    even in one process, while a forked child shares its parent's lock (and keeps it alive if the
    parent dies).  The kernel releases it when the last fd of that description closes, which includes
    the holder's death.  Changing shared <-> exclusive is not atomic: flock drops the old lock first.

    The lock file is never deleted by ipcraft: unlinking a lock file while others may open it lets
    two processes hold "the" lock on two different files.

    .. versionadded:: 0.1
    """

    shared: bool = False
    _held: int = 0  # 0, fcntl.LOCK_SH or fcntl.LOCK_EX

    def __init__(self, fd: int, path: str, shared: bool = False) -> None:
        """Use :meth:`open_or_create`, :meth:`open` or :meth:`from_fd`."""
        super().__init__(fd, path)
        self.shared = shared

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], *, shared: bool = False,
                       mode: int = DEFAULT_MODE) -> FileLock:
        """Open the lock file ``path``, creating it (with ``mode``) if missing."""
        lock = cls._from_path(path, True, mode)
        lock.shared = shared
        return lock  # type: ignore[no-any-return]

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, shared: bool = False) -> FileLock:
        """Open the existing lock file ``path``.  Raises FileNotFoundError if it is missing."""
        lock = cls._from_path(path, False, 0)
        lock.shared = shared
        return lock  # type: ignore[no-any-return]

    @classmethod
    def from_fd(cls, fd: int, *, shared: bool = False) -> FileLock:
        """Lock the file open as ``fd`` (duplicated: the caller keeps and closes its own fd)."""
        lock = cls._from_fd(fd)
        lock.shared = shared
        return lock  # type: ignore[no-any-return]

    @property
    def held(self) -> str | None:
        """``"shared"`` or ``"exclusive"`` while this handle holds the lock, else None."""
        return {fcntl.LOCK_SH: "shared", fcntl.LOCK_EX: "exclusive"}.get(self._held)

    def acquire(self, timeout: float | None = None, *, shared: bool | None = None) -> None:
        """Take the lock, shared or exclusive (default: the handle's ``shared``), waiting up to
        ``timeout`` seconds (None: forever, 0: try once).

        Raises:
            Timeout: held incompatibly elsewhere until the timeout; not acquired.
            HandleClosed: this handle was closed.
        """
        fd = self.fileno()
        op = fcntl.LOCK_SH if (self.shared if shared is None else shared) else fcntl.LOCK_EX
        what = f"locking {self!r} ({'shared' if op == fcntl.LOCK_SH else 'exclusive'})"
        if timeout is None:
            with translating(what, self.path):
                fcntl.flock(fd, op)
        else:
            deadline = deadline_after(timeout)

            def attempt() -> bool | None:
                try:
                    fcntl.flock(fd, op | fcntl.LOCK_NB)
                    return True
                except OSError as exc:
                    if exc.errno != _errno.EWOULDBLOCK:
                        raise
                    return None

            with translating(what, self.path):
                if retry_until(attempt, deadline) is None:
                    raise lock_error(_errno.EWOULDBLOCK, f"{what} within {timeout} s")
        self._held = op

    def release(self) -> None:
        """Drop the lock (LOCK_UN).  Raises RuntimeError if this handle does not hold it."""
        fd = self.fileno()
        if not self._held:
            raise RuntimeError(f"releasing {self!r}: not held by this handle")
        with translating(f"unlocking {self!r}", self.path):
            fcntl.flock(fd, fcntl.LOCK_UN)
        self._held = 0

    def __repr__(self) -> str:
        state = " closed" if self.closed else (f" held={self.held}" if self._held else "")
        return f"<FileLock {self.path!r}{state}>"


class LockHolder(NamedTuple):
    """Who holds a conflicting record lock, as F_GETLK reports it."""

    pid: int  #: the holder's pid; -1 for an open-file-description lock (it has no single owner)
    shared: bool  #: True for a read (shared) lock
    start: int  #: first byte of the held range
    length: int  #: bytes in the range; 0 means "to the end of the file, however it grows"


class RecordLock(LockLike, _FileLockBase):
    """An advisory lock on a byte range of a file (fcntl F_SETLK), shared or exclusive.

    A lock-like handle: ``with lock:`` acquires and releases the range given at construction (the
    whole file, exclusive, by default); the fd's lifetime is ended with :meth:`close` (or
    ``contextlib.closing``) (the exception for lock-like handles: ``with`` acquires).  Other ranges are locked
    with ``acquire(start, length)``; ``length=0`` means "to the end of the file, however it grows".

    Classic locks (the default) belong to the process: threads of one process never exclude each
    other, a forked child inherits nothing, the kernel drops them the moment the process dies — and
    also when the process closes *any* fd of the file.  :meth:`holder` reports the holder's pid, and a
    blocking acquire that would deadlock two processes raises OSError(EDEADLK).

    With ``ofd=True`` the lock belongs to this handle's open file description (F_OFD_SETLK): two
    handles exclude each other even in one process, closing other fds is harmless, a forked child
    shares the lock, and it is released when the last fd of the description closes (death
    included).  The kernel reports no pid for them (-1) and detects no deadlocks.

    .. versionadded:: 0.1
    """

    ofd: bool = False
    start: int = 0
    length: int = 0
    shared: bool = False

    def __init__(self, fd: int, path: str, ofd: bool = False, start: int = 0, length: int = 0,
                 shared: bool = False) -> None:
        """Use :meth:`open_or_create`, :meth:`open` or :meth:`from_fd`."""
        super().__init__(fd, path)
        self._configure(ofd, start, length, shared)

    def _configure(self, ofd: bool, start: int, length: int, shared: bool) -> RecordLock:
        _check_range(start, length)
        self.ofd, self.start, self.length, self.shared = ofd, start, length, shared
        return self

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], *, start: int = 0, length: int = 0,
                       shared: bool = False, ofd: bool = False, mode: int = DEFAULT_MODE) -> RecordLock:
        """Open ``path`` read-write, creating it if missing; ``with`` will lock ``start``/``length``."""
        return cls._from_path(path, True, mode)._configure(ofd, start, length, shared)  # type: ignore[no-any-return]

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, start: int = 0, length: int = 0,
             shared: bool = False, ofd: bool = False) -> RecordLock:
        """Open the existing file ``path`` read-write.  Raises FileNotFoundError if missing."""
        return cls._from_path(path, False, 0)._configure(ofd, start, length, shared)  # type: ignore[no-any-return]

    @classmethod
    def from_fd(cls, fd: int, *, start: int = 0, length: int = 0, shared: bool = False,
                ofd: bool = False) -> RecordLock:
        """Lock ranges of the file open as ``fd`` (duplicated; it must be open for reading and
        writing to take both kinds of lock)."""
        return cls._from_fd(fd)._configure(ofd, start, length, shared)  # type: ignore[no-any-return]

    def acquire(self, start: int | None = None, length: int | None = None, *,
                shared: bool | None = None, timeout: float | None = None) -> None:
        """Lock ``length`` bytes from ``start`` (defaults: the handle's range and kind).

        Waits up to ``timeout`` seconds (None: forever, 0: try once) while another process (or, for
        OFD locks, another open file description) holds an incompatible lock on an overlapping range.

        Raises:
            Timeout: still conflicting at the timeout; nothing locked.
            OSError: EDEADLK, the wait would deadlock (a blocking classic lock only); nothing locked.
            HandleClosed: this handle was closed.
        """
        start, length, shared = self._args(start, length, shared)
        fd = self.fileno()
        kind = fcntl.F_RDLCK if shared else fcntl.F_WRLCK
        what = f"locking {_describe(start, length)} of {self!r} ({'shared' if shared else 'exclusive'})"
        arg = _FLOCK.pack(kind, os.SEEK_SET, start, length, 0)
        if timeout is None:
            try:
                with translating(what, self.path):
                    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if self.ofd else fcntl.F_SETLKW, arg)
            except OSError as exc:
                if exc.errno != _errno.EDEADLK:
                    raise
                raise lock_error(exc.errno, f"{what}: the process holding it waits for a range this "
                                 "process holds") from exc
            return
        deadline = deadline_after(timeout)
        cmd = fcntl.F_OFD_SETLK if self.ofd else fcntl.F_SETLK

        def attempt() -> bool | None:
            try:
                fcntl.fcntl(fd, cmd, arg)
                return True
            except OSError as exc:
                if exc.errno not in _WOULD_BLOCK:
                    raise
                return None

        with translating(what, self.path):
            if retry_until(attempt, deadline) is None:
                raise lock_error(_errno.EAGAIN, f"{what} within {timeout} s")

    def release(self, start: int | None = None, length: int | None = None) -> None:
        """Unlock ``length`` bytes from ``start`` (defaults: the handle's range).  Unlocking a range
        that is not locked is not an error (the kernel ignores it)."""
        start, length, _ = self._args(start, length, False)
        fd = self.fileno()
        with translating(f"unlocking {_describe(start, length)} of {self!r}", self.path):
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK if self.ofd else fcntl.F_SETLK,
                        _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, start, length, 0))

    def holder(self, start: int | None = None, length: int | None = None, *,
               shared: bool = False) -> LockHolder | None:
        """Who would block ``acquire(start, length, shared=shared)`` (F_GETLK), or None if nobody.

        A classic lock reports its process's pid; an OFD lock reports -1.  The answer is a snapshot.
        A process's own classic locks never block it, so they are not reported to it.
        """
        start, length, _ = self._args(start, length, shared)
        fd = self.fileno()
        kind = fcntl.F_RDLCK if shared else fcntl.F_WRLCK
        with translating(f"querying locks on {_describe(start, length)} of {self!r}", self.path):
            out = fcntl.fcntl(fd, fcntl.F_OFD_GETLK if self.ofd else fcntl.F_GETLK,
                              _FLOCK.pack(kind, os.SEEK_SET, start, length, 0))
        l_type, _, l_start, l_len, l_pid = _FLOCK.unpack(out)
        if l_type == fcntl.F_UNLCK:
            return None
        return LockHolder(pid=l_pid, shared=l_type == fcntl.F_RDLCK, start=l_start, length=l_len)

    def _args(self, start: int | None, length: int | None, shared: bool | None) -> tuple[int, int, bool]:
        start = self.start if start is None else start
        length = self.length if length is None else length
        _check_range(start, length)
        return start, length, self.shared if shared is None else shared

    def __repr__(self) -> str:
        flags = (" ofd" if self.ofd else "") + (" closed" if self.closed else "")
        return f"<RecordLock {self.path!r} {_describe(self.start, self.length)}{flags}>"


def _check_range(start: int, length: int) -> None:
    if start < 0 or length < 0:
        raise ValueError(f"a record lock range needs start >= 0 and length >= 0 (0: to the end of "
                         f"the file); got start={start}, length={length}")


def _describe(start: int, length: int) -> str:
    return f"bytes {start}.." + ("EOF" if length == 0 else str(start + length - 1))
