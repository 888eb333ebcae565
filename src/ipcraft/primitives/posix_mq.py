"""POSIX message queues (mq_overview(7)): named queues of whole messages, each with a priority.

The kernel keeps message boundaries, delivers the oldest message of the highest priority first, and
blocks a sender while the queue holds ``maxmsg`` messages.  On Linux the descriptor is a file
descriptor, so a queue can be watched with select/poll/epoll.

Decisions:

* **posix_ipc makes the system calls**; this module adds the three constructors (create, open,
  open_or_create), ownership (only the creator unlinks), size checks that name their knob and error
  translation (``_errors.py`` only).
  The queue is always opened read-write.
* **Timeouts are the kernel's own** (mq_timedsend/mq_timedreceive), so a timed wait costs no CPU and
  ends on time.  ``timeout=0`` is the non-blocking form; there is no ``block=`` flag, and the
  descriptor itself never gets O_NONBLOCK (select/epoll users rely on ``recv(timeout=0)``).
* **A signal whose handler returns does not end a wait** (PEP 475): the call resumes with the time
  left.  A handler that raises (Ctrl-C) ends it with that exception.
* **unlink() does not wake anyone**: the kernel keeps an unlinked queue alive for every process that
  has it open, and they can go on using it.  A waiter with a timeout gets Timeout; ipcraft.queue()
  (``_transports/mq.py``) additionally notices an unlinked name and ends a blocked wait.
* **Notification** (mq_notify) is one-shot and fires only when a message arrives in an *empty* queue
  while nobody is blocked in recv.  A callback runs in a new thread; its exceptions go to
  ``sys.unraisablehook`` (posix_ipc would drop them).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal as _signal
import sys
import types
from collections.abc import Callable
from typing import Any

import posix_ipc

from .._errors import translated, translating
from .._names import DEFAULT_MODE, validate_name
from .._resource import Handle
from .._wait import deadline_after, remaining
from ..errors import MessageTooLarge
from . import _mq_common as _common
from ._mapping import Owned, open_or_create

__all__ = ("PosixMessageQueue", "unlink_message_queue", "PRIORITY_MAX")

#: The highest priority the kernel accepts (MQ_PRIO_MAX - 1).
PRIORITY_MAX: int = posix_ipc.QUEUE_PRIORITY_MAX

#: The kernel's absolute ceilings for a process with CAP_SYS_RESOURCE (HARD_MSGMAX, HARD_MSGSIZEMAX).
_HARD_MSGMAX = 65536
_HARD_MSGSIZEMAX = 16 * 1024 * 1024


def _kind_name(name: str) -> str:
    return "/" + validate_name(name, "POSIX message queue")


class PosixMessageQueue(Owned, Handle):
    """A POSIX message queue, from :meth:`create`, :meth:`open` or :meth:`open_or_create`.

    ``send(data, priority)`` appends a message; ``recv()`` returns ``(data, priority)`` for the oldest
    message of the highest priority.  The handle made by ``create()`` is the ``owner``: ``close()``
    also unlinks the name (unless ``unlink_on_close`` is set to False or ownership was released).
    Handles made by ``open()`` never unlink, and ownership never crosses fork(): a child's copy of
    the owner handle is not the owner.  ``with queue:`` closes it on exit.

    .. versionadded:: 0.1
    """

    _mq: Any = None
    _notifying: bool = False

    def __init__(self, mq: Any, owner: bool) -> None:
        """Wrap an open posix_ipc.MessageQueue; use the classmethods instead."""
        self._mq = mq
        self._name: str = mq.name
        if owner:
            self._take_ownership()
        self._maxmsg: int = mq.max_messages
        self._msgsize: int = mq.max_message_size

    # -- opening -------------------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, *, maxmsg: int | None = None, msgsize: int | None = None,
               mode: int = DEFAULT_MODE) -> PosixMessageQueue:
        """Create the queue ``name`` (``"/jobs"`` or ``"jobs"``) exclusively; this handle owns it.

        ``maxmsg`` (messages held) and ``msgsize`` (largest message) default to
        /proc/sys/fs/mqueue/msg_default and msgsize_default; without CAP_SYS_RESOURCE they may not
        exceed msg_max and msgsize_max.  ``mode`` is the permission bits (default 0600).

        Raises:
            InvalidEndpoint: a malformed name (checked before the kernel sees it).
            FileExistsError: a queue of that name exists.
            LimitExceeded: maxmsg/msgsize above the system maximum (EINVAL), too many queues
                (queues_max, ENOSPC), or the user's RLIMIT_MSGQUEUE bytes used up (EMFILE).
            PermissionError: /dev/mqueue refuses this user.
        """
        path = _kind_name(name)
        maxmsg = _common.read(_common.MQ_MSG_DEFAULT) if maxmsg is None else _positive("maxmsg", maxmsg)
        msgsize = _common.read(_common.MQ_MSGSIZE_DEFAULT) if msgsize is None else _positive("msgsize", msgsize)
        try:
            mq = posix_ipc.MessageQueue(path, posix_ipc.O_CREX, mode=mode, max_messages=maxmsg,
                                        max_message_size=msgsize)
        except Exception as exc:
            raise translated(exc, f"creating POSIX message queue {path!r} (maxmsg={maxmsg}, "
                             f"msgsize={msgsize})", path, _create_limits(maxmsg, msgsize)) from exc
        return cls(mq, owner=True)

    @classmethod
    def open(cls, name: str) -> PosixMessageQueue:
        """Open the existing queue ``name`` read-write.  This handle never unlinks it.

        Raises:
            InvalidEndpoint: a malformed name.
            FileNotFoundError: no queue of that name.
            PermissionError: its mode does not let this user read and write.
        """
        path = _kind_name(name)
        try:
            mq = posix_ipc.MessageQueue(path, 0)
        except Exception as exc:
            raise translated(exc, f"opening POSIX message queue {path!r}", path) from exc
        return cls(mq, owner=False)

    @classmethod
    def open_or_create(cls, name: str, *, maxmsg: int | None = None, msgsize: int | None = None,
                       mode: int = DEFAULT_MODE) -> PosixMessageQueue:
        """Open ``name``, or create it as :meth:`create` does if it does not exist.

        The handle is the ``owner`` only if it created the queue.  Sizes asked for explicitly must
        match an existing queue's: a mismatch raises FileExistsError naming both (the handle is then
        closed), so a size is never silently ignored.  Raises as create() and open().
        """
        q = open_or_create(lambda: cls.open(name),
                           lambda: cls.create(name, maxmsg=maxmsg, msgsize=msgsize, mode=mode),
                           f"POSIX message queue {name!r}")
        if (maxmsg is not None and q.maxmsg != maxmsg) or (msgsize is not None and q.msgsize != msgsize):
            q.close()
            raise FileExistsError(errno.EEXIST, f"POSIX message queue {q.name!r} exists with "
                                  f"maxmsg={q.maxmsg} msgsize={q.msgsize}; asked for maxmsg="
                                  f"{maxmsg} msgsize={msgsize}", q.name)
        return q

    # -- facts ---------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The queue's name with its leading slash, e.g. ``"/jobs"``."""
        return self._name

    @property
    def maxmsg(self) -> int:
        """How many messages the queue holds before send blocks (mq_maxmsg, fixed at creation)."""
        return self._maxmsg

    @property
    def msgsize(self) -> int:
        """The largest message the queue takes, in bytes (mq_msgsize, fixed at creation)."""
        return self._msgsize

    @property
    def current_messages(self) -> int:
        """Messages in the queue right now (mq_curmsgs).  Raises HandleClosed once closed."""
        mq = self._live()
        try:
            return int(mq.current_messages)
        except Exception as exc:
            raise translated(exc, f"reading the attributes of {self!r}") from exc

    @property
    def mode(self) -> int:
        """The queue's permission bits as the kernel has them now (fstat of the descriptor)."""
        return os.fstat(self.fileno()).st_mode & 0o777

    def fileno(self) -> int:
        """The queue descriptor, a file descriptor on Linux: readable (select/poll/epoll) while the
        queue holds a message, writable while it has room.  Raises HandleClosed once closed."""
        return int(self._live().mqd)

    # -- messages ------------------------------------------------------------------------------------

    def send(self, data: Any, priority: int = 0, timeout: float | None = None) -> None:
        """Append the bytes-like ``data`` as one message with ``priority`` (0 .. PRIORITY_MAX).

        Waits while the queue is full (``maxmsg`` messages): forever if ``timeout`` is None, at most
        ``timeout`` seconds otherwise; ``timeout=0`` never waits.

        Raises:
            MessageTooLarge: ``data`` is longer than msgsize; nothing was sent, the queue is usable.
            ValueError: priority out of range; nothing was sent.
            Timeout: the queue stayed full; nothing was sent, the queue is usable.
            HandleClosed: this handle was closed.
        """
        mq = self._live()
        n = len(data) if data.__class__ is bytes else memoryview(data).nbytes
        if n > self._msgsize:
            raise MessageTooLarge(
                f"a {n}-byte message exceeds msgsize {self._msgsize} of {self!r} (set at create(); "
                f"system maximum {_common.describe(_common.MQ_MSGSIZE_MAX)})", n, self._msgsize)
        if not 0 <= priority <= PRIORITY_MAX:
            raise ValueError(f"priority {priority} is outside 0..{PRIORITY_MAX} (MQ_PRIO_MAX - 1)")
        deadline = deadline_after(timeout)
        try:
            mq.send(data, timeout, priority)
        except Exception as exc:  # noqa: BLE001 (posix_ipc's classes; _after_failure translates)
            self._after_failure(exc, lambda left: mq.send(data, left, priority), deadline,
                                f"sending a {n}-byte message to", f" (full at maxmsg={self._maxmsg})")

    def recv(self, timeout: float | None = None) -> tuple[bytes, int]:
        """Remove and return ``(data, priority)`` of the oldest message of the highest priority.

        Waits while the queue is empty: forever if ``timeout`` is None, at most ``timeout`` seconds
        otherwise; ``timeout=0`` never waits.

        Raises:
            Timeout: no message arrived in time; the queue is usable.
            HandleClosed: this handle was closed.
        """
        mq = self._live()
        deadline = deadline_after(timeout)
        try:
            return mq.receive(timeout)  # type: ignore[no-any-return]
        except Exception as exc:  # noqa: BLE001 (posix_ipc's classes; _after_failure translates)
            return self._after_failure(exc, mq.receive, deadline, "receiving from")  # type: ignore[no-any-return]

    def _after_failure(self, exc: Exception, retry: Callable[[float | None], Any], deadline: float | None,
                       doing: str, detail: str = "") -> Any:
        """Translate the failure of a send/recv; after a signal whose handler returned (EINTR),
        retry with the time left (PEP 475) and return what the retry returns."""
        while True:
            err = translated(exc, f"{doing} {self!r}{detail}")
            if not isinstance(err, InterruptedError):
                raise err
            try:
                return retry(remaining(deadline))
            except Exception as again:  # noqa: BLE001 - translated on the next pass
                exc = again

    def request_notification(self, callback: Callable[[], object] | None = None, *,
                             signal: int | None = None) -> None:
        """Ask the kernel to tell this process once when a message arrives in the empty queue.

        Pass ``callback`` (called with no arguments in a new thread) or ``signal`` (a signal
        number sent to this process); neither cancels a registration.  The registration is
        consumed by the notification: request again to be told again.  No notification is sent
        while another process is blocked in recv, and only one process can be registered.

        Raises:
            Busy: another process is registered; nothing changed.
            ValueError: both callback and signal given, or a bad signal number.
        """
        mq = self._live()
        note: Any = None
        if callback is not None and signal is not None:
            raise ValueError("pass either callback or signal, not both")
        if signal is not None:
            if not 1 <= int(signal) < _signal.NSIG:
                raise ValueError(f"signal {signal} is not a signal number (1..{_signal.NSIG - 1})")
            note = int(signal)
        elif callback is not None:
            note = (_run_callback, callback)
        with translating(f"requesting notification on {self!r}"):
            mq.request_notification(note)
        self._notifying = note is not None

    # -- removal and closing -------------------------------------------------------------------------

    def unlink(self) -> None:
        """Remove the name now.  Open handles (here and in other processes) keep working; the
        kernel frees the queue when the last is closed.  This handle is no longer the owner.

        Raises:
            FileNotFoundError: the name was already gone; the handle is usable.
        """
        self._live()
        self.release_ownership()
        _unlink(self._name)

    def _live(self) -> Any:
        mq = self._mq
        if mq is None:
            self._raise_closed()
        return mq

    def _close(self) -> None:
        mq, self._mq = self._mq, None
        if mq is None:
            return
        try:
            if self._notifying:
                with contextlib.suppress(Exception):
                    mq.request_notification(None)
            with translating(f"closing {self!r}"):
                mq.close()
        finally:
            if self._unlinks_on_close():
                self.release_ownership()
                with contextlib.suppress(FileNotFoundError):
                    _unlink(self._name)

    def __repr__(self) -> str:
        owner = " owner" if self.owner else ""
        state = "closed" if self._closed or self._mq is None else "open"
        return (f"<PosixMessageQueue {getattr(self, '_name', '?')!r} maxmsg={getattr(self, '_maxmsg', '?')} "
                f"msgsize={getattr(self, '_msgsize', '?')}{owner} {state}>")


