"""Anonymous pipes: a one-way byte stream between a process and the children it forks.

Decisions:

* **One handle owns both ends.**  ``Pipe()`` is ``pipe2(O_CLOEXEC)``; after ``fork()`` each side closes
  the end it does not use (``close_read()`` in the writer, ``close_write()`` in the reader), exactly as
  with ``os.pipe()``, and ``close()`` closes whatever is left.  Two classes for two ends would not make
  that dance any shorter, and one object keeps PIPE_BUF, capacity and non-blocking mode in one place.
* **The fds stay in the mode the user chose** (blocking by default, like ``os.pipe``): the flag is
  shared with every process that inherits the fd.  Timeouts work in either mode (see
  ``primitives/_pipeio.py``).
* **EOF and EPIPE are exceptions**: ChannelClosed when every writer is gone and the pipe is drained,
  PeerVanished when writing with no reader left.

.. versionadded:: 0.1
"""

from __future__ import annotations

import os

from .._errors import translating
from .._resource import Handle
from ..errors import HandleClosed
from ._pipeio import PipeIO

__all__ = ("Pipe",)


class Pipe(Handle, PipeIO):
    """An anonymous pipe (``pipe2``): bytes written to the write end come out of the read end, in order.

    The kernel keeps up to :attr:`capacity` bytes (64 KiB by default, see :meth:`set_capacity`); a
    writer blocks when the pipe is full, a reader when it is empty.  Reading after every write end is
    closed drains what is left, then reports end of file (:class:`~ipcraft.errors.ChannelClosed`);
    writing after every read end is closed fails with EPIPE
    (:class:`~ipcraft.errors.PeerVanished`).

    **Atomicity**: a write of at most :attr:`PIPE_BUF` (4096) bytes is never interleaved with data from
    other writers, so several processes may share one pipe to send records of up to PIPE_BUF bytes.
    Longer writes may be split and interleaved.

    Both fds are close-on-exec; pass ``read_fd``/``write_fd`` to ``subprocess`` with ``pass_fds=`` to
    hand one to a program.  ``with Pipe() as p:`` closes both ends on exit.

    Args:
        blocking: False opens both ends with O_NONBLOCK (see :meth:`set_blocking`).
        capacity: if given, :meth:`set_capacity` is called with it.

    Raises:
        LimitExceeded: RLIMIT_NOFILE or fs.file-max is reached, or ``capacity`` exceeds a limit
            (nothing is left open).

    .. versionadded:: 0.1
    """

    _rfd: int = -1
    _wfd: int = -1

    def __init__(self, *, blocking: bool = True, capacity: int | None = None) -> None:
        flags = os.O_CLOEXEC | (0 if blocking else os.O_NONBLOCK)
        with translating("creating a pipe"):
            self._rfd, self._wfd = os.pipe2(flags)
        self._nonblock = not blocking
        if capacity is not None:
            try:
                self.set_capacity(capacity)
            except BaseException:
                self.close()
                raise

    @property
    def read_fd(self) -> int:
        """The read end's fd.  Raises HandleClosed once it is closed."""
        return self._end(False)

    @property
    def write_fd(self) -> int:
        """The write end's fd.  Raises HandleClosed once it is closed."""
        return self._end(True)

    def close_read(self) -> None:
        """Close the read end (in the writing process).  Idempotent."""
        fd, self._rfd = self._rfd, -1
        if fd >= 0:
            os.close(fd)

    def close_write(self) -> None:
        """Close the write end (in the reading process): once every copy of it is closed, the reader
        drains the pipe and then gets end of file.  Idempotent."""
        fd, self._wfd = self._wfd, -1
        if fd >= 0:
            os.close(fd)

    def _close(self) -> None:
        try:
            self.close_read()
        finally:
            self.close_write()

    def _end(self, write: bool) -> int:
        fd = self._wfd if write else self._rfd
        if fd < 0:
            if self._closed:
                self._raise_closed()
            raise HandleClosed(f"the {'write' if write else 'read'} end of {self!r} is closed")
        return fd

    def _fds(self) -> list[int]:
        return [fd for fd in (self._rfd, self._wfd) if fd >= 0]

    def __repr__(self) -> str:
        if self._closed:
            return "<Pipe closed>"
        ends = " ".join(f"{name}={fd}" for name, fd in (("read_fd", self._rfd), ("write_fd", self._wfd))
                        if fd >= 0) or "both ends closed"
        return f"<Pipe {ends}{'' if not self._nonblock else ' non-blocking'}>"
