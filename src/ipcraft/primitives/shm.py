"""Shared memory segments: POSIX (a file in /dev/shm) and System V (a key), as memoryviews and arrays.

Decisions:

* **No resource tracker.**  CPython's ``multiprocessing.shared_memory`` registers every segment it
  *opens* with ``resource_tracker``, which unlinks it when that process exits: a reader that only
  attached destroys the writer's segment (python/cpython#82300).  ipcraft never registers anything.
  The handle made by ``create()`` is the *owner* and unlinks on ``close()`` (unless
  ``unlink_on_close`` is set False or :meth:`release_ownership` was called); a handle made by
  ``open()`` never unlinks on its own.  A crash of the owner leaves the segment behind (the kernel does
  not know who owns a name); ``ipcraft rm`` or :func:`unlink_posix_shm` clears it.
* **POSIX segments are published whole.**  ``shm_open(O_CREAT|O_EXCL)`` followed by ``ftruncate``
  leaves a window in which an opener finds a 0-byte segment.  ``create()`` instead makes an unnamed
  file in /dev/shm (``O_TMPFILE``), sets its mode, sizes and reserves it, and only then gives it its
  name with ``link()``, which fails atomically with EEXIST (``_mapping.create_file``).  A creator
  killed half-way leaves nothing.  glibc's ``shm_open`` is itself an ``open()`` of a file in the tmpfs
  at /dev/shm, so these files are POSIX shared memory to every other program.
* **The tmpfs limit.**  /dev/shm is a tmpfs with a size (``df /dev/shm``; by default half of RAM).
  A page of a segment is allocated when first written; if the tmpfs is full then, the writer dies of
  SIGBUS.  ``create()`` and ``resize()`` therefore reserve the bytes with ``posix_fallocate`` (unless
  ``reserve=False``) and report a full /dev/shm as :class:`~ipcraft.errors.LimitExceeded` naming it.
* **System V segments are detached by their last user.**  sysv_ipc lets ``detach()`` run while
  memoryviews of the segment exist (the next access would crash) and never detaches on its own.  The
  segment object here is a subclass that detaches when its last reference goes; every memoryview holds
  one, so the memory stays attached exactly as long as something can reach it.  An explicit
  :meth:`SysVSharedMemory.detach` with views alive raises BufferError instead.
* **System V cannot resize**: ``shmget`` fixes the size at creation and ``shmctl(IPC_SET)`` cannot
  change it.  :meth:`SysVSharedMemory.resize` raises NotImplementedError saying so.

.. versionadded:: 0.1
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from typing import Any

from .._errors import translating
from .._names import DEFAULT_MODE, validate_name
from ._mapping import (
    FileMapping,
    Owned,
    check_mode,
    check_size,
    create_file,
    no_constructor,
    open_or_create,
)
from ._sysv_shm import SysVSharedMemory, remove_sysv_shm

__all__ = ("PosixSharedMemory", "SysVSharedMemory", "unlink_posix_shm", "remove_sysv_shm", "SHM_DIR")

#: Where Linux keeps POSIX shared memory (glibc's shm_open opens files here).
SHM_DIR = "/dev/shm"

_KIND = "POSIX shared memory"


def _tmpfs_limits() -> Mapping[int, str]:
    try:
        st = os.statvfs(SHM_DIR)
        room = f"{st.f_blocks * st.f_frsize} bytes, {st.f_bavail * st.f_frsize} free"
    except OSError:
        room = "size unknown"
    return {errno.ENOSPC: f"the size of the tmpfs mounted at {SHM_DIR} ({room}; see df {SHM_DIR}, "
                          f"raise it with mount -o remount,size=N {SHM_DIR})",
            errno.EFBIG: "RLIMIT_FSIZE (ulimit -f)"}


class PosixSharedMemory(Owned, FileMapping):
    """A POSIX shared memory segment: a named file in the tmpfs at /dev/shm, mapped MAP_SHARED.

    Every process that opens the name maps the same pages, so a write through :attr:`buf` or an array
    from :meth:`as_numpy` is visible to all of them at once (synchronising access is up to you).  The
    name lives until it is unlinked; the memory lives until the name is unlinked *and* every process
    has closed it and dropped its views.  The handle made by :meth:`create` is the owner and unlinks
    the name on :meth:`close`; handles made by :meth:`open` never do.

    Make one with :meth:`create`, :meth:`open` or :meth:`open_or_create`; ``repr`` shows the state,
    e.g. ``<PosixSharedMemory '/frames' size=4096 owner>``.

    .. versionadded:: 0.1
    """

    _name: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        no_constructor(type(self))

    @classmethod
    def _new(cls, bare: str) -> PosixSharedMemory:
        self = cls.__new__(cls)
        self._name = "/" + bare
        return self

    @classmethod
    def create(cls, name: str, size: int, mode: int = DEFAULT_MODE, *,
               reserve: bool = True) -> PosixSharedMemory:
        """Create the segment ``name`` of ``size`` bytes (zero-filled) with exactly ``mode``; fail if it exists.

        The name appears only once the segment is fully sized (see the module notes).  ``mode`` is
        applied as given (the umask does not narrow it).  With ``reserve`` the pages are allocated in
        /dev/shm now, so a full tmpfs is reported here instead of as SIGBUS in a writer later.  The
        returned handle is the owner: closing it unlinks the name.

        Raises:
            InvalidEndpoint: ``name`` is not one path component of at most 255 bytes.
            ValueError: ``size`` < 1 or ``mode`` outside 0o777.
            FileExistsError: the name exists (errno EEXIST).
            LimitExceeded: /dev/shm has no room for ``size`` bytes (names the tmpfs size), or too many
                open files.
        """
        bare = validate_name(name, _KIND)
        self = cls._new(bare)
        label = f"{_KIND} {self._name!r}"
        size, mode = check_size(size, label), check_mode(mode)
        path = os.path.join(SHM_DIR, bare)
        fd = create_file(path, size, mode, reserve, f"create {label} of {size} bytes", _tmpfs_limits())
        try:
            self._attach(fd, False, label)
        except BaseException:
            os.unlink(path)
            raise
        self._take_ownership()
        return self

    @classmethod
    def open(cls, name: str, *, readonly: bool = False) -> PosixSharedMemory:
        """Open the existing segment ``name`` and map all of it; this handle never unlinks the name.

        With ``readonly`` the file is opened O_RDONLY and mapped PROT_READ: views are read-only and
        only read permission is needed.

        Raises:
            InvalidEndpoint: ``name`` is not one path component of at most 255 bytes.
            FileNotFoundError: no segment has that name (errno ENOENT).
            PermissionError: the segment's mode refuses this user (errno EACCES).
            ValueError: the segment is empty (its creator has not sized it).
        """
        bare = validate_name(name, _KIND)
        self = cls._new(bare)
        path = os.path.join(SHM_DIR, bare)
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_NOFOLLOW | os.O_CLOEXEC
        label = f"{_KIND} {self._name!r}"
        with translating(f"open {label}", path):
            fd = os.open(path, flags)
        self._attach(fd, readonly, label)
        return self

    @classmethod
    def open_or_create(cls, name: str, size: int, mode: int = DEFAULT_MODE, *,
                       reserve: bool = True) -> PosixSharedMemory:
        """Open ``name`` if it exists (at its own size), else create it as :meth:`create` does.

        ``owner`` tells which happened.  Safe against a concurrent create or unlink of the name.

        Raises:
            The errors of :meth:`open` and :meth:`create`, except FileNotFoundError/FileExistsError.
        """
        return open_or_create(lambda: cls.open(name), lambda: cls.create(name, size, mode, reserve=reserve),
                              f"{_KIND} {name!r}")

    @property
    def _path(self) -> str:
        return os.path.join(SHM_DIR, self._name[1:])

    @property
    def name(self) -> str:
        """The segment's name, with its leading '/' (as shm_open spells it)."""
        return self._name

    def unlink(self) -> None:
        """Remove the name now (shm_unlink).  Mappings, this one included, stay valid until closed.

        Afterwards the name can be created again, by anyone, as a new segment.

        Raises:
            FileNotFoundError: the name was already unlinked (errno ENOENT); the handle is still usable.
            PermissionError: this user may not remove it; the handle is still usable.
        """
        self._check_open()
        with translating(f"unlink {self!r}", self._path):
            os.unlink(self._path)
        self.release_ownership()

    def _close(self) -> None:
        try:
            if self._unlinks_on_close() and self._fd >= 0:
                self._unlink_if_ours()
        finally:
            super()._close()

    def _unlink_if_ours(self) -> None:
        # The name may have been unlinked and created anew by someone else: unlink only our file.
        path = self._path
        mine = os.fstat(self._fd)
        try:
            there = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return
        if (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
            with translating(f"unlink {self!r}", path):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    def __repr__(self) -> str:
        return self._repr(repr(self._name), *self._owner_words())


def unlink_posix_shm(name: str) -> None:
    """Remove the POSIX shared memory name ``name`` (shm_unlink), whoever created it.

    Raises:
        InvalidEndpoint: a bad name.  FileNotFoundError: no such segment.  PermissionError: not allowed.
    """
    path = os.path.join(SHM_DIR, validate_name(name, _KIND))
    with translating(f"unlink {_KIND} {name!r}", path):
        os.unlink(path)
