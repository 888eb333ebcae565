"""Counting semaphores: named POSIX semaphores and System V semaphore sets.

Decisions:

* **PosixSemaphore wraps posix_ipc** (sem_open/sem_timedwait with the GIL released).  A POSIX
  semaphore has *no owner*: if a process dies between acquire and release, the count stays taken
  for ever.  Nothing can fix that in user space, so the class says so and points to the two
  alternatives that survive death: :class:`SysVSemaphoreSet` with SEM_UNDO, and
  :class:`~ipcraft.primitives.sync.SharedMutex`.
* **SysVSemaphoreSet calls semget/semtimedop/semctl through ctypes**, not sysv_ipc: sysv_ipc's
  Semaphore is always a set of exactly one, so it can neither hold n semaphores nor change several
  atomically.  ctypes releases the GIL for the call; an EINTR is retried with the remaining timeout
  after Python's signal handlers ran (PEP 475), so Ctrl-C still interrupts.
* **SEM_UNDO is on by default** for SysVSemaphoreSet: the kernel records each process's net change
  and reverts it when the process exits, so a holder killed by SIGKILL gives its count back.  That
  is right for locks (acquire and release both undone, net zero) and wrong for producer/consumer
  counts (the producer's exit would take back what it produced): pass ``undo=False`` there.
* Timeouts raise :class:`~ipcraft.errors.Timeout`, like every ipcraft wait.

.. versionadded:: 0.1
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
from collections.abc import Iterable, Sequence

import posix_ipc

from .._errors import lock_error, os_error, translating
from .._names import DEFAULT_MODE, NAME_MAX, validate_name
from .._resource import Handle, LockLike
from .._wait import deadline_after, remaining

__all__ = ("PosixSemaphore", "SysVSemaphoreSet", "unlink_posix_semaphore")

_SEM_LIMITS = {
    _errno.ENOSPC: "/proc/sys/kernel/sem (SEMMNI sets / SEMMNS semaphores system-wide)",
    _errno.E2BIG: "/proc/sys/kernel/sem (SEMOPM operations per call)",
    _errno.ERANGE: "SEMVMX: a System V semaphore's value is at most 32767",
}


def unlink_posix_semaphore(name: str) -> None:
    """Remove the semaphore ``name`` from the system (sem_unlink); open handles keep working.

    Raises:
        FileNotFoundError: no such semaphore.
        PermissionError: not allowed to remove it.
    """
    bare = validate_name(name, "POSIX semaphore", NAME_MAX - 4)
    with translating(f"unlinking POSIX semaphore {name!r}", bare):
        posix_ipc.unlink_semaphore("/" + bare)


class PosixSemaphore(LockLike, Handle):
    """A named POSIX counting semaphore (sem_open), shared by every process that opens the name.

    A lock-like handle: ``with sem:`` acquires and releases it, as ``threading.Semaphore`` does; its
    lifetime is ended with :meth:`close` (or ``contextlib.closing``) (the exception for lock-like handles).
    The semaphore lives in /dev/shm as ``sem.<name>`` until unlinked.

    .. warning:: A POSIX semaphore has no owner.  If a process dies (SIGKILL, a crash) after
       ``acquire`` and before ``release``, the count is never given back and the next acquirer waits
       for ever.  Use :class:`SysVSemaphoreSet` (SEM_UNDO gives a dead process's count back) or
       :class:`~ipcraft.primitives.sync.SharedMutex` (robust) when a holder may die.

    The handle made by :meth:`create` is the *owner*; ``close()`` unlinks the name when
    ``unlink_on_close`` is true (the default).  :meth:`open` never unlinks on its own.

    .. versionadded:: 0.1
    """

    _sem: posix_ipc.Semaphore | None = None
    name: str = ""
    owner: bool = False
    unlink_on_close: bool = False

    def __init__(self, sem: posix_ipc.Semaphore, name: str, owner: bool, unlink_on_close: bool) -> None:
        """Use :meth:`create`, :meth:`open` or :meth:`open_or_create`."""
        self._sem = sem
        self.name = name
        self.owner = owner
        self.unlink_on_close = owner and unlink_on_close

    @classmethod
    def create(cls, name: str, *, initial: int = 0, mode: int = DEFAULT_MODE,
               unlink_on_close: bool = True) -> PosixSemaphore:
        """Create the semaphore ``name`` with value ``initial`` (O_CREAT|O_EXCL); this handle owns it.

        Raises:
            FileExistsError: the name exists already.
            InvalidEndpoint: the name is not one path component of at most 251 bytes.
            ValueError: ``initial`` is negative or above SEM_VALUE_MAX.
        """
        bare = validate_name(name, "POSIX semaphore", NAME_MAX - 4)
        if not 0 <= initial <= posix_ipc.SEMAPHORE_VALUE_MAX:
            raise ValueError(f"initial value {initial} of POSIX semaphore {name!r} must be in 0.."
                             f"{posix_ipc.SEMAPHORE_VALUE_MAX} (SEM_VALUE_MAX)")
        with translating(f"creating POSIX semaphore {name!r}", bare):
            sem = posix_ipc.Semaphore("/" + bare, posix_ipc.O_CREX, mode, initial)
        return cls(sem, bare, True, unlink_on_close)

    @classmethod
    def open(cls, name: str) -> PosixSemaphore:
        """Open the existing semaphore ``name``.  This handle never unlinks it.

        Raises:
            FileNotFoundError: no such semaphore.
            PermissionError: its mode does not let this user open it.
        """
        bare = validate_name(name, "POSIX semaphore", NAME_MAX - 4)
        with translating(f"opening POSIX semaphore {name!r}", bare):
            sem = posix_ipc.Semaphore("/" + bare, 0)
        return cls(sem, bare, False, False)

    @classmethod
    def open_or_create(cls, name: str, *, initial: int = 0, mode: int = DEFAULT_MODE,
                       unlink_on_close: bool = True) -> PosixSemaphore:
        """Open ``name``, creating it with ``initial`` if missing; the handle owns it only if it
        created it."""
        while True:
            try:
                return cls.create(name, initial=initial, mode=mode, unlink_on_close=unlink_on_close)
            except FileExistsError:
                pass
            try:
                return cls.open(name)
            except FileNotFoundError:  # unlinked between the two calls: try again
                continue

    def acquire(self, timeout: float | None = None) -> None:
        """Decrement the value, waiting up to ``timeout`` seconds while it is 0 (None: forever).

        Raises:
            Timeout: the value stayed 0 until the timeout; nothing taken; the handle is usable.
            HandleClosed: this handle was closed.
        """
        sem = self._live()
        deadline = deadline_after(timeout)
        while True:
            try:
                with translating(f"acquiring {self!r}"):
                    sem.acquire(remaining(deadline))
                return
            except InterruptedError:  # a signal whose handler did not raise: wait on (PEP 475)
                continue

    def release(self, n: int = 1) -> None:
        """Increment the value by ``n`` (sem_post n times), waking up to ``n`` waiters.

        Raises:
            LimitExceeded: the value would pass SEM_VALUE_MAX (EOVERFLOW); released up to there.
            HandleClosed: this handle was closed.
        """
        sem = self._live()
        if n < 1:
            raise ValueError(f"release(n) needs n >= 1, not {n}")
        limits = {_errno.EOVERFLOW: f"SEM_VALUE_MAX = {posix_ipc.SEMAPHORE_VALUE_MAX}"}
        with translating(f"releasing {self!r}", limits=limits):
            for _ in range(n):
                sem.release()

    @property
    def value(self) -> int:
        """The current value (sem_getvalue); already stale when read if others use the semaphore."""
        sem = self._live()
        with translating(f"reading the value of {self!r}"):
            return int(sem.value)

    def unlink(self) -> None:
        """Remove the name now (sem_unlink); handles already open keep working."""
        self._live()
        unlink_posix_semaphore(self.name)
        self.unlink_on_close = False

    def release_ownership(self) -> None:
        """Hand the duty to unlink on: close() will no longer unlink the name."""
        self.owner = False
        self.unlink_on_close = False

    def _live(self) -> posix_ipc.Semaphore:
        if self._sem is None or self._closed:
            self._raise_closed()
        return self._sem

    def _close(self) -> None:
        sem, self._sem = self._sem, None
        if sem is None:
            return
        try:
            if self.unlink_on_close:
                try:
                    unlink_posix_semaphore(self.name)
                except FileNotFoundError:  # someone unlinked it already: fine
                    pass
        finally:
            sem.close()

    def __repr__(self) -> str:
        flags = (" owner" if self.owner else "") + (" closed" if self.closed else "")
        return f"<PosixSemaphore '/{self.name}'{flags}>"


# --- System V --------------------------------------------------------------------------------------

_IPC_CREAT, _IPC_EXCL, _IPC_NOWAIT, _SEM_UNDO = 0o1000, 0o2000, 0o4000, 0x1000
_IPC_RMID, _GETPID, _GETVAL, _GETALL, _GETNCNT, _GETZCNT, _SETVAL, _SETALL = 0, 11, 12, 13, 14, 15, 16, 17
_SEMVMX = 32767


class _Sembuf(ctypes.Structure):
    _fields_ = [("sem_num", ctypes.c_ushort), ("sem_op", ctypes.c_short), ("sem_flg", ctypes.c_short)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.semget.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
_libc.semtimedop.argtypes = [ctypes.c_int, ctypes.POINTER(_Sembuf), ctypes.c_size_t,
                             ctypes.POINTER(_Timespec)]
# semctl is variadic; its fourth argument (union semun) is an int or a pointer, both passed in an
# integer register, so it is declared per call below.


def _semctl(semid: int, num: int, cmd: int, arg: int | ctypes.Array[ctypes.c_ushort] = 0) -> int:
    rc = _libc.semctl(ctypes.c_int(semid), ctypes.c_int(num), ctypes.c_int(cmd),
                      arg if isinstance(arg, ctypes.Array) else ctypes.c_long(arg))
    if rc < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return int(rc)


def _nsems(semid: int) -> int:
    """The set's size, from /proc/sysvipc/sem (the same on every architecture, unlike semid_ds)."""
    with open("/proc/sysvipc/sem") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1]) == semid:
                return int(fields[3])
    raise FileNotFoundError(_errno.ENOENT, f"System V semaphore set id {semid} is gone")


