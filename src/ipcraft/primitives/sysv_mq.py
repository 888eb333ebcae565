"""System V message queues (sysvipc(7), msgop(2)): keyed queues whose messages carry a type.

Every message has a type > 0.  ``recv(type=0)`` takes the oldest message, ``recv(type=n)`` the
oldest of type n, ``recv(type=-n)`` the oldest of the lowest type <= n, and with
``except_type=True`` (MSG_EXCEPT) the oldest whose type is not n: a receiver can fetch out of order.
A sender blocks while the queue's bytes would exceed ``qbytes``.  The queue lives until someone
removes it (IPC_RMID); removal wakes every waiter with EIDRM at once.

Decisions:

* **sysv_ipc makes the common calls** (msgget, msgsnd, msgrcv, msgctl).  Its per-object
  ``max_message_size`` (default 2048) is set to the kernel's msgmax at open, so the only size limit
  is the kernel's.  sysv_ipc has neither MSG_EXCEPT nor MSG_NOERROR, so a receive that asks for
  either (or for a ``max_size``) calls libc's msgrcv through ctypes, which also releases the GIL.
* **Timeouts by polling.**  msgrcv/msgsnd have no timed form and a queue has no descriptor, so a
  wait with a timeout retries IPC_NOWAIT with a pause growing from 50 us to 5 ms (``_wait.
  retry_until``): a message that arrives is taken within about as long as the wait had lasted (at
  most 5 ms later), the last pause is cut to the time left, so the wait ends 0.1-0.5 ms after the
  deadline, and each poll wakes a vCPU (30-50 us here), so a long wait burns about 1.5-3.5 % of a
  core (measured on the 2-vCPU development VM under varying load: benchmarks/mq_overhead.py
  --poll-cost).  A wait without a timeout is the kernel's blocking call and costs nothing.  (A thread
  blocking in msgrcv on our behalf could steal a message after the caller gave up; a timer signal
  would need a process-wide signal number.  Both were rejected.)
* **Types are C ints** because sysv_ipc passes them as int: 1 .. 2**31-1.
* **Sizes are checked before the kernel**: a message above msgmax would be EINVAL, and one above the
  queue's qbytes would block forever; both are MessageTooLarge naming the limit.
* **A queue removed under a handle** gives OSError(EIDRM) ("Identifier removed") on every later
  call, including a call that was waiting; the handle stays open until closed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sysv_ipc

from .._errors import translated
from .._names import DEFAULT_MODE
from .._resource import Handle
from .._wait import deadline_after, retry_until
from ..errors import MessageTooLarge, Timeout
from . import _mq_common as _common
from ._mapping import Owned, open_or_create

__all__ = ("SysVMessageQueue", "SysVMessageQueueStat", "ftok", "remove_message_queue", "IPC_PRIVATE",
           "TYPE_MAX")

_T = TypeVar("_T")

#: The key that always makes a new queue, reachable only through its id (create() only).
IPC_PRIVATE = 0
#: The largest message type (sysv_ipc passes types as a C int).
TYPE_MAX = 2**31 - 1

_IPC_NOWAIT = 0o4000
_MSG_NOERROR = 0o10000
_MSG_EXCEPT = 0o20000

# msgrcv's EINVAL on a call we validated means the id is gone; ENOMSG (IPC_NOWAIT, nothing there) is
# "not now", which the polling loop knows as Timeout; E2BIG is a message longer than the buffer.
_SEND_REMAP = {errno.EINVAL: errno.EIDRM}
_RECV_REMAP = {errno.EINVAL: errno.EIDRM, errno.ENOMSG: errno.ETIMEDOUT, errno.E2BIG: errno.EMSGSIZE}


def ftok(path: str | os.PathLike[str], proj_id: int = 1) -> int:
    """The System V key ftok(3) makes from an existing file and a project id (1..255).

    The key combines the low 8 bits of ``proj_id``, the low 8 bits of the file's device and the low
    16 bits of its inode, as glibc does, so C programs that call ftok() on the same file meet the
    same queue.  Two files can give the same key.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``proj_id`` outside 1..255.
    """
    if isinstance(proj_id, bool) or not isinstance(proj_id, int) or not 1 <= proj_id <= 255:
        raise ValueError(f"proj_id must be an integer 1..255 (ftok uses its low 8 bits), not {proj_id!r}")
    st = os.stat(path)
    return _signed((proj_id << 24) | ((st.st_dev & 0xFF) << 16) | (st.st_ino & 0xFFFF))


def _signed(key: int) -> int:
    """A key as the signed 32-bit key_t the kernel (and sysv_ipc) takes."""
    if isinstance(key, bool) or not isinstance(key, int):
        raise TypeError(f"a System V key is an int, not {type(key).__name__}")
    if not -(2**31) <= key < 2**32:
        raise ValueError(f"a System V key is a 32-bit number, not {key}")
    key &= 0xFFFFFFFF
    return key - 2**32 if key >= 2**31 else key


@dataclass(frozen=True)
class SysVMessageQueueStat:
    """What msgctl(IPC_STAT) reports about a queue.  Times are seconds since the epoch, 0 = never.

    .. versionadded:: 0.1
    """

    qnum: int  #: messages in the queue
    qbytes: int  #: the most bytes the queue holds
    lspid: int  #: pid of the last msgsnd
    lrpid: int  #: pid of the last msgrcv
    stime: int  #: time of the last msgsnd
    rtime: int  #: time of the last msgrcv
    ctime: int  #: time of the last change (creation, IPC_SET)
    uid: int
    gid: int
    cuid: int
    cgid: int
    mode: int  #: permission bits


class SysVMessageQueue(Owned, Handle):
    """A System V message queue, from :meth:`create`, :meth:`open` or :meth:`open_or_create`.

    ``send(data, type=1)`` appends a message; ``recv(type=0)`` returns ``(data, type)``, choosing
    by type as the kernel does (see the module docstring).  The handle made by ``create()`` is the
    ``owner``: ``close()`` also removes the queue (unless ``unlink_on_close`` is False or ownership
    was released).  Handles made by ``open()`` never remove it, and ownership never crosses fork():
    a child's copy of the owner handle is not the owner.  ``with queue:`` closes it on exit.

    .. versionadded:: 0.1
    """

    _mq: Any = None
    _limit: int = 0

    def __init__(self, mq: Any, owner: bool, msgmax: int) -> None:
        """Wrap an open sysv_ipc.MessageQueue made with max_message_size=msgmax; use the
        classmethods instead."""
        self._mq = mq
        self._key: int = mq.key
        self._id: int = mq.id
        if owner:
            self._take_ownership()
        self._msgmax: int = msgmax  # the kernel's msgmax when opened
        self._qbytes: int = self._read_qbytes()
        self._limit = min(self._msgmax, self._qbytes)  # the largest message send() takes

    # -- opening -------------------------------------------------------------------------------------

    @classmethod
    def create(cls, key: int, *, mode: int = DEFAULT_MODE, qbytes: int | None = None) -> SysVMessageQueue:
        """Create a queue for ``key`` exclusively (IPC_PRIVATE: always a new one); this handle owns it.

        ``key`` is a number, or :func:`ftok` of a file.  ``qbytes`` sets how many bytes the queue
        holds (default /proc/sys/kernel/msgmnb; more needs CAP_SYS_RESOURCE).  ``mode`` is the
        permission bits (default 0600).

        Raises:
            FileExistsError: a queue exists for ``key``.
            LimitExceeded: the system has /proc/sys/kernel/msgmni queues.
            PermissionError: qbytes above msgmnb without CAP_SYS_RESOURCE (nothing is left behind).
        """
        k = _signed(key)
        if qbytes is not None and (isinstance(qbytes, bool) or not isinstance(qbytes, int) or qbytes < 1):
            raise ValueError(f"qbytes must be an integer >= 1, not {qbytes!r}")
        msgmax = _common.read(_common.MSGMAX)
        try:
            mq = sysv_ipc.MessageQueue(k, sysv_ipc.IPC_CREX, mode & 0o777, msgmax)
        except Exception as exc:
            raise translated(exc, f"creating a System V message queue for key {_hex(k)}", limits={
                errno.ENOSPC: f"{_common.describe(_common.MSGMNI)} message queues on the system"}) from exc
        q = cls.__new__(cls)
        try:
            q.__init__(mq, owner=True, msgmax=msgmax)  # type: ignore[misc]
            if qbytes is not None:
                q.qbytes = qbytes
        except BaseException:
            q._mq = None
            with contextlib.suppress(Exception):
                mq.remove()  # leave nothing behind
            raise
        return q

    @classmethod
    def open(cls, key: int) -> SysVMessageQueue:
        """Open the existing queue for ``key``.  This handle never removes it.

        Raises:
            FileNotFoundError: no queue for ``key``.
            PermissionError: its mode does not let this user read and write.
        """
        k = _signed(key)
        try:
            # msgget checks only the permission asked for; ask for read and write, as send and
            # recv will need both.
            msgmax = _common.read(_common.MSGMAX)
            mq = sysv_ipc.MessageQueue(k, 0, 0o600, msgmax)
        except Exception as exc:
            raise translated(exc, f"opening the System V message queue for key {_hex(k)}") from exc
        return cls(mq, owner=False, msgmax=msgmax)

    @classmethod
    def open_or_create(cls, key: int, *, mode: int = DEFAULT_MODE,
                       qbytes: int | None = None) -> SysVMessageQueue:
        """Open the queue for ``key``, or create it as :meth:`create` does.

        The handle is the ``owner`` only if it created the queue.  An explicit ``qbytes`` must match
        an existing queue's: a mismatch raises FileExistsError naming both (the handle is closed).
        """
        q = open_or_create(lambda: cls.open(key), lambda: cls.create(key, mode=mode, qbytes=qbytes),
                           f"the System V message queue for key {_hex(key)}")
        if qbytes is not None and q.qbytes != qbytes:
            q.close()
            raise FileExistsError(errno.EEXIST, f"the System V message queue for key {_hex(key)} "
                                  f"exists with qbytes={q.qbytes}; asked for qbytes={qbytes}")
        return q

    # -- facts ---------------------------------------------------------------------------------------

    @property
    def key(self) -> int:
        """The key the queue was made for (0 for IPC_PRIVATE)."""
        return self._key

    @property
    def id(self) -> int:
        """The kernel's identifier of the queue (msqid), as ``ipcs -q`` shows it."""
        return self._id

    @property
    def current_messages(self) -> int:
        """Messages in the queue right now (msg_qnum)."""
        return int(self._attr("current_messages"))

    @property
    def qbytes(self) -> int:
        """The most bytes the queue holds (msg_qbytes); a sender blocks beyond it.

        Setting it (msgctl IPC_SET) needs the owner's or creator's uid, and CAP_SYS_RESOURCE to go
        above /proc/sys/kernel/msgmnb.  A refused change raises PermissionError and changes nothing.
        """
        return self._qbytes

    @qbytes.setter
    def qbytes(self, value: int) -> None:
        mq = self._live()
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"qbytes must be an integer >= 1, not {value!r}")
        try:
            mq.max_size = value
        except Exception as exc:
            raise translated(exc, f"setting qbytes of {self!r} to {value} (changing it needs the owner's "
                             f"or creator's uid; above {_common.describe(_common.MSGMNB)} it needs "
                             "CAP_SYS_RESOURCE)") from exc
        self._qbytes = self._read_qbytes()
        self._limit = min(self._msgmax, self._qbytes)

    def stat(self) -> SysVMessageQueueStat:
        """The queue's msgctl(IPC_STAT) fields (read one at a time, so not one atomic snapshot)."""
        a = self._attr
        return SysVMessageQueueStat(
            qnum=a("current_messages"), qbytes=a("max_size"), lspid=a("last_send_pid"),
            lrpid=a("last_receive_pid"), stime=a("last_send_time") or 0, rtime=a("last_receive_time") or 0,
            ctime=a("last_change_time") or 0, uid=a("uid"), gid=a("gid"), cuid=a("cuid"), cgid=a("cgid"),
            mode=a("mode") & 0o777)

    # -- messages ------------------------------------------------------------------------------------

    def send(self, data: Any, type: int = 1, timeout: float | None = None) -> None:  # noqa: A002
        """Append the bytes-like ``data`` as one message of ``type`` (1 .. TYPE_MAX).

        Waits while the queue lacks room for it (qbytes): forever if ``timeout`` is None, at most
        ``timeout`` seconds otherwise (by polling; see the module docstring); ``timeout=0`` never
        waits.

        Raises:
            MessageTooLarge: ``data`` exceeds msgmax or the queue's qbytes; nothing was sent.
            ValueError: a type outside 1..TYPE_MAX; nothing was sent.
            Timeout: the queue stayed full; nothing was sent, the queue is usable.
            OSError(EIDRM): the queue was removed (also while waiting).
            HandleClosed: this handle was closed.
        """
        mq = self._live()
        n = len(data) if data.__class__ is bytes else memoryview(data).nbytes
        if timeout is None and n <= self._limit and type.__class__ is int and 1 <= type <= TYPE_MAX:
            try:  # the common case, without the checks and closures below
                mq.send(data, True, type)
                return
            except Exception:  # noqa: BLE001 - nothing was sent; the full path retries and reports
                pass
        if n > self._msgmax or n > self._qbytes:
            limit, source = ((self._msgmax, f"msgmax: {_common.MSGMAX} when the queue was opened")
                             if self._msgmax <= self._qbytes else
                             (self._qbytes, "the queue's qbytes: a larger message would wait forever"))
            raise MessageTooLarge(f"a {n}-byte message exceeds {limit} bytes ({source}) on {self!r}", n, limit)
        if isinstance(type, bool) or not isinstance(type, int) or not 1 <= type <= TYPE_MAX:
            raise ValueError(f"a System V message type is an integer 1..{TYPE_MAX}, not {type!r}")

        def describe() -> str:
            return f"sending a {n}-byte message of type {type} to {self!r}"
        self._call(lambda block: mq.send(data, block, type), timeout, describe, _SEND_REMAP)

    def recv(self, type: int = 0, timeout: float | None = None, *,  # noqa: A002
             except_type: bool = False, max_size: int | None = None,
             truncate: bool = False) -> tuple[bytes, int]:
        """Remove and return ``(data, type)`` of the first message ``type`` selects.

        ``type=0``: the oldest message.  ``type=n > 0``: the oldest of type n (with
        ``except_type=True``, the oldest of any other type).  ``type=-n``: the oldest of the lowest
        type <= n.  Waits while there is none: forever if ``timeout`` is None, at most ``timeout``
        seconds otherwise (by polling); ``timeout=0`` never waits.

        ``max_size`` caps the bytes taken (default: msgmax, so every message fits).  A longer message
        raises MessageTooLarge and stays in the queue, unless ``truncate=True`` (MSG_NOERROR): then
        its first ``max_size`` bytes are returned and the rest is lost.

        Raises:
            Timeout: no matching message in time; the queue is usable.
            MessageTooLarge: the selected message is longer than ``max_size``; it stays queued.
            ValueError: a type outside -TYPE_MAX..TYPE_MAX, or except_type with type <= 0.
            OSError(EIDRM): the queue was removed (also while waiting).
            HandleClosed: this handle was closed.
        """
        mq = self._live()
        if (timeout is None and type.__class__ is int and -TYPE_MAX <= type <= TYPE_MAX
                and not (except_type or truncate) and max_size is None):
            try:  # the common case, without the checks and closures below
                return mq.receive(True, type)  # type: ignore[no-any-return]
            except Exception:  # noqa: BLE001 - nothing was taken; the full path retries and reports
                pass
        if isinstance(type, bool) or not isinstance(type, int) or not -TYPE_MAX <= type <= TYPE_MAX:
            raise ValueError(f"a System V message type to select is an integer -{TYPE_MAX}..{TYPE_MAX}, "
                             f"not {type!r}")
        if except_type and type <= 0:
            raise ValueError(f"except_type (MSG_EXCEPT) selects by a type > 0; the kernel ignores it for "
                             f"type={type}")
        fn: Callable[[bool], tuple[bytes, int]]
        if except_type or truncate or max_size is not None:
            size = self._msgmax if max_size is None else max_size
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"max_size must be an integer >= 0, not {max_size!r}")
            flags = (_MSG_EXCEPT if except_type else 0) | (_MSG_NOERROR if truncate else 0)
            ident = self._id

            def fn(block: bool) -> tuple[bytes, int]:
                return _msgrcv(ident, size, type, flags if block else flags | _IPC_NOWAIT)
        else:
            size = self._msgmax

            def fn(block: bool) -> tuple[bytes, int]:
                return mq.receive(block, type)  # type: ignore[no-any-return]

        def describe() -> str:
            selects = f"type={type}" + (" except_type" if except_type else "")
            return f"receiving ({selects}, up to {size} bytes) from {self!r}"
        try:
            return self._call(fn, timeout, describe, _RECV_REMAP)
        except MessageTooLarge as exc:
            raise MessageTooLarge(
                f"{describe()}: the selected message is longer than {size} bytes; it stays in the queue "
                f"(truncate=True takes its first {size} bytes)", None, size) from exc

    def _call(self, fn: Callable[[bool], _T], timeout: float | None, describe: Callable[[], str],
              remap: dict[int, int]) -> _T:
        """Run ``fn(block)``: blocking (retried after a signal) or polled until the deadline."""
        if timeout is None:
            while True:
                try:
                    return fn(True)
                except Exception as exc:
                    err = translated(exc, describe(), remap=remap)
                    if not isinstance(err, InterruptedError):
                        raise err from exc

        def attempt() -> tuple[_T] | None:  # None: not now (retry_until's "try again")
            try:
                return (fn(False),)
            except Exception as exc:
                err = translated(exc, describe(), remap=remap)
                if isinstance(err, Timeout):
                    return None
                raise err from exc
        got = retry_until(attempt, deadline_after(timeout))
        if got is None:
            raise Timeout(f"{describe()}: timed out after {timeout} s")
        return got[0]

    # -- removal and closing -------------------------------------------------------------------------

    def remove(self) -> None:
        """Remove the queue now (IPC_RMID): its messages are lost, and every handle, here and in
        other processes, gets OSError(EIDRM) from then on (waiters at once).  Closes this handle.

        Raises:
            PermissionError: only the owner's or creator's uid (or root) may remove it; the handle is
                usable.
        """
        mq = self._live()
        try:
            mq.remove()
        except Exception as exc:
            raise translated(exc, f"removing {self!r}") from exc
        self.release_ownership()
        self.close()

    def _live(self) -> Any:
        mq = self._mq
        if mq is None:
            self._raise_closed()
        return mq

    def _attr(self, name: str) -> Any:
        mq = self._live()
        try:
            return getattr(mq, name)
        except Exception as exc:
            raise translated(exc, f"reading {name} of {self!r}") from exc

    def _read_qbytes(self) -> int:
        return int(self._attr("max_size"))

    def _close(self) -> None:
        mq, self._mq = self._mq, None
        if mq is not None and self._unlinks_on_close():
            self.release_ownership()
            try:
                mq.remove()
            except Exception as exc:
                err = translated(exc, f"removing {self!r}")
                if getattr(err, "errno", None) != errno.EIDRM:  # already removed by someone else
                    raise err from exc

    def __repr__(self) -> str:
        owner = " owner" if self.owner else ""
        state = "closed" if self._closed or self._mq is None else "open"
        return (f"<SysVMessageQueue key={_hex(getattr(self, '_key', 0))} id={getattr(self, '_id', '?')} "
                f"qbytes={getattr(self, '_qbytes', '?')}{owner} {state}>")


def remove_message_queue(key: int) -> None:
    """Remove the System V message queue for ``key`` (for tools such as ``ipcraft rm``).

    Raises FileNotFoundError if there is none, PermissionError if this user may not remove it.
    """
    SysVMessageQueue.open(key).remove()


def _hex(key: int) -> str:
    return f"0x{key & 0xFFFFFFFF:08x}"


# -- msgrcv through ctypes, for the flags sysv_ipc does not pass -------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc_msgrcv = _libc.msgrcv
_libc_msgrcv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long, ctypes.c_int)
_libc_msgrcv.restype = ctypes.c_ssize_t
_MTYPE_SIZE = ctypes.sizeof(ctypes.c_long)


def _msgrcv(ident: int, size: int, msgtyp: int, flags: int) -> tuple[bytes, int]:
    """msgrcv(2) into a fresh struct msgbuf of ``size`` bytes; OSError(errno) on failure."""
    buf = ctypes.create_string_buffer(_MTYPE_SIZE + size)
    n = _libc_msgrcv(ident, buf, size, msgtyp, flags)  # ctypes releases the GIL around the call
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.raw[_MTYPE_SIZE:_MTYPE_SIZE + n], ctypes.c_long.from_buffer(buf).value
