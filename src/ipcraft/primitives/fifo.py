"""Named pipes (FIFOs): a pipe with a name in the file system, so unrelated processes can open it.

Decisions:

* **The name and the open end are separate steps**, as in the kernel: ``Fifo.create(path)`` makes the
  node (mkfifo) and ``Fifo.open(path)`` attaches to an existing one; ``open_read()`` /
  ``open_write()`` then open this handle's one end.  Opening is where a FIFO's semantics live (a
  blocking open waits for the other side), and a process often has to create the name, start its
  peer and only then open.
* **Open semantics are the kernel's**: a blocking open waits until the other direction is open; an
  O_NONBLOCK read-open succeeds at once; an O_NONBLOCK write-open with no reader fails with ENXIO,
  which ipcraft keeps as ``OSError`` with ``errno == ENXIO`` and explains.
* **A bounded blocking open** (``timeout=``) has no system call of its own.  A writer retries
  O_NONBLOCK opens until ENXIO stops (backing off from 1 to 20 ms).  A reader opens O_NONBLOCK at once
  and then waits for a writer to appear, which it tells apart from "no writer" with ``tee(2)`` of one
  byte into a scratch pipe (EAGAIN: a writer is there; 0: none yet): unlike a read, tee consumes
  nothing.  The fd is switched back to blocking mode afterwards (it is this open's own description).
* **The creator owns the name** and unlinks it on ``close()`` (unless ``unlink_on_close=False`` or
  ``release_ownership()``), and only if the path still names the FIFO it created.  A handle from
  ``open()`` never unlinks by itself.
* Files are created owner-only (0600) unless ``mode=`` says otherwise; the umask never loosens or
  tightens the mode asked for.

.. versionadded:: 0.1
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import time

from .._errors import os_error, translating
from .._names import DEFAULT_MODE
from .._resource import FdHandle
from .._wait import deadline_after
from ..errors import InvalidEndpoint, Timeout
from ._pipeio import PipeIO, unsupported

__all__ = ("Fifo",)

_SPLICE_F_NONBLOCK = 2
_ING = {"read": "reading", "write": "writing"}


class Fifo(FdHandle, PipeIO):
    """A FIFO special file (``mkfifo``): a pipe that processes find by path.

    Data written by any writer comes out, in order, to whoever reads; the kernel buffers up to
    :attr:`capacity` bytes and nothing touches the disk.  When every writer has closed, a reader drains
    the FIFO and then gets end of file (:class:`~ipcraft.errors.ChannelClosed`); writing when no
    reader is left fails with EPIPE (:class:`~ipcraft.errors.PeerVanished`).  Writes of at most
    :attr:`PIPE_BUF` (4096) bytes are atomic, so many writers may share one FIFO for short records.

    A handle holds at most one open end.  Typical use::

        with Fifo.create("/run/app/in") as f:      # the creator unlinks it on close
            f.open_read()                          # waits for a writer
            while True:
                chunk = f.read()                   # ChannelClosed once every writer has closed

        with Fifo.open("/run/app/in").open_write(timeout=5) as f:
            f.write(b"record")

    .. versionadded:: 0.1
    """

    path: str = ""
    _owner: bool = False
    _unlink_on_close: bool = False
    _ino: tuple[int, int] | None = None
    _direction: str | None = None
    _creator_pid: int = -1

    def __init__(self) -> None:
        self._closed = True  # nothing to release; keeps __del__ quiet
        raise TypeError("a Fifo comes from Fifo.create(), Fifo.open() or Fifo.open_or_create()")

    @classmethod
    def _new(cls, path: str, owner: bool, unlink_on_close: bool, ino: tuple[int, int]) -> Fifo:
        self = object.__new__(cls)
        self.path = path
        self._owner = owner
        self._unlink_on_close = unlink_on_close
        self._ino = ino
        self._creator_pid = os.getpid()
        return self

    # -- the name -----------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, mode: int = DEFAULT_MODE,
               unlink_on_close: bool = True) -> Fifo:
        """Make a new FIFO at ``path`` (exclusively) and return its owner handle, no end open yet.

        Raises:
            FileExistsError: something exists at ``path``.
            FileNotFoundError / PermissionError: the directory is missing or not writable.
            InvalidEndpoint: ``path`` is empty or contains NUL.
        """
        p = _check_path(path)
        with translating(f"creating the FIFO {p}", p):
            os.mkfifo(p, mode)
            try:
                os.chmod(p, mode)  # exactly ``mode``, whatever the umask removed
                st = os.stat(p)
            except BaseException:
                os.unlink(p)
                raise
        return cls._new(p, True, unlink_on_close, (st.st_dev, st.st_ino))

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Fifo:
        """Attach to the existing FIFO at ``path``, no end open yet.  This handle never unlinks it.

        Raises:
            FileNotFoundError: nothing is at ``path``.
            InvalidEndpoint: ``path`` exists but is not a FIFO.
        """
        p = _check_path(path)
        with translating(f"opening the FIFO {p}", p):
            st = os.stat(p)
        if not stat.S_ISFIFO(st.st_mode):
            raise InvalidEndpoint(f"{p} is not a FIFO (it is a {_kind(st.st_mode)})")
        return cls._new(p, False, False, (st.st_dev, st.st_ino))

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], *, mode: int = DEFAULT_MODE,
                       unlink_on_close: bool = True) -> Fifo:
        """:meth:`create` the FIFO if ``path`` is free, else :meth:`open` it (``owner`` tells which)."""
        while True:
            try:
                return cls.create(path, mode=mode, unlink_on_close=unlink_on_close)
            except FileExistsError:
                pass
            try:
                return cls.open(path)
            except FileNotFoundError:  # removed between the two: try again
                continue

    @property
    def owner(self) -> bool:
        """True if this handle created the FIFO and will unlink it on close (see unlink_on_close)."""
        return self._owner and self._unlink_on_close

    def release_ownership(self) -> None:
        """Hand the duty to unlink on: close() will leave the FIFO in place."""
        self._owner = False

    def unlink(self) -> None:
        """Remove the name now.  Open ends keep working; new opens by path fail with ENOENT.

        Raises:
            FileNotFoundError: it was already removed.
        """
        with translating(f"unlinking the FIFO {self.path}", self.path):
            os.unlink(self.path)
        self._owner = False

    # -- the end ------------------------------------------------------------------------------------

    def open_read(self, *, timeout: float | None = None, nonblocking: bool = False) -> Fifo:
        """Open this handle's end for reading; return ``self``.

        The kernel makes a blocking read-open wait until some process opens the FIFO for writing.
        With ``nonblocking=True`` the open succeeds at once, writer or not, and the fd stays
        O_NONBLOCK (a read then fails with EAGAIN while writers are present but the FIFO is empty,
        and returns end of file while no writer is).  ``timeout`` bounds the wait for a writer.

        Raises:
            Timeout: no writer came in time; no end is open, the handle is usable.
            io.UnsupportedOperation: an end is already open.
        """
        return self._open(os.O_RDONLY, "read", timeout, nonblocking)

    def open_write(self, *, timeout: float | None = None, nonblocking: bool = False) -> Fifo:
        """Open this handle's end for writing; return ``self``.

        The kernel makes a blocking write-open wait until some process opens the FIFO for reading.
        With ``nonblocking=True`` and no reader, the open fails at once with ENXIO.  ``timeout`` bounds
        the wait for a reader.

        Raises:
            OSError: errno ENXIO: ``nonblocking=True`` and no process has the FIFO open for reading;
                the handle is usable (open a reader first, or use ``timeout=``).
            Timeout: no reader came in time; no end is open, the handle is usable.
            io.UnsupportedOperation: an end is already open.
        """
        return self._open(os.O_WRONLY, "write", timeout, nonblocking)

    def _open(self, flags: int, direction: str, timeout: float | None, nonblocking: bool) -> Fifo:
        self._check_open()
        if self._fd >= 0:
            raise unsupported(self, f"already has its {self._direction} end open")
        what = f"opening the FIFO {self.path} for {_ING[direction]}"
        flags |= os.O_CLOEXEC
        if nonblocking or timeout is None:
            flags |= os.O_NONBLOCK if nonblocking else 0
            try:
                fd = os.open(self.path, flags)
            except OSError as exc:
                raise _open_error(exc, what, self.path) from None
        else:
            fd = _open_bounded(self.path, flags, direction, deadline_after(timeout), what, timeout)
            os.set_blocking(fd, True)
        self._fd = fd
        self._direction = direction
        self._nonblock = nonblocking
        return self

    @property
    def direction(self) -> str | None:
        """``"read"`` or ``"write"``: which end this handle has open (None if none yet)."""
        return self._direction if self._fd >= 0 else None

    def _end(self, write: bool) -> int:
        fd = self.fileno()  # HandleClosed once closed
        if self._direction != ("write" if write else "read"):
            raise unsupported(self, f"is open for {_ING[self._direction or 'read']}, not "
                                    f"{_ING['write' if write else 'read']}")
        return fd

    def fileno(self) -> int:
        """The open end's fd.  Raises HandleClosed once closed, io.UnsupportedOperation before an open."""
        if self._fd < 0 and not self._closed:
            raise unsupported(self, "has no end open yet: call open_read() or open_write() first")
        return super().fileno()

    def _fds(self) -> list[int]:
        return [self._fd] if self._fd >= 0 else []

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            # A forked child closing its inherited copy must not remove the parent's FIFO.
            if self._owner and self._unlink_on_close and os.getpid() == self._creator_pid:
                self._owner = False
                try:
                    st = os.stat(self.path)
                    if (st.st_dev, st.st_ino) == self._ino:
                        os.unlink(self.path)
                except OSError:
                    pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else (f"{self._direction} fd={self._fd}" if self._fd >= 0
                                               else "not open")
        return f"<Fifo {self.path!r}{' owner' if self.owner else ''} {state}>"