def unlink_message_queue(name: str) -> None:
    """Remove the POSIX message queue ``name`` (for tools such as ``ipcraft rm``).

    Raises FileNotFoundError if there is none, PermissionError if this user may not remove it.
    """
    _unlink(_kind_name(name))


def _unlink(path: str) -> None:
    with translating(f"unlinking POSIX message queue {path!r}", path):
        posix_ipc.unlink_message_queue(path)


def _positive(what: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, not {value!r}")
    return value


def _run_callback(callback: Callable[[], object]) -> None:
    """posix_ipc's SIGEV_THREAD entry: run the user's callback, reporting (never dropping) errors."""
    try:
        callback()
    except BaseException as exc:  # noqa: BLE001 - a notification thread has nobody to raise to
        # The hook takes any object with these attributes (sys.UnraisableHookArgs is not public).
        sys.unraisablehook(types.SimpleNamespace(
            exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__,
            err_msg="Exception ignored in a PosixMessageQueue notification callback", object=callback))


def _create_limits(maxmsg: int, msgsize: int) -> dict[int, str]:
    """The knobs behind mq_open's limit errors, for this maxmsg/msgsize."""
    # RLIMIT_MSGQUEUE counts maxmsg * (msgsize + a pointer) plus a tree node per message (ipc/mqueue.c).
    need = maxmsg * (msgsize + 8) + min(maxmsg, _HARD_MSGMAX) * 40
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        fds_full = len(os.listdir("/proc/self/fd")) >= nofile - 1
    except OSError:
        fds_full = False
    emfile = (f"RLIMIT_NOFILE (ulimit -n) = {nofile} open files" if fds_full else
              f"{_common.rlimit_msgqueue()}, and this queue needs about {need} bytes of it")
    return {
        errno.EINVAL: (f"maxmsg={maxmsg} or msgsize={msgsize} exceeds {_common.describe(_common.MQ_MSG_MAX)} or "
                       f"{_common.describe(_common.MQ_MSGSIZE_MAX)} (a process with CAP_SYS_RESOURCE may go up "
                       f"to {_HARD_MSGMAX} and {_HARD_MSGSIZEMAX})"),
        errno.ENOSPC: (f"{_common.describe(_common.MQ_QUEUES_MAX)} queues on the system (CAP_SYS_RESOURCE "
                       "exceeds it)"),
        errno.EMFILE: emfile,
    }
