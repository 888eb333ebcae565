"""What PosixSharedMemory and MappedFile share: a file mapped whole with mmap(MAP_SHARED), its views.

Decisions:

* **Every view counts.**  ``buf`` returns a *new* memoryview of the mmap object on each call, and numpy
  views are built on such a memoryview.  The mmap object therefore counts every live view (slices and
  arrays included), and refuses to unmap while one exists, so no view can ever point at unmapped
  memory: Python code cannot crash by touching a view.
* **close() never fails on views.**  With views alive, ``close()`` closes the file descriptor and lets
  go of the mmap object; the views keep it alive, and it unmaps itself when the last one is released.
  (CPython's ``SharedMemory.close()`` raises BufferError instead and stays open: a handle neither
  usable nor closed.)
* **resize()/remap() refuse with BufferError while views exist**, before changing anything: a mapping
  cannot move or shrink under a memoryview.  Release the views (``del``, ``view.release()``), then
  resize, then take new views.
* **Growing reserves the bytes** (``posix_fallocate``) unless ``reserve=False``.  A sparse page of a
  MAP_SHARED file is allocated only when first written; if the filesystem (the tmpfs of /dev/shm, or a
  disk) is full at that moment the kernel answers the page fault with SIGBUS and the process dies.
  Reserving up front turns that into a :class:`~ipcraft.errors.LimitExceeded` at create()/resize() time.
* **Other processes are not told** about a resize: their mappings keep the size they had.  After a
  grow they see the new bytes only after their own ``remap()``; after a *shrink*, a process that
  touches a page beyond the new end gets SIGBUS from the kernel.  Shrink only what nobody else maps.
"""

from __future__ import annotations

import errno
import io
import math
import mmap
import operator
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from .._errors import translating
from .._resource import FdHandle, Handle

if TYPE_CHECKING:
    import numpy

#: open_or_create: rounds of "open -> missing -> create -> exists" before giving up.
RETRIES = 100

H = TypeVar("H")

# O_TMPFILE needs Linux >= 3.11 and filesystem support; linking it needs /proc/self/fd.
_TMPFILE_OK = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")

_ADDRESS_SPACE = ("this process's address space (RLIMIT_AS, ulimit -v) or the kernel's overcommit "
                  "policy (/proc/sys/vm/overcommit_memory)")


def check_size(size: object, what: str) -> int:
    """Return ``size`` as an int >= 1, or raise TypeError/ValueError naming ``what``."""
    try:
        n = operator.index(size)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"the size of {what} must be an int, not {type(size).__name__}") from None
    if n < 1:
        raise ValueError(f"the size of {what} must be at least 1 byte, not {n} (mmap cannot map 0 bytes)")
    return n


def check_mode(mode: object) -> int:
    """Return ``mode`` as permission bits, or raise ValueError."""
    m = operator.index(mode)  # type: ignore[arg-type]
    if not 0 <= m <= 0o777:
        raise ValueError(f"mode must be permission bits between 0o000 and 0o777, not {oct(m)}")
    return m


def no_constructor(cls: type) -> NoReturn:
    """What a handle's __init__ raises: they are made by their classmethods."""
    raise TypeError(f"use {cls.__name__}.create(), .open() or .open_or_create()")


def numpy_view(buf: memoryview, dtype: Any, shape: int | tuple[int, ...] | None, offset: int,
               what: str) -> numpy.ndarray:
    """An ndarray over ``buf`` (no copy) starting ``offset`` bytes in; the whole rest when no shape."""
    try:
        import numpy as np
    except ImportError as exc:
        raise ImportError(f"{what}.as_numpy() needs numpy, which is not installed "
                          "(pip install 'ipcraft[numpy]')") from exc
    dt = np.dtype(dtype)
    total = len(buf)
    offset = operator.index(offset)
    if not 0 <= offset <= total:
        raise ValueError(f"offset {offset} is outside the {total} bytes of {what}")
    room = total - offset
    if dt.itemsize == 0:
        raise ValueError(f"cannot view {what} as {dt}: its items have no size")
    if shape is None:
        dims: tuple[int, ...] = (room // dt.itemsize,)
    else:
        dims = (operator.index(shape),) if not isinstance(shape, tuple) else tuple(map(operator.index, shape))
    need = math.prod(dims) * dt.itemsize
    if any(d < 0 for d in dims) or need > room:
        raise ValueError(f"a {dims} array of {dt} needs {need} bytes at offset {offset}, but {what} has "
                         f"{room} of its {total} bytes left there")
    # frombuffer, not ndarray(buffer=...): the latter keeps only buf.obj as its base and lets go of the
    # buffer export, so the mapping could be resized or unmapped under the array.
    return np.frombuffer(buf, dtype=dt, count=math.prod(dims), offset=offset).reshape(dims)


def create_file(path: str, size: int, mode: int, reserve: bool, what: str,
                limits: Mapping[int, str]) -> int:
    """Create ``path`` exclusively with ``size`` bytes and exactly ``mode``, published whole; its fd.

    The file is made unnamed (O_TMPFILE) in the target directory, chmod'ed, sized (and reserved), and
    only then linked to ``path``: link() fails atomically with EEXIST, an opener never sees it empty,
    and a creator killed half-way leaves nothing.  Where O_TMPFILE is unsupported the file is created
    under its name (O_CREAT|O_EXCL) and removed again if sizing it fails.
    """
    directory = os.path.dirname(path) or "."
    with translating(what, path, limits):
        named = not _TMPFILE_OK
        if not named:
            try:
                fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
                    raise
                named = True
        if named:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)
            if reserve:
                os.posix_fallocate(fd, 0, size)
            else:
                os.ftruncate(fd, size)
            if not named:
                _link_fd(fd, path)
        except BaseException:
            os.close(fd)
            if named:
                os.unlink(path)
            raise
    return fd