def _check_path(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    if not isinstance(p, str):
        p = os.fsdecode(p)
    if not p or "\0" in p:
        raise InvalidEndpoint(f"a FIFO path must be non-empty and contain no NUL: {p!r}")
    return p


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device")):
        if test(mode):
            return name
    return "special file"


def _open_error(exc: OSError, what: str, path: str) -> Exception:
    if exc.errno == errno.ENXIO:
        return OSError(errno.ENXIO, f"{what} without blocking: no process has it open for reading (ENXIO); "
                       "the kernel refuses a non-blocking write-open until a reader exists. Open the "
                       "reader first, or open with a timeout to wait for one", path)
    return os_error(exc.errno or errno.EIO, what, path)


def _open_bounded(path: str, flags: int, direction: str, deadline: float | None, what: str,
                  timeout: float | None) -> int:
    """A blocking open of ``path`` bounded by ``deadline``; returns an O_NONBLOCK fd."""
    delay = 0.001
    fd = -1
    try:
        while True:
            if fd < 0:
                try:
                    fd = os.open(path, flags | os.O_NONBLOCK)
                except OSError as exc:
                    if exc.errno != errno.ENXIO:  # ENXIO: a write-open while no reader exists yet
                        raise _open_error(exc, what, path) from None
            if fd >= 0 and (direction == "write" or _writer_present(fd)):
                result, fd = fd, -1
                return result
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                peer = "reader" if direction == "write" else "writer"
                raise Timeout(f"{what}: no {peer} opened it within {timeout} s")
            time.sleep(min(delay, deadline - now) if deadline is not None else delay)
            delay = min(delay * 2, 0.02)
    finally:
        if fd >= 0:
            os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.tee.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint)
_libc.tee.restype = ctypes.c_ssize_t


def _writer_present(fd: int) -> bool:
    """Whether a FIFO opened O_RDONLY|O_NONBLOCK has a writer or unread data, consuming nothing."""
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        n = _libc.tee(fd, w, 1, _SPLICE_F_NONBLOCK)
        if n < 0:
            err = ctypes.get_errno()
            if err == errno.EAGAIN:
                return True  # empty, but a writer holds it open
            raise os_error(err, "waiting for a FIFO writer (tee)")
        return bool(n > 0)  # 1: data is waiting; 0: no writer and empty
    finally:
        os.close(r)
        os.close(w)
