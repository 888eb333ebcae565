"""Signals: scoped handlers, real-time signals with a payload (sigqueue), and signalfd.

Decisions — handlers vs signalfd vs sigwaitinfo, the three ways to receive a signal:

* **Python handlers (signal.signal)** run only in the main thread, later, between bytecodes, and get
  only the signal number: no sender pid, no payload.  Python's C-level handler just sets a flag, so
  two arrivals of one signal before the handler runs are seen once, even for queued real-time
  signals.  But they need no signal blocked anywhere and coexist with KeyboardInterrupt.  That fits
  "tell me when SIGTERM/SIGUSR1 arrives while this block runs": :class:`SignalReceiver` installs
  them for a scope, puts each arrival in a queue plus a self-pipe (so :meth:`SignalReceiver.recv`
  can sleep with a timeout in any thread), and restores the previous handlers on close.
* **sigwaitinfo/sigtimedwait** (signal.sigtimedwait) give a siginfo, but Python's struct_siginfo
  omits si_value, so the payload of sigqueue() is lost; they also block a thread and cannot join a
  select/epoll loop.  Not used.
* **signalfd** gives the kernel's whole siginfo (signal, code, sender pid and uid, si_int/si_ptr),
  reads every queued real-time signal exactly once and in order, and is an fd for select/epoll.  The
  price: the signals must be blocked in *every* thread, or the kernel delivers them to a thread that
  does not block them (running the handler or the default action, e.g. death) instead of queueing
  them for the fd.  :class:`SignalFD` blocks them in the creating thread; threads started later
  inherit that mask, threads that already run do not — create it before starting threads.  Python
  has no signalfd, so it is called through ctypes (not a hot path), and the 128-byte
  struct signalfd_siginfo is decoded with struct.
* **sigqueue** is missing from Python too; it is called through ctypes.  Its union sigval argument
  is passed as a long (both members fit one integer register on Linux's 64-bit ABIs).

.. versionadded:: 0.1
"""

from __future__ import annotations

import collections
import ctypes
import errno as _errno
import os
import select
import signal
import struct
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any, NamedTuple

from .._errors import os_error, translating
from .._resource import FdHandle, Handle
from .._wait import deadline_after, wait_fd
from ..errors import Timeout

__all__ = ("SignalReceiver", "SignalFD", "SigInfo", "sigqueue", "SI_USER", "SI_KERNEL", "SI_QUEUE", "SI_TKILL")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sigqueue.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.signalfd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_libc.sigaddset.argtypes = [ctypes.c_void_p, ctypes.c_int]
_libc.sigemptyset.argtypes = [ctypes.c_void_p]
_SFD_NONBLOCK, _SFD_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_SIGSET_BYTES = 128  # glibc's sigset_t
_SIGINFO = struct.Struct("=IiiIIiIIIIiiQQQQHHiQI28x")  # struct signalfd_siginfo, 128 bytes
_SIGPENDING = "RLIMIT_SIGPENDING (ulimit -i): too many signals queued to the receiver's user"

#: si_code values (<asm-generic/siginfo.h>) that say who sent a signal.
SI_USER, SI_KERNEL, SI_QUEUE, SI_TKILL = 0, 0x80, -1, -6


def _signums(signals: Iterable[int | signal.Signals]) -> frozenset[int]:
    nums = frozenset(int(s) for s in signals)
    if not nums:
        raise ValueError("name at least one signal")
    for s in nums:
        if not 1 <= s < signal.NSIG:
            raise ValueError(f"{s} is not a signal number (1..{signal.NSIG - 1})")
        if s in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(f"{signal.Signals(s).name} cannot be caught, blocked or read")
    return nums


