"""Robust process-shared mutexes and conditions that live in any shared buffer.

Decisions:

* **The mutex is a glibc robust pthread mutex** (process-shared, robust, error-checking), because only
  the kernel's robust-futex list can release a lock whose owner was SIGKILLed: on the owner's death the
  kernel marks the lock word FUTEX_OWNER_DIED and wakes a waiter, whose ``acquire`` raises
  :class:`~ipcraft.errors.OwnerDied` (holding the mutex) instead of sleeping forever.  The
  error-checking type turns a thread locking twice into an error instead of a self-deadlock.
* **Owner death is an exception, not a return flag**: a flag can be ignored, and the protected data
  may be half-written.  The exception leaves the caller holding the mutex; ``make_consistent()``
  says "repaired", and releasing without it makes the mutex refuse everyone (ENOTRECOVERABLE), as
  POSIX specifies: better a clear error than trusting unchecked data.
* **The condition is a futex sequence word, not a pthread_cond_t** (see _native/pmutex.c): glibc's
  shared condition keeps waiter counts in the shared object, which a killed waiter corrupts.  A
  sequence word holds no per-waiter state, so a dead waiter leaves nothing behind.  Waits may wake
  spuriously; use :meth:`SharedCondition.wait_for` or loop on your predicate.
* **Timeouts**: ``acquire`` raises :class:`~ipcraft.errors.Timeout` like every ipcraft operation;
  ``SharedCondition.wait`` returns False on timeout like ``threading.Condition.wait``, because a wait
  that times out is an ordinary outcome there and the mutex is held again either way.
* **Speed**: ``acquire``/``release``/``__enter__``/``__exit__`` are inherited unchanged from the C type
  ``_native.PMutex``, which keeps the mutex pointer and the pinned buffer, so the uncontended path
  never enters Python code (benchmarks/mutex_overhead.py).
* **Ctrl-C**: a blocked ``acquire`` sleeps with the GIL released in 50 ms slices and runs Python's
  signal handlers between them; a condition wait is a futex sleep that signals interrupt at once.

Layout in the buffer: a mutex takes :attr:`SharedMutex.SIZE` (64) bytes at an 8-byte aligned offset:
the pthread_mutex_t, then a 4-byte magic at +48 written after initialisation so that :meth:`open`
can refuse memory that holds no mutex.  A condition takes :attr:`SharedCondition.SIZE` (16) bytes at
an 8-byte aligned offset: the 4-byte futex sequence word, then its magic at +8.

.. versionadded:: 0.1
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .. import _native
from .._errors import lock_error
from .._resource import Handle
from ..errors import ProtocolError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ("SharedMutex", "SharedCondition")

_MUTEX_MAGIC = 0x584D5049  # "IPMX" little-endian
_COND_MAGIC = 0x44435049  # "IPCD"
_MUTEX_MAGIC_AT = 48
_COND_MAGIC_AT = 8
_ALIGN = 8

_T = TypeVar("_T")


def _check_region(kind: str, buf: Any, offset: int, size: int) -> None:
    """Refuse an offset that is misaligned or leaves the buffer, naming both."""
    length = memoryview(buf).nbytes
    if offset < 0 or offset % _ALIGN:
        raise ValueError(f"{kind} offset {offset} must be a non-negative multiple of {_ALIGN}")
    if offset + size > length:
        raise ValueError(f"a {kind} needs {size} bytes at offset {offset}, but the buffer has only "
                         f"{length} bytes")


def _check_magic(kind: str, buf: Any, offset: int, at: int, magic: int) -> None:
    if _native.atomic_load_u32(buf, offset + at) != magic:
        raise ProtocolError(f"no {kind} at offset {offset} of this buffer (its magic is missing): "
                            f"{kind}.create() must initialise it first")


class SharedMutex(_native.PMutex, Handle):
    """A robust mutex shared between processes, living at an offset of any writable shared buffer.

    A lock-like handle: ``with mutex:`` acquires and releases it, as ``threading.Lock`` does; the
    handle's lifetime is ended with :meth:`close` (or ``contextlib.closing``), which only unpins the
    buffer and never touches the lock state (the exception for lock-like handles: ``with`` acquires).

    The buffer is anything writable that several processes map: an ``mmap`` of a memfd, of a file or
    of /dev/shm, a ``PosixSharedMemory``, a ring header.  Every process attaches its own handle with
    :meth:`open` to the region one of them initialised with :meth:`create`.  While a handle is open
    the buffer is pinned (an ``mmap`` refuses to close with BufferError), so the memory can never
    vanish under a lock operation.

    **Process death.**  If the owner dies (even by SIGKILL) while holding the mutex, the kernel releases
    it and the next :meth:`acquire` — including one already blocked — raises
    :class:`~ipcraft.errors.OwnerDied` with the mutex held.  Repair the data, call
    :meth:`make_consistent`, then :meth:`release`.  It is never a deadlock.

    Ownership belongs to a thread, not a process: only the thread that acquired may release
    (RuntimeError otherwise), and acquiring twice in one thread raises OSError(EDEADLK) rather than
    hanging.  It is not recursive.

    .. versionadded:: 0.1
    """

    #: Bytes a mutex occupies in the buffer (the pthread_mutex_t plus ipcraft's magic).
    SIZE = 64

    _offset: int = 0

    @classmethod
    def create(cls, buf: WriteableBuffer, offset: int = 0) -> SharedMutex:
        """Initialise a robust mutex at ``buf[offset:offset + SIZE]`` and attach to it.

        The region is overwritten: never create over a mutex another process may be using.

        Raises:
            ValueError: the offset is not 8-byte aligned or the region leaves the buffer; nothing
                was written.
            OSError: pthread_mutex_init failed (errno kept); nothing is attached.
        """
        _check_region("SharedMutex", buf, offset, cls.SIZE)
        _native.atomic_store_u32(buf, offset + _MUTEX_MAGIC_AT, 0)
        rc = _native.pmutex_init(buf, offset)
        if rc < 0:
            raise lock_error(-rc, f"SharedMutex at offset {offset}: initialising")
        _native.atomic_store_u32(buf, offset + _MUTEX_MAGIC_AT, _MUTEX_MAGIC)
        return cls._attached(buf, offset)

    @classmethod
    def open(cls, buf: WriteableBuffer, offset: int = 0) -> SharedMutex:
        """Attach to the mutex another handle created at ``buf[offset:offset + SIZE]``.

        Raises:
            ValueError: misaligned offset or a region outside the buffer.
            ProtocolError: no SharedMutex was created there (its magic is missing).
        """
        _check_region("SharedMutex", buf, offset, cls.SIZE)
        _check_magic("SharedMutex", buf, offset, _MUTEX_MAGIC_AT, _MUTEX_MAGIC)
        return cls._attached(buf, offset)

    @classmethod
    def _attached(cls, buf: Any, offset: int) -> SharedMutex:
        self = cls.__new__(cls)
        self._attach(buf, offset)  # pins buf until close()
        self._offset = offset
        return self

    # acquire(timeout=None), release(), __enter__ and __exit__ come from _native.PMutex; the
    # docstrings below document them for help() and the API reference.
    if TYPE_CHECKING:
        def acquire(self, timeout: float | None = None) -> None:
            """Lock the mutex, waiting up to ``timeout`` seconds (None: forever, 0: poll).

            Raises:
                Timeout: still held elsewhere when the timeout passed; not acquired.
                OwnerDied: the previous owner died holding it; **acquired** — repair, then
                    make_consistent(), then release().
                OSError: EDEADLK (this thread holds it already) or ENOTRECOVERABLE (see
                    make_consistent); not acquired.
                HandleClosed: this handle was closed.
            """

        def release(self) -> None:
            """Unlock the mutex.  Raises RuntimeError if this thread does not hold it."""

    def make_consistent(self) -> None:
        """Declare the data repaired after :class:`~ipcraft.errors.OwnerDied`; keep holding the mutex.

        Raises:
            RuntimeError: the mutex is not in the owner-died state held by this thread (state
                unchanged).
            HandleClosed: this handle was closed.
        """
        rc = self._consistent()
        if rc == -_errno.EBADF:
            self._raise_closed()
        if rc == -_errno.EINVAL:
            raise RuntimeError(f"{self!r}: make_consistent() applies only after OwnerDied, by the "
                               "thread holding the mutex")
        if rc < 0:
            raise lock_error(-rc, f"{self!r}: make_consistent")

    def _acquire_failed(self, rc: int, timeout: float | None) -> None:
        if rc == -_errno.EBADF:
            self._raise_closed()
        raise lock_error(-rc, f"acquiring {self!r}" + ("" if timeout is None else f" within {timeout} s"))

    def _release_failed(self, rc: int) -> None:
        if rc == -_errno.EBADF:
            self._raise_closed()
        raise lock_error(-rc, f"releasing {self!r}")

    def _close(self) -> None:
        self._detach()

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<SharedMutex at offset {self._offset}{state}>"


class SharedCondition(Handle):
    """A condition variable shared between processes, tied to one :class:`SharedMutex`.

    ``with cond:`` closes the handle (it is not lock-like: lock its mutex instead).  Use it as
    ``threading.Condition``: hold the mutex, check the predicate, :meth:`wait`; another process
    changes the data under the mutex and calls :meth:`notify` or :meth:`notify_all`.

    Waits can return spuriously (a notify meant for another waiter, a signal); always re-check the
    predicate, or use :meth:`wait_for`.  A waiter killed while waiting leaves no trace in the shared
    state.  ``notify(1)`` wakes one waiter; if that waiter dies before it runs, the wake-up is lost,
    so protocols that must survive crashed waiters use ``notify_all``.

    .. versionadded:: 0.1
    """

    #: Bytes a condition occupies in the buffer.
    SIZE = 16

    _view: memoryview | None = None
    _offset: int = 0
    _mutex: SharedMutex | None = None

    def __init__(self, buf: Any, offset: int, mutex: SharedMutex) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self._view = memoryview(buf)  # pins the buffer, as the mutex does
        self._offset = offset
        self._mutex = mutex

    @classmethod
    def create(cls, buf: WriteableBuffer, offset: int, mutex: SharedMutex) -> SharedCondition:
        """Initialise a condition at ``buf[offset:offset + SIZE]``, guarded by ``mutex``.

        Raises:
            ValueError: misaligned offset or a region outside the buffer; nothing written.
        """
        _check_region("SharedCondition", buf, offset, cls.SIZE)
        _native.atomic_store_u64(buf, offset, 0)
        _native.atomic_store_u32(buf, offset + _COND_MAGIC_AT, _COND_MAGIC)
        return cls(buf, offset, mutex)

    @classmethod
    def open(cls, buf: WriteableBuffer, offset: int, mutex: SharedMutex) -> SharedCondition:
        """Attach to a condition created at ``buf[offset:offset + SIZE]``; ``mutex`` must be the one
        every other user of the condition holds.

        Raises:
            ValueError: misaligned offset or a region outside the buffer.
            ProtocolError: no SharedCondition was created there.
        """
        _check_region("SharedCondition", buf, offset, cls.SIZE)
        _check_magic("SharedCondition", buf, offset, _COND_MAGIC_AT, _COND_MAGIC)
        return cls(buf, offset, mutex)

    @property
    def mutex(self) -> SharedMutex:
        """The mutex a waiter must hold."""
        self._check_open()
        assert self._mutex is not None
        return self._mutex

    def wait(self, timeout: float | None = None) -> bool:
        """Release the mutex, sleep until notified or ``timeout`` seconds pass, take the mutex again.

        The caller must hold the mutex; it holds it again when this returns or raises (also on
        KeyboardInterrupt, as with threading).  Returns False if the timeout passed, True when woken
        (possibly spuriously).

        Raises:
            RuntimeError: the mutex is not held by this thread; nothing waited.
            OwnerDied: while relocking, the mutex's owner had died; the mutex is held (see
                SharedMutex.acquire).
            HandleClosed: this handle or its mutex was closed.
        """
        self._check_open()
        mutex = self._mutex
        assert mutex is not None and self._view is not None
        rc = _native.pcond_wait(mutex, self._view, self._offset, timeout)
        if rc == -_errno.ETIMEDOUT:
            return False
        if rc == -_errno.EBADF:
            mutex._raise_closed()
        if rc < 0:
            raise lock_error(-rc, f"waiting on {self!r}")
        return True

    def wait_for(self, predicate: Callable[[], _T], timeout: float | None = None) -> _T:
        """Wait until ``predicate()`` is true or ``timeout`` passes; return its last value.

        The mutex must be held; it is held on return.  Same errors as :meth:`wait`.
        """
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self.wait(left)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> int:
        """Wake up to ``n`` waiters; returns how many the kernel woke.  Holding the mutex is not
        required, but changing the predicate's data is only safe under it."""
        self._check_open()
        if n < 0:
            raise ValueError(f"notify(n) needs n >= 0, not {n}")
        return self._wake(n)

    def notify_all(self) -> int:
        """Wake every waiter; returns how many the kernel woke."""
        self._check_open()
        return self._wake(-1)

    def _wake(self, n: int) -> int:
        assert self._view is not None
        rc = _native.pcond_wake(self._view, self._offset, min(n, 0x7FFFFFFF))
        if rc < 0:
            raise lock_error(-rc, f"notifying {self!r}")
        return rc

    def _close(self) -> None:
        view, self._view = self._view, None
        if view is not None:
            view.release()
        self._mutex = None

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<SharedCondition at offset {self._offset}{state}>"
