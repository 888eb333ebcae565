"""System V shared memory (shmget/shmat) through sysv_ipc; public as ipcraft.primitives.shm.

The decisions are recorded in ``ipcraft.primitives.shm``'s docstring.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

import sysv_ipc

from .._errors import translating_sysv
from .._names import DEFAULT_MODE
from ..errors import HandleClosed, InvalidEndpoint, LimitExceeded
from ._mapping import MemoryHandle, Owned, check_mode, check_size, no_constructor, open_or_create


def _proc_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _sysv_limits(shmmax: int | None, shmall: int | None) -> Mapping[int, str]:
    """errno -> the knob behind it for shmget, with the knobs' current values."""
    shmmni = _proc_int("/proc/sys/kernel/shmmni")
    return {
        errno.EINVAL: f"/proc/sys/kernel/shmmax = {shmmax} bytes per segment (and SHMMIN = 1 byte)",
        errno.ENOSPC: f"/proc/sys/kernel/shmall = {shmall} pages in all segments together, or "
                      f"/proc/sys/kernel/shmmni = {shmmni} segments on the system",
        errno.ENOMEM: "RAM + swap for the segment (the kernel's overcommit policy, "
                      "/proc/sys/vm/overcommit_memory)",
    }


def _check_sysv_size(size: int, what: str) -> Mapping[int, str]:
    """Refuse before shmget what the kernel would refuse, or what could only end with the OOM killer.

    Returns the errno -> knob table for translating what shmget still refuses.
    """
    shmmax = _proc_int("/proc/sys/kernel/shmmax")
    shmall = _proc_int("/proc/sys/kernel/shmall")
    limits = _sysv_limits(shmmax, shmall)
    if shmmax is not None and size > shmmax:
        raise LimitExceeded(errno.EINVAL, f"{what}: larger than the limit {limits[errno.EINVAL]}")
    page = os.sysconf("SC_PAGE_SIZE")
    if shmall is not None and -(-size // page) > shmall:
        raise LimitExceeded(errno.ENOSPC, f"{what}: larger than the limit {limits[errno.ENOSPC]}")
    # sysv_ipc zero-fills a new segment, touching every page: more than RAM + swap would summon the
    # OOM killer (with overcommit) rather than fail, so refuse it here.
    mem = _meminfo_bytes("MemTotal") + _meminfo_bytes("SwapTotal")
    if mem and size > mem:
        raise LimitExceeded(errno.ENOMEM, f"{what}: larger than RAM + swap ({mem} bytes, /proc/meminfo)")
    return limits


def _meminfo_bytes(field: str) -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _check_key(key: object) -> int:
    """A System V key as the kernel's signed key_t; InvalidEndpoint for 0 (IPC_PRIVATE) or out of range."""
    if isinstance(key, bool) or not isinstance(key, int):
        raise InvalidEndpoint(f"a System V key must be an int, not {type(key).__name__}")
    if not -(1 << 31) <= key < (1 << 32):
        raise InvalidEndpoint(f"the System V key {key} does not fit key_t (32 bits)")
    if key == 0:
        raise InvalidEndpoint("the System V key 0 is IPC_PRIVATE, which names no segment; use another key")
    return key - (1 << 32) if key >= (1 << 31) else key


class _Segment(sysv_ipc.SharedMemory):  # type: ignore[misc]
    """sysv_ipc's segment, detached when its last reference (the handle or a memoryview) goes."""

    def __del__(self) -> None:
        try:
            if self.attached:
                self.detach()
        except Exception:  # noqa: BLE001 (a finalizer must not raise)
            pass


class SysVSharedMemory(Owned, MemoryHandle):
    """A System V shared memory segment (shmget/shmat), found by an integer key, as memoryviews.

    The segment exists until it is removed (IPC_RMID) *and* the last process has detached it; its size
    is fixed at creation.  The handle made by :meth:`create` is the owner and removes the segment on
    :meth:`close`; handles made by :meth:`open` never do.  ``ipcs -m`` lists segments, with the key as
    ``repr`` shows it: ``<SysVSharedMemory key=0x1234abcd id=32768 size=4096 owner>``.

    .. versionadded:: 0.1
    """

    _seg: Any = None
    _key: int = 0
    _id: int = -1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        no_constructor(type(self))

    @classmethod
    def _new(cls, key: object) -> SysVSharedMemory:
        self = cls.__new__(cls)
        self._key = _check_key(key)
        return self

    def _label(self) -> str:
        return f"System V shared memory key {self._key & 0xFFFFFFFF:#010x}"

    def _adopt(self, seg: Any, readonly: bool) -> SysVSharedMemory:
        self._seg, self._id, self._size, self._readonly = seg, seg.id, seg.size, readonly
        return self

    @classmethod
    def create(cls, key: int, size: int, mode: int = DEFAULT_MODE) -> SysVSharedMemory:
        """Create the segment ``key`` of ``size`` bytes with ``mode`` and attach it; fail if it exists.

        The memory is zero-filled (sysv_ipc writes every page, so it is committed now).  A mode without
        the owner's write bit attaches read-only.  The returned handle is the owner.

        Raises:
            InvalidEndpoint: a bad key.  ValueError: ``size`` < 1 or a bad mode.
            FileExistsError: a segment with that key exists (errno EEXIST).
            LimitExceeded: /proc/sys/kernel/shmmax, shmall or shmmni (named with their values), or memory.
        """
        self = cls._new(key)
        size, mode = check_size(size, self._label()), check_mode(mode)
        what = f"create {self._label()} of {size} bytes"
        limits = _check_sysv_size(size, what)
        with translating_sysv(what, limits=limits):
            seg = _Segment(self._key, sysv_ipc.IPC_CREX, mode=mode, size=size, init_character=b"\0")
        self._adopt(seg, not mode & 0o200)
        self._take_ownership()
        return self

    @classmethod
    def open(cls, key: int, *, readonly: bool = False) -> SysVSharedMemory:
        """Attach the existing segment ``key``; this handle never removes it.

        Raises:
            InvalidEndpoint: a bad key.  FileNotFoundError: no segment has that key (errno ENOENT).
            PermissionError: the segment's mode refuses this user (errno EACCES).
        """
        self = cls._new(key)
        with translating_sysv(f"open {self._label()}"):
            seg = _Segment(self._key, 0, mode=0o400 if readonly else 0o600)
        return self._adopt(seg, readonly)

    @classmethod
    def open_or_create(cls, key: int, size: int, mode: int = DEFAULT_MODE) -> SysVSharedMemory:
        """Attach ``key`` if it exists (at its own size), else create it as :meth:`create` does."""
        return open_or_create(lambda: cls.open(key), lambda: cls.create(key, size, mode), f"key {key!r}")

    @property
    def key(self) -> int:
        """The key, as the kernel's signed key_t (``ipcs`` prints it as 32-bit hex)."""
        return self._key

    @property
    def id(self) -> int:
        """The kernel's shmid of the segment."""
        return self._id

    @property
    def attached(self) -> bool:
        """True while this handle has the segment attached (see :meth:`detach`)."""
        return self._seg is not None and bool(self._seg.attached)

    @property
    def number_attached(self) -> int:
        """How many attachments the segment has now, over all processes (shm_nattch)."""
        self._check_open()
        with translating_sysv(f"stat {self!r}"):
            return int(self._seg.number_attached)

    def unlink(self) -> None:
        """Remove the segment (IPC_RMID, what ``ipcrm -m`` does; sysv_ipc calls it remove()).

        The key is free at once; the memory lives on until every process has detached it, so this
        handle's views stay valid.  The handle is still usable whether or not this raises.

        Raises:
            FileNotFoundError: already removed.
            PermissionError: not the creator or owner, nor root.
        """
        self._check_open()
        with translating_sysv(f"remove {self!r}"):
            self._seg.remove()
        self.release_ownership()

    remove = unlink

    def resize(self, size: int) -> NoReturn:
        """Always raises: System V segments cannot change size.

        Raises:
            NotImplementedError: shmget fixes the size at creation and shmctl(IPC_SET) cannot change
                it; create a new segment (or use PosixSharedMemory, which can resize).
        """
        raise NotImplementedError(f"cannot resize {self!r}: the kernel fixes a System V segment's size "
                                  "at shmget(); create a new segment, or use PosixSharedMemory")

    def detach(self) -> None:
        """Detach the segment from this process now (shmdt); :meth:`attach` maps it again.

        Raises:
            BufferError: memoryviews or arrays of it are alive; still attached.
            HandleClosed: the handle is closed.
        """
        self._check_open()
        # Our attribute and getrefcount's argument are two references; each live view holds another.
        views = sys.getrefcount(self._seg) - 2
        if views > 0:
            raise BufferError(f"cannot detach {self!r}: {views} memoryview(s) or array(s) of it are "
                              "still alive and would point at unmapped memory; release them first")
        if self._seg.attached:
            with translating_sysv(f"detach {self!r}"):
                self._seg.detach()

    def attach(self) -> None:
        """Attach the segment again after :meth:`detach` (a no-op while attached).

        Raises:
            FileNotFoundError: the segment was removed and its last attachment is gone.
        """
        self._check_open()
        if not self._seg.attached:
            with translating_sysv(f"attach {self!r}"):
                self._seg.attach(flags=sysv_ipc.SHM_RDONLY if self._readonly else 0)

    @property
    def buf(self) -> memoryview:
        """A new memoryview of the whole segment (read-only if attached so); no copy.

        It keeps the segment attached even after :meth:`close`, until it is released.

        Raises:
            HandleClosed: the handle is closed or detached.
        """
        self._check_open()
        if not self._seg.attached:
            raise HandleClosed(f"{self!r} is detached; call attach() first")
        view = memoryview(self._seg)
        # sysv_ipc exports a SHM_RDONLY attachment as writable; a write would crash the process.
        return view.toreadonly() if self._readonly else view

    def _close(self) -> None:
        seg, self._seg = self._seg, None
        if self._unlinks_on_close():
            try:
                with translating_sysv(f"remove {self!r}"):
                    seg.remove()
            except FileNotFoundError:
                pass
        # Dropping `seg` detaches it now, or when the last view of it is released (_Segment.__del__).

    def __repr__(self) -> str:
        return self._repr(f"key={self._key & 0xFFFFFFFF:#010x} id={self._id}", *self._owner_words())


def remove_sysv_shm(key: int) -> None:
    """Remove the System V segment with ``key`` (IPC_RMID), whoever created it.

    Raises:
        InvalidEndpoint: a bad key.  FileNotFoundError: no such segment.  PermissionError: not allowed.
    """
    k = _check_key(key)
    what = f"remove System V shared memory key {k & 0xFFFFFFFF:#010x}"
    # Look the id up in /proc rather than through sysv_ipc, whose shmget always attaches too.
    ids = []
    try:
        with open("/proc/sysvipc/shm") as f:
            next(f)
            ids = [int(fields[1]) for fields in map(str.split, f) if int(fields[0]) == k]
    except OSError:
        pass
    if not ids:
        raise FileNotFoundError(errno.ENOENT, f"{what}: no segment has that key")
    with translating_sysv(what):
        sysv_ipc.remove_shared_memory(ids[0])