def sigqueue(pid: int, sig: int | signal.Signals, value: int = 0) -> None:
    """Send ``sig`` to process ``pid`` with the integer payload ``value`` (sigqueue(3)).

    Real-time signals (signal.SIGRTMIN..SIGRTMAX) queue: each send is delivered once, in order,
    up to the receiver's RLIMIT_SIGPENDING.  Standard signals coalesce while pending.  The receiver
    sees ``value`` as si_int (:attr:`SigInfo.value` from a :class:`SignalFD`) and si_code SI_QUEUE.

    Raises:
        ValueError: ``value`` does not fit a C int; nothing sent.
        ProcessLookupError: no process ``pid``.
        PermissionError: not allowed to signal it.
        LimitExceeded: the receiver's queue is full (EAGAIN, RLIMIT_SIGPENDING).
    """
    if not -(2**31) <= value < 2**31:
        raise ValueError(f"a signal payload travels as si_int, a C int (-2**31..2**31-1); got {value}")
    sig = int(sig)
    if _libc.sigqueue(pid, sig, value) != 0:
        err = ctypes.get_errno()
        raise os_error(err, f"sigqueue({pid}, {_name(sig)}, {value})", limits={_errno.EAGAIN: _SIGPENDING})


def _name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        if signal.SIGRTMIN <= sig <= signal.SIGRTMAX:
            return f"SIGRTMIN+{sig - signal.SIGRTMIN}"
        return str(sig)


class SigInfo(NamedTuple):
    """What the kernel knows about one delivered signal (from struct signalfd_siginfo)."""

    signo: int  #: the signal number
    code: int  #: si_code: SI_USER (kill), SI_QUEUE (sigqueue), SI_TKILL, SI_KERNEL, or a kernel reason
    pid: int  #: the sender's pid (for SI_USER/SI_QUEUE/SI_TKILL and SIGCHLD)
    uid: int  #: the sender's real uid
    value: int  #: si_int: sigqueue's integer payload
    ptr: int  #: si_ptr: the same payload as a 64-bit word
    status: int  #: exit status or signal, for SIGCHLD


class SignalReceiver(Handle):
    """Catch some signals while a block runs, then put the previous handlers back.

    ``with SignalReceiver({signal.SIGTERM, signal.SIGUSR1}) as rx: ... rx.recv(timeout=5)``

    Entering installs a Python handler for each signal that queues its number; :meth:`recv` takes
    the oldest (waiting with a timeout, from any thread).  ``close()`` — the end of the ``with``
    block — restores exactly the handlers that were installed before.  Signals that arrived and were
    not received are dropped on close.

    Python runs signal handlers only in the main thread, so the receiver must be created there.
    Two arrivals of one signal before Python runs its handler are seen once (see the module
    docstring); for counted or payload-carrying signals use :class:`SignalFD`.

    .. versionadded:: 0.1
    """

    signals: frozenset[int] = frozenset()
    _old: dict[int, Any] | None = None
    _r: int = -1
    _w: int = -1

    def __init__(self, signals: Iterable[int | signal.Signals]) -> None:
        """Install the handlers now.

        Raises:
            ValueError: no signals, SIGKILL/SIGSTOP, or not called from the main thread; nothing
                was installed.
        """
        self.signals = _signums(signals)
        if threading.current_thread() is not threading.main_thread():
            raise ValueError("a SignalReceiver installs Python signal handlers, which only the main "
                             "thread may do; create it there (or use SignalFD)")
        self._queue: collections.deque[int] = collections.deque()
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old = {}
        try:
            for s in sorted(self.signals):
                self._old[s] = signal.signal(s, self._handler)
        except BaseException:
            self.close()
            raise

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self._queue.append(signum)
        try:
            os.write(self._w, b"\0")
        except OSError:  # pipe full (65536 pending wake-ups) or closed: the queue has the signal
            pass

    def recv(self, timeout: float | None = None) -> int:
        """The oldest caught signal number, waiting up to ``timeout`` seconds (None: forever).

        Raises:
            Timeout: no signal arrived in time.
            HandleClosed: the receiver was closed (its handlers are gone).
        """
        deadline = deadline_after(timeout)
        while True:
            self._check_open()
            if self._queue:
                return self._queue.popleft()
            if not wait_fd(self._r, select.POLLIN, deadline):
                raise Timeout(f"{self!r}: no signal arrived within {timeout} s")
            try:
                os.read(self._r, 4096)
            except BlockingIOError:
                pass

    def pending(self) -> list[int]:
        """The caught signals not yet received, oldest first (they stay queued)."""
        self._check_open()
        return list(self._queue)

    def _close(self) -> None:
        old, self._old = self._old, None
        try:
            for s, handler in (old or {}).items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        finally:
            for fd in (self._r, self._w):
                if fd >= 0:
                    os.close(fd)
            self._r = self._w = -1

    def __repr__(self) -> str:
        names = ",".join(_name(s) for s in sorted(self.signals))
        return f"<SignalReceiver {names}{' closed' if self.closed else ''}>"


