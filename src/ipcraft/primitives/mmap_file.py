"""A regular file mapped into memory (mmap MAP_SHARED): views, msync, resize.

Decisions:

* **The whole file is mapped**, as with shared memory; the views, resize and remap rules are those of
  ``ipcraft.primitives._mapping`` (every view counted, resize refused with BufferError while views live,
  close never fails on views, growth reserved with posix_fallocate so a full disk is an error now and
  not a SIGBUS later).
* **A mapped file is durable**: ``close()`` never deletes it, whoever created it.  There is no owner;
  remove the file with ``os.unlink`` when it is no longer wanted.
* **flush() is msync(2), through ipcraft._native** (which releases the GIL while MS_SYNC waits for the
  disk; CPython's ``mmap.flush`` has no MS_ASYNC).  Without a flush the kernel still writes dirty pages
  back on its own schedule (/proc/sys/vm/dirty_expire_centisecs), and every process mapping the file
  sees writes at once either way: flush is about the disk, not about other processes.
* ``mode`` at create is applied exactly (fchmod), as for shared memory: the umask does not narrow it.

.. versionadded:: 0.1
"""

from __future__ import annotations

import errno
import os
from typing import Any

from .. import _native
from .._errors import check_rc, translating
from .._names import DEFAULT_MODE
from ..errors import InvalidEndpoint
from ._mapping import FileMapping, check_mode, check_size, create_file, no_constructor, open_or_create

__all__ = ("MappedFile",)


def _check_path(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    if not isinstance(p, str):
        raise InvalidEndpoint(f"a MappedFile path must be a str or os.PathLike[str], not {type(p).__name__}")
    if not p or "\0" in p:
        raise InvalidEndpoint(f"a MappedFile path must be non-empty and without NUL: {p!r}")
    return p


class MappedFile(FileMapping):
    """A regular file mapped whole and shared (MAP_SHARED): its bytes as a memoryview or numpy array.

    Writes through :attr:`buf` go to the page cache, so every process mapping (or reading) the file
    sees them at once; :meth:`flush` (msync) makes them durable on disk.  The file's length is the
    mapping's size: :meth:`resize` changes both.  Touching a page beyond the end of the file (after
    another process shrank it) is answered by the kernel with SIGBUS.

    Make one with :meth:`create`, :meth:`open` or :meth:`open_or_create`;
    ``repr``: ``<MappedFile '/var/lib/app/table' size=1048576 readonly>``.

    .. versionadded:: 0.1
    """

    _path: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        no_constructor(type(self))

    @classmethod
    def _new(cls, path: str | os.PathLike[str]) -> MappedFile:
        self = cls.__new__(cls)
        self._path = _check_path(path)
        return self

    @classmethod
    def create(cls, path: str | os.PathLike[str], size: int, mode: int = DEFAULT_MODE, *,
               reserve: bool = True) -> MappedFile:
        """Create the file ``path`` (exclusively) of ``size`` zero bytes with exactly ``mode``, and map it.

        The name appears only once the file is fully sized (it is made unnamed with O_TMPFILE and then
        linked), so an opener never finds it empty.  With ``reserve`` the disk blocks are allocated now
        (posix_fallocate), so a full filesystem is reported here instead of killing a writer with SIGBUS
        later.  If anything fails no file is left.

        Raises:
            InvalidEndpoint: an empty path or one with NUL.  ValueError: ``size`` < 1 or a bad mode.
            FileExistsError: ``path`` exists (errno EEXIST).
            LimitExceeded: no room on the filesystem, or RLIMIT_FSIZE.
        """
        self = cls._new(path)
        label = f"the file {self._path!r}"
        size, mode = check_size(size, label), check_mode(mode)
        fd = create_file(self._path, size, mode, reserve, f"create {label} of {size} bytes",
                         self._space_limits())
        try:
            self._attach(fd, False, label)
        except BaseException:
            os.unlink(self._path)
            raise
        return self

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, readonly: bool = False) -> MappedFile:
        """Map the existing file ``path`` whole, read-write or (``readonly``) read-only.

        Raises:
            FileNotFoundError: no such file.  PermissionError: the file's mode refuses this access.
            ValueError: the file is empty (mmap cannot map 0 bytes); nothing stays open.
        """
        self = cls._new(path)
        label = f"the file {self._path!r}"
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        with translating(f"open {label}", self._path):
            fd = os.open(self._path, flags)
        self._attach(fd, readonly, label)
        return self

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], size: int, mode: int = DEFAULT_MODE, *,
                       reserve: bool = True) -> MappedFile:
        """Map ``path`` if it exists (at its own length), else create it as :meth:`create` does."""
        return open_or_create(lambda: cls.open(path), lambda: cls.create(path, size, mode, reserve=reserve),
                              f"the file {os.fspath(path)!r}")

    @property
    def path(self) -> str:
        """The path the file was opened by."""
        return self._path

    def flush(self, offset: int = 0, size: int | None = None, *, sync: bool = True) -> None:
        """Write the dirty pages of ``size`` bytes from ``offset`` (default: all) back to the file: msync.

        ``sync=True`` (MS_SYNC) returns once they are on the disk; ``sync=False`` (MS_ASYNC) only
        schedules the write-back (on Linux the kernel already tracks dirty pages, so MS_ASYNC returns
        at once).  The range is widened to whole pages, as msync requires.

        Raises:
            ValueError: the range leaves the mapping; nothing written.
            OSError: the write-back failed (e.g. EIO); the handle is still usable.
            HandleClosed: the handle is closed.
        """
        self._check_open()
        if size is None:
            size = self._size - offset
        if offset < 0 or size < 0 or offset + size > self._size:
            raise ValueError(f"cannot flush {size} bytes at offset {offset} of {self!r}: the mapping "
                             f"has {self._size} bytes")
        assert self._mmap is not None
        check_rc(_native.msync(self._mmap, offset, size, sync), f"msync {self!r}", self._path)

    def _space_limits(self) -> dict[int, str]:
        return {**super()._space_limits(),
                errno.ENOSPC: f"free space on the filesystem holding {self._path!r} (see df)",
                errno.EDQUOT: f"this user's disk quota on the filesystem holding {self._path!r}"}

    def __repr__(self) -> str:
        return self._repr(repr(self._path))