class SysVSemaphoreSet(Handle):
    """A System V semaphore set: ``n`` counting semaphores changed atomically, with SEM_UNDO.

    ``with sems:`` closes the handle (a set is not one lock; use ``acquire``/``release`` by index).

    **Process death.**  With ``undo=True`` (the default), every change is made with SEM_UNDO: the
    kernel keeps a per-process adjustment and applies it when the process exits by any means, so a
    holder killed by SIGKILL gives back what it took.  Pass ``undo=False`` for counts that must
    outlive their producer.  Setting a value (``set_value``) clears every process's adjustment for it.

    :meth:`apply` performs several operations on several semaphores as one: all or none (semop).
    A delta of 0 waits until that semaphore is zero.

    The set is identified by its System V ``key`` (ftok-style int; ``None`` creates a private set
    shared only with forked children).  The handle made by :meth:`create` is the owner and removes the
    set (IPC_RMID) on ``close()`` when ``unlink_on_close`` is true.

    .. warning:: ``create`` makes the set and then sets its values: an opener racing the creator can
       see zeros in between (a System V design flaw).  Open after the creator signalled readiness.

    .. versionadded:: 0.1
    """

    id: int = -1
    key: int | None = None
    n: int = 0
    owner: bool = False
    unlink_on_close: bool = False
    undo: bool = True

    def __init__(self, semid: int, key: int | None, n: int, owner: bool, unlink_on_close: bool,
                 undo: bool) -> None:
        """Use :meth:`create`, :meth:`open` or :meth:`open_or_create`."""
        self.id = semid
        self.key = key
        self.n = n
        self.owner = owner
        self.unlink_on_close = owner and unlink_on_close
        self.undo = undo

    @classmethod
    def create(cls, key: int | None, n: int = 1, *, initial: int | Sequence[int] = 0,
               mode: int = DEFAULT_MODE, unlink_on_close: bool = True, undo: bool = True
               ) -> SysVSemaphoreSet:
        """Create a set of ``n`` semaphores under ``key`` (IPC_CREAT|IPC_EXCL) and set their values.

        ``initial`` is one value for all, or one per semaphore.

        Raises:
            FileExistsError: a set with this key exists.
            LimitExceeded: ``n`` passes SEMMSL, or the system has no room (SEMMNI/SEMMNS).
            ValueError: a bad ``n`` or value; nothing created.
        """
        values = [initial] * n if isinstance(initial, int) else list(initial)
        if n < 1 or len(values) != n or not all(0 <= v <= _SEMVMX for v in values):
            raise ValueError(f"a System V semaphore set needs n >= 1 and n initial values in 0.."
                             f"{_SEMVMX} (SEMVMX); got n={n}, initial={initial!r}")
        what = f"creating System V semaphore set key={key!r} n={n}"
        semid = _libc.semget(key or 0, n, _IPC_CREAT | _IPC_EXCL | (mode & 0o777))
        if semid < 0:
            err = ctypes.get_errno()
            limits = {**_SEM_LIMITS, _errno.EINVAL: "SEMMSL in /proc/sys/kernel/sem (semaphores per set)"}
            raise os_error(err, what, limits=limits)
        self = cls(semid, key, n, True, unlink_on_close, undo)
        try:
            self.set_values(values)
        except BaseException:
            self.unlink()
            raise
        return self

    @classmethod
    def open(cls, key: int, *, undo: bool = True) -> SysVSemaphoreSet:
        """Open the existing set under ``key``.  This handle never removes it.

        Raises:
            FileNotFoundError: no set has this key.
            PermissionError: its mode does not let this user use it.
        """
        semid = _libc.semget(key, 0, 0o600)  # asks for read+write, so EACCES comes now, not later
        if semid < 0:
            raise os_error(ctypes.get_errno(), f"opening System V semaphore set key={key}")
        return cls(semid, key, _nsems(semid), False, False, undo)

    @classmethod
    def open_or_create(cls, key: int, n: int = 1, *, initial: int | Sequence[int] = 0,
                       mode: int = DEFAULT_MODE, unlink_on_close: bool = True, undo: bool = True
                       ) -> SysVSemaphoreSet:
        """Open the set under ``key``, creating it if missing; owner only if it created it."""
        while True:
            try:
                return cls.create(key, n, initial=initial, mode=mode, unlink_on_close=unlink_on_close,
                                  undo=undo)
            except FileExistsError:
                pass
            try:
                return cls.open(key, undo=undo)
            except FileNotFoundError:
                continue

    def acquire(self, index: int = 0, count: int = 1, *, timeout: float | None = None,
                undo: bool | None = None) -> None:
        """Take ``count`` from semaphore ``index``, waiting while its value is below ``count``.

        Raises:
            Timeout: not enough was available before the timeout; nothing taken.
            OSError: EIDRM, the set was removed while waiting.
        """
        self.apply([(index, -count)], timeout=timeout, undo=undo)

    def release(self, index: int = 0, count: int = 1, *, undo: bool | None = None) -> None:
        """Give ``count`` to semaphore ``index`` (never waits).

        Raises:
            LimitExceeded: the value would pass SEMVMX (32767); nothing changed.
        """
        self.apply([(index, count)], undo=undo)

    def wait_zero(self, index: int = 0, *, timeout: float | None = None) -> None:
        """Wait until semaphore ``index`` is 0.  Raises Timeout if it is not by the timeout."""
        self.apply([(index, 0)], timeout=timeout)

    def apply(self, ops: Iterable[tuple[int, int]], *, timeout: float | None = None,
              undo: bool | None = None) -> None:
        """Perform every ``(index, delta)`` in ``ops`` atomically: all at once, or wait (semtimedop).

        A negative delta takes, a positive one gives, 0 waits for zero.  The call waits until all
        can happen together, or raises Timeout after ``timeout`` seconds (0: try once).

        Raises:
            Timeout: the operations could not all happen in time; none happened.
            IndexError: an index outside 0..n-1; nothing happened.
            LimitExceeded: more operations than SEMOPM, or a value above SEMVMX; nothing happened.
            OSError: EIDRM (the set was removed), EACCES; nothing happened.
            HandleClosed: this handle was closed.
        """
        self._check_open()
        ops = list(ops)
        flags = _SEM_UNDO if (self.undo if undo is None else undo) else 0
        if timeout == 0:
            flags |= _IPC_NOWAIT
        sops = (_Sembuf * len(ops))()
        for i, (index, delta) in enumerate(ops):
            self._check_index(index)
            if not -_SEMVMX <= delta <= _SEMVMX:
                raise ValueError(f"a semaphore delta must be in -{_SEMVMX}..{_SEMVMX} (SEMVMX); got {delta}")
            sops[i].sem_num, sops[i].sem_op, sops[i].sem_flg = index, delta, flags
        deadline = deadline_after(timeout)
        while True:
            left = remaining(deadline)
            ts = None
            if left is not None:
                ts = ctypes.pointer(_Timespec(int(left), int((left % 1) * 1e9)))
            if _libc.semtimedop(self.id, sops, len(ops), ts) == 0:
                return
            err = ctypes.get_errno()
            if err == _errno.EINTR:  # Python's handlers run at the next bytecode; then wait on
                continue
            what = f"{self!r}: semop {ops}"
            if err == _errno.EAGAIN:
                raise lock_error(err, what)
            raise os_error(err, what, limits=_SEM_LIMITS)

    def value(self, index: int = 0) -> int:
        """The value of semaphore ``index`` (GETVAL)."""
        return self._ctl(index, _GETVAL, "reading the value of")

    def values(self) -> list[int]:
        """Every value, read at once (GETALL)."""
        arr = (ctypes.c_ushort * self.n)()
        self._ctl(0, _GETALL, "reading the values of", arr)
        return list(arr)

    def set_value(self, index: int, value: int) -> None:
        """Set semaphore ``index`` to ``value`` (SETVAL); clears every process's undo adjustment."""
        if not 0 <= value <= _SEMVMX:
            raise ValueError(f"a System V semaphore value must be in 0..{_SEMVMX} (SEMVMX); got {value}")
        self._ctl(index, _SETVAL, "setting a value of", value)

    def set_values(self, values: Sequence[int]) -> None:
        """Set every value at once (SETALL); clears all undo adjustments."""
        if len(values) != self.n or not all(0 <= v <= _SEMVMX for v in values):
            raise ValueError(f"set_values needs {self.n} values in 0..{_SEMVMX}; got {list(values)}")
        self._ctl(0, _SETALL, "setting the values of", (ctypes.c_ushort * self.n)(*values))

    def last_pid(self, index: int = 0) -> int:
        """The pid of the last process that changed semaphore ``index`` (GETPID); 0 if none."""
        return self._ctl(index, _GETPID, "reading the last pid of")

    def waiters(self, index: int = 0) -> tuple[int, int]:
        """How many processes wait on semaphore ``index``: (for an increase, for zero)."""
        return (self._ctl(index, _GETNCNT, "counting waiters of"),
                self._ctl(index, _GETZCNT, "counting waiters of"))

    def unlink(self) -> None:
        """Remove the set now (IPC_RMID); blocked waiters get OSError(EIDRM)."""
        self._check_open()
        self.unlink_on_close = False
        self._ctl(0, _IPC_RMID, "removing", check_index=False)

    def release_ownership(self) -> None:
        """Hand the duty to remove on: close() will no longer remove the set."""
        self.owner = False
        self.unlink_on_close = False

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.n:
            raise IndexError(f"semaphore index {index} is outside 0..{self.n - 1} of {self!r}")

    def _ctl(self, index: int, cmd: int, what: str, arg: int | ctypes.Array[ctypes.c_ushort] = 0,
             check_index: bool = True) -> int:
        self._check_open()
        if check_index:
            self._check_index(index)
        with translating(f"{what} {self!r}", limits=_SEM_LIMITS):
            return _semctl(self.id, index, cmd, arg)

    def _close(self) -> None:
        if self.unlink_on_close:
            self.unlink_on_close = False
            try:
                _semctl(self.id, 0, _IPC_RMID)
            except OSError as exc:
                if exc.errno not in (_errno.EIDRM, _errno.EINVAL):  # removed already: fine
                    raise

    def __repr__(self) -> str:
        key = "IPC_PRIVATE" if not self.key else f"{self.key:#x}"
        flags = (" owner" if self.owner else "") + (" closed" if self.closed else "")
        return f"<SysVSemaphoreSet key={key} id={self.id} n={self.n}{flags}>"