class SignalFD(FdHandle):
    """Read delivered signals, with their full siginfo, from a file descriptor (signalfd(2)).

    Creating it blocks ``signals`` in the calling thread (threads started afterwards inherit the
    mask) so that they stay pending for the fd instead of being handled; see the module docstring
    for why every thread must block them.  Each :meth:`recv` returns one :class:`SigInfo` — real-time
    signals one per sigqueue(), in order, with their payload.  The fd is readable (select, poll,
    epoll) while a signal is pending.  ``with sfd:`` closes it.

    ``close()`` discards instances of ``signals`` still pending, then unblocks the signals it
    blocked (those already blocked before stay blocked), so nothing pending is delivered to a default
    action that would kill the process.

    .. versionadded:: 0.1
    """

    signals: frozenset[int] = frozenset()
    _unblock: frozenset[int] = frozenset()

    def __init__(self, signals: Iterable[int | signal.Signals]) -> None:
        """Block ``signals`` in this thread and open a non-blocking signalfd for them.

        Raises:
            ValueError: no signals, or SIGKILL/SIGSTOP; nothing changed.
            LimitExceeded: out of file descriptors.
        """
        self.signals = _signums(signals)
        mask = ctypes.create_string_buffer(_SIGSET_BYTES)
        _libc.sigemptyset(mask)
        for s in self.signals:
            _libc.sigaddset(mask, s)
        before = signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
        self._unblock = frozenset(self.signals - {int(s) for s in before})
        fd = _libc.signalfd(-1, mask, _SFD_NONBLOCK | _SFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            self._restore_mask()
            raise os_error(err, "creating a signalfd")
        self._fd = fd

    def recv(self, timeout: float | None = None) -> SigInfo:
        """The next pending signal, waiting up to ``timeout`` seconds (None: forever, 0: poll).

        Raises:
            Timeout: none arrived in time; the handle is usable.
            HandleClosed: the handle was closed.
        """
        return self.recv_many(1, timeout)[0]

    def recv_many(self, max_count: int = 64, timeout: float | None = None) -> list[SigInfo]:
        """Up to ``max_count`` pending signals in one read(2), waiting for the first one."""
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, not {max_count}")
        fd = self.fileno()
        deadline = deadline_after(timeout)
        while True:
            try:
                with translating(f"reading {self!r}"):
                    data = os.read(fd, _SIGINFO.size * max_count)
                break
            except BlockingIOError:
                if not wait_fd(fd, select.POLLIN, deadline):
                    raise Timeout(f"{self!r}: no signal arrived within {timeout} s") from None
        return [_siginfo(data, off) for off in range(0, len(data), _SIGINFO.size)]

    def _restore_mask(self) -> None:
        if self._unblock:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self._unblock)
            self._unblock = frozenset()

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            while True:  # discard what is pending, so unblocking delivers nothing
                try:
                    if not os.read(fd, _SIGINFO.size * 64):
                        break
                except BlockingIOError:
                    break
        finally:
            os.close(fd)
            self._restore_mask()

    def __repr__(self) -> str:
        names = ",".join(_name(s) for s in sorted(self.signals))
        return f"<SignalFD {names}{' closed' if self._fd < 0 else f' fd={self._fd}'}>"


def _siginfo(data: bytes, offset: int) -> SigInfo:
    (signo, _errno, code, pid, uid, _fd, _tid, _band, _overrun, _trapno, status, value, ptr,
     *_rest) = _SIGINFO.unpack_from(data, offset)
    return SigInfo(signo=signo, code=code, pid=pid, uid=uid, value=value, ptr=ptr, status=status)
