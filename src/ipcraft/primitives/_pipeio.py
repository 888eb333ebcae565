"""Reading and writing pipe and FIFO fds with timeouts, and pipe capacity: shared by Pipe and Fifo.

Decisions:

* **The fd's O_NONBLOCK flag belongs to the user.**  It lives in the open file description, which a
  forked child or an exec'd program shares, so ipcraft never flips it behind the user's back (trio's
  warning about non-blocking stdio).  An operation without a timeout on a blocking fd is the plain
  system call and the kernel does the waiting.  An operation with a timeout needs a try that cannot
  block: on a non-blocking fd that is the plain call; on a blocking pipe it is ``preadv2``/``pwritev2``
  with ``RWF_NOWAIT`` (one system call, the flag applies to this call only); where the kernel refuses
  RWF_NOWAIT (FIFOs, older kernels: EOPNOTSUPP) ipcraft polls first and then reads, or writes at most
  PIPE_BUF bytes, which POLLOUT guarantees room for.  Only a second reader or writer racing on the
  same blocking fd between the poll and the call can then make it wait past its timeout.
* **End of file is an exception** (ChannelClosed), not ``b""``: a read that returns means data.
* **A timed-out write reports how much it wrote** (``Timeout.written``): a byte stream cannot take
  back a partial write, and the caller must know where it stands.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import select
import termios
from typing import Any, Final

from .._errors import os_error
from .._wait import POLLIN, POLLOUT, deadline_after, wait_fd
from ..errors import ChannelClosed, PeerVanished, Timeout

_RWF_NOWAIT: Final = getattr(os, "RWF_NOWAIT", 0)
_PIPE_MAX_SIZE: Final = "/proc/sys/fs/pipe-max-size"
_DEFAULT_READ: Final = 65536


def _read_knob(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


class OneShotIO:
    """One read or one write on a pipe or FIFO fd that never blocks, whatever its O_NONBLOCK flag.

    The primitives' pipes and FIFOs and the fd byte streams under channels (pipe://, fifo://) share it.
    ``_nonblock`` says the fd is non-blocking (then the plain call is the try); on a blocking fd the
    try is ``preadv2``/``pwritev2`` with RWF_NOWAIT, and where the kernel refuses that (EOPNOTSUPP,
    EINVAL) a poll(2) with a zero timeout and then the call, a write then taking at most PIPE_BUF bytes,
    which POLLOUT guarantees room for.
    """

    #: Writes of at most this many bytes are atomic: they are never interleaved with other writers'
    #: data and, on a non-blocking fd, happen whole or not at all (POSIX; 4096 on Linux).
    PIPE_BUF: Final[int] = select.PIPE_BUF

    _nonblock: bool = False
    _nowait: bool = bool(_RWF_NOWAIT)  # RWF_NOWAIT works on this fd until the kernel says otherwise

    def _read_now(self, fd: int, view: memoryview) -> int:
        """One read that never blocks; BlockingIOError if there is nothing to read yet."""
        if self._nonblock:
            return os.readv(fd, [view])
        if self._nowait:
            try:
                return os.preadv(fd, [view], -1, _RWF_NOWAIT)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self._nowait = False
        if not wait_fd(fd, POLLIN, 0.0):
            raise BlockingIOError(errno.EAGAIN, "no data")
        return os.readv(fd, [view])

    def _write_now(self, fd: int, views: list[memoryview]) -> int:
        """One write of (a prefix of) ``views`` that never blocks; BlockingIOError if no byte fits yet."""
        if self._nonblock:
            return os.writev(fd, views) if len(views) > 1 else os.write(fd, views[0])
        if self._nowait:
            try:
                return os.pwritev(fd, views, -1, _RWF_NOWAIT)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self._nowait = False
        if not wait_fd(fd, POLLOUT, 0.0):
            raise BlockingIOError(errno.EAGAIN, "no room")
        return os.write(fd, views[0][:self.PIPE_BUF])  # POLLOUT promises room for PIPE_BUF bytes


class PipeIO(OneShotIO):
    """The byte-stream surface of a pipe end: read, write, capacity, non-blocking mode.

    A subclass provides ``_end(write)`` (the fd of that direction, or raises) and ``_fds()`` (every
    open fd it holds).
    """

    def _end(self, write: bool) -> int:
        raise NotImplementedError

    def _fds(self) -> list[int]:
        raise NotImplementedError

    # -- reading ------------------------------------------------------------------------------------

    def read(self, size: int = _DEFAULT_READ, *, timeout: float | None = None) -> bytes:
        """Read up to ``size`` bytes: whatever is in the pipe, as soon as at least one byte is.

        Args:
            size: the most bytes to return (> 0).
            timeout: seconds to wait for data; None waits for ever, 0 only takes what is there.

        Raises:
            ChannelClosed: end of file: every write end is closed and the pipe is empty.  The handle
                stays open; every later read raises again.
            Timeout: no data arrived in time; the handle is usable.
            HandleClosed / io.UnsupportedOperation: no read end is open.
        """
        if size <= 0:
            raise ValueError(f"size must be > 0, not {size}")
        buf = bytearray(size)
        n = self.read_into(buf, timeout=timeout)
        return bytes(memoryview(buf)[:n])

    def read_into(self, buffer: Any, *, timeout: float | None = None) -> int:
        """Read into the writable ``buffer``; return the number of bytes read (> 0).  As :meth:`read`."""
        fd = self._end(False)
        view = memoryview(buffer).cast("B")
        if not len(view):
            raise ValueError("read_into needs a non-empty buffer")
        deadline = None
        while True:
            try:
                if timeout is None:
                    n = os.readv(fd, [view])  # blocking fd: the kernel waits
                else:
                    n = self._read_now(fd, view)
                break
            except BlockingIOError:
                if deadline is None:
                    deadline = deadline_after(timeout)
                if not wait_fd(fd, POLLIN, deadline):
                    raise Timeout(f"reading from {self!r}: no data within {timeout} s") from None
            except OSError as exc:
                raise os_error(exc.errno or errno.EIO, f"reading from {self!r}") from exc
        if n == 0:
            raise ChannelClosed(f"end of file on {self!r}: every write end is closed and the pipe is empty")
        return n

    # -- writing ------------------------------------------------------------------------------------

    def write(self, data: Any, *, timeout: float | None = None) -> int:
        """Write all of ``data``; return its length.

        A write of at most :attr:`PIPE_BUF` bytes is one system call and atomic: several processes
        writing such records to one pipe never interleave them.  A longer write may be split by the
        kernel and interleaved with other writers' data.

        Raises:
            PeerVanished: no process has the read end open any more (EPIPE; Python ignores SIGPIPE,
                so the writer is not killed).  Part of ``data`` may have been written.
            Timeout: the reader did not make room in time.  ``exc.written`` says how many bytes were
                written before; the handle is usable.
            HandleClosed / io.UnsupportedOperation: no write end is open.
        """
        fd = self._end(True)
        view = memoryview(data).cast("B")
        total = len(view)
        sent = 0
        deadline = None
        while sent < total:
            try:
                if timeout is None:
                    n = os.write(fd, view[sent:])  # blocking fd: the kernel waits for room
                else:
                    n = self._write_now(fd, [view[sent:]])
            except BlockingIOError:
                if deadline is None:
                    deadline = deadline_after(timeout)
                if not wait_fd(fd, POLLOUT, deadline):
                    raise Timeout(f"writing to {self!r}: the reader made no room within {timeout} s; "
                                  f"{sent} of {total} bytes were written", written=sent) from None
                continue
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    raise PeerVanished(f"writing to {self!r}: no process has the read end open any more "
                                       f"(EPIPE); {sent} of {total} bytes were written", errno.EPIPE) from None
                raise os_error(exc.errno or errno.EIO, f"writing to {self!r}") from exc
            sent += n
        return total

    # -- kernel attributes --------------------------------------------------------------------------

    @property
    def available(self) -> int:
        """Bytes waiting in the pipe to be read (FIONREAD)."""
        buf = bytearray(4)
        fcntl.ioctl(self._end(False), termios.FIONREAD, buf)
        return int.from_bytes(buf, "little")

    @property
    def capacity(self) -> int:
        """How many bytes the pipe holds before a writer blocks (F_GETPIPE_SZ; 65536 by default)."""
        return int(fcntl.fcntl(self._any_fd(), fcntl.F_GETPIPE_SZ))

    def set_capacity(self, size: int) -> int:
        """Ask the kernel for a capacity of at least ``size`` bytes; return the capacity granted.

        The kernel rounds up to a power-of-two number of pages.  Unprivileged processes may not exceed
        /proc/sys/fs/pipe-max-size (1 MiB by default) nor their share of
        /proc/sys/fs/pipe-user-pages-soft/-hard; root (CAP_SYS_RESOURCE) may.

        Raises:
            LimitExceeded: a limit refused it (errno EPERM); the message names the knob.  The
                capacity is unchanged and the handle usable.
            OSError(EBUSY): ``size`` is smaller than the data now in the pipe; unchanged, usable.
        """
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= 2**31:
            raise ValueError(f"a pipe capacity is an int from 1 to 2**31 bytes, not {size!r}")
        fd = self._any_fd()
        try:
            return int(fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size))
        except OSError as exc:
            what = f"setting the capacity of {self!r} to {size} bytes"
            if exc.errno == errno.EBUSY:
                raise OSError(errno.EBUSY, f"{what}: the pipe holds more data than that would fit "
                              f"(EBUSY); read some first, or ask for more") from None
            top = _read_knob(_PIPE_MAX_SIZE)
            if top is not None and size > top:
                knob = f"{_PIPE_MAX_SIZE} = {top}; only root (CAP_SYS_RESOURCE) may exceed it"
            else:
                knob = ("/proc/sys/fs/pipe-user-pages-soft and -hard: this user's pipes already hold "
                        "too many pages")
            raise os_error(exc.errno or errno.EPERM, what, limits={errno.EPERM: knob}) from exc

    def _any_fd(self) -> int:
        fds = self._fds()
        if not fds:
            self._end(False)  # raises the right error
        return fds[0]

    @property
    def blocking(self) -> bool:
        """Whether this handle's fds are in blocking mode (no O_NONBLOCK)."""
        return not self._nonblock

    def set_blocking(self, blocking: bool) -> None:
        """Set or clear O_NONBLOCK on every fd this handle holds.

        In non-blocking mode the kernel fails a read of an empty pipe and a write to a full one with
        EAGAIN, and writes more than PIPE_BUF bytes partially.  ipcraft's own methods wait as their
        ``timeout`` says in either mode.

        .. warning:: The flag lives in the open file description: every process sharing the fd (a
           forked child, a program it was passed to) sees the change.
        """
        for fd in self._fds():
            os.set_blocking(fd, blocking)
        self._nonblock = not blocking


def unsupported(obj: object, what: str) -> io.UnsupportedOperation:
    return io.UnsupportedOperation(f"{obj!r} {what}")