def _link_fd(fd: int, path: str) -> None:
    """Give the unnamed file ``fd`` the name ``path``: linkat(/proc/self/fd/N, AT_SYMLINK_FOLLOW).

    os.link calls plain link() (which would link the /proc symlink itself: EXDEV) unless a dir_fd is
    given, hence the directory descriptor.
    """
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(fd), path, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def open_or_create(open_: Callable[[], H], create: Callable[[], H], what: str) -> H:
    """``open_()``, else ``create()``, retried while a concurrent create or unlink races with us."""
    for _ in range(RETRIES):
        try:
            return open_()
        except FileNotFoundError:
            pass
        try:
            return create()
        except FileExistsError:
            pass
    raise FileExistsError(errno.EEXIST, f"open_or_create {what}: it kept appearing and vanishing "
                                        f"for {RETRIES} rounds")


class MemoryHandle(Handle):
    """Base of the handles whose memory is shared: size, readonly, buf, numpy views, repr."""

    _size: int = 0
    _readonly: bool = False

    @property
    def size(self) -> int:
        """The number of bytes this handle maps (another process may have resized it since)."""
        self._check_open()
        return self._size

    @property
    def readonly(self) -> bool:
        """True when mapped read-only: views and arrays are read-only, resize() is refused."""
        return self._readonly

    @property
    def buf(self) -> memoryview:
        """A new memoryview of the whole memory; each subclass says how it is exported."""
        raise NotImplementedError

    def as_numpy(self, dtype: Any, shape: int | tuple[int, ...] | None = None,
                 offset: int = 0) -> numpy.ndarray:
        """A numpy array over the memory, starting ``offset`` bytes in, sharing it (no copy).

        Without ``shape`` the array is 1-D and covers whole items up to the end.  The array is
        read-only when the handle is.  Like :attr:`buf`, it keeps the memory mapped while it lives and
        blocks resize()/detach().

        Raises:
            ImportError: numpy is not installed.
            ValueError: the array does not fit between ``offset`` and the end (nothing created).
        """
        return numpy_view(self.buf, dtype, shape, offset, repr(self))

    def _repr(self, identity: str, *flags: str) -> str:
        words = [identity, f"size={self._size}", *flags]
        if self._readonly:
            words.append("readonly")
        if self._closed:
            words.append("closed")
        return f"<{type(self).__name__} {' '.join(words)}>"


class Owned:
    """The owner duty of named objects: only the creator's handle unlinks on close.

    Ownership belongs to the creating *process*: the copy of an owner handle that a fork()ed child
    inherits is not the owner, so a child closing what it inherited never removes the parent's object.
    """

    _owner: bool = False
    _owner_pid: int = -1
    #: Whether close() unlinks (removes) the object; True for the owner made by create(), settable.
    unlink_on_close: bool = False

    @property
    def owner(self) -> bool:
        """True for the handle made by create(), in the creating process, until release_ownership()."""
        return self._owner and self._owner_pid == os.getpid()

    def release_ownership(self) -> None:
        """Stop being the owner: close() will no longer unlink the name (someone else will)."""
        self._owner = self.unlink_on_close = False

    def _take_ownership(self) -> None:
        self._owner = self.unlink_on_close = True
        self._owner_pid = os.getpid()

    def _unlinks_on_close(self) -> bool:
        return self.owner and self.unlink_on_close

    def _owner_words(self) -> tuple[str, ...]:
        return ("owner",) if self.owner else ()


class FileMapping(FdHandle, MemoryHandle):
    """Base of the mmap-backed handles: an fd, its whole-file MAP_SHARED mapping, views, resize."""

    _mmap: mmap.mmap | None = None

    def _attach(self, fd: int, readonly: bool, what: str) -> None:
        """Take ownership of ``fd`` and map the file's current length.  Closes ``fd`` on failure."""
        self._fd, self._readonly = fd, readonly
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise ValueError(f"{what} is empty (0 bytes), and mmap cannot map 0 bytes; its creator "
                                 "has not sized it yet, or it must be resized first")
            self._mmap, self._size = self._map(size, what), size
        except BaseException:
            self.close()
            raise

    def _map(self, size: int, what: str) -> mmap.mmap:
        prot = mmap.PROT_READ if self._readonly else mmap.PROT_READ | mmap.PROT_WRITE
        with translating(f"mmap {size} bytes of {what}", limits={errno.ENOMEM: _ADDRESS_SPACE}):
            return mmap.mmap(self._fd, size, flags=mmap.MAP_SHARED, prot=prot)

    def _space_limits(self) -> Mapping[int, str]:
        """errno -> the knob that limits how big the file can grow (for LimitExceeded)."""
        return {errno.EFBIG: "the largest file this filesystem allows, or RLIMIT_FSIZE (ulimit -f)"}

    def _set_length(self, old: int, new: int, reserve: bool, what: str) -> None:
        """ftruncate (and posix_fallocate the growth); on failure the length is ``old`` again."""
        with translating(f"resize {what} from {old} to {new} bytes", limits=self._space_limits()):
            try:
                if new > old and reserve:
                    os.posix_fallocate(self._fd, old, new - old)  # extends the length too
                else:
                    os.ftruncate(self._fd, new)
            except BaseException:
                try:
                    os.ftruncate(self._fd, old)
                except OSError:
                    pass
                raise

    @property
    def buf(self) -> memoryview:
        """A new memoryview of the whole mapping (read-only if the handle is); no copy.

        Writes through it are seen at once by every process mapping the same file.  The view stays
        valid after :meth:`close` (the memory stays mapped until the last view is released) and
        blocks :meth:`resize` while it lives.  Raises HandleClosed once closed.
        """
        self._check_open()
        assert self._mmap is not None
        return memoryview(self._mmap)

    def resize(self, size: int, *, reserve: bool = True) -> None:
        """Change the file's length to ``size`` bytes (ftruncate) and map it again at the new size.

        With ``reserve`` (the default) the bytes added are allocated now with posix_fallocate, so a full
        filesystem is reported here rather than killing a writer with SIGBUS later.  The mapping may
        move: take views again afterwards.  Other processes keep their old mapping size until they
        call :meth:`remap`; a process touching a page beyond a *shrunk* end gets SIGBUS.

        Raises:
            BufferError: views (memoryviews or arrays) of the current mapping are alive; nothing changed.
            io.UnsupportedOperation: the handle is read-only; nothing changed.
            LimitExceeded: the filesystem has no room (the message names it); nothing changed.
            HandleClosed: the handle is closed.
        """
        self._check_open()
        new = check_size(size, repr(self))
        if self._readonly:
            raise io.UnsupportedOperation(f"cannot resize {self!r}: it was opened read-only")
        self._replace_mapping(new, reserve)

    def remap(self) -> None:
        """Map the file again at its current length, after another process resized it.

        Raises:
            BufferError: views of the current mapping are alive; nothing changed.
            ValueError: the file is now empty; nothing changed.
            HandleClosed: the handle is closed.
        """
        self._check_open()
        self._replace_mapping(None, False)

    def _replace_mapping(self, new: int | None, reserve: bool) -> None:
        remap_only = new is None
        what = repr(self)
        if new is None:
            new = os.fstat(self._fd).st_size
            if new == 0:
                raise ValueError(f"cannot remap {what}: another process truncated it to 0 bytes, and "
                                 "mmap cannot map 0 bytes; nothing changed")
        assert self._mmap is not None
        try:
            self._mmap.close()
        except BufferError:
            raise BufferError(
                f"cannot remap {what}: memoryviews or numpy arrays of the current mapping are still "
                "alive, and the mapping cannot move or shrink under them; release them first "
                "(del them, or view.release())") from None
        self._mmap = None
        old = self._size
        try:
            if new != old and not remap_only:
                self._set_length(old, new, reserve, what)
            self._mmap, self._size = self._map(new, what), new
        except BaseException:
            try:  # the length is unchanged after a failed _set_length: map the old size again
                self._mmap = self._map(old, what)
            except BaseException:  # noqa: BLE001 (closed, then the first error re-raised below)
                self.close()
            raise

    def _close(self) -> None:
        m, self._mmap = self._mmap, None
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass  # views are alive: they keep the mmap object, which unmaps when the last goes
        super()._close()
