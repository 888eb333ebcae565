"""Primitives: one faithful wrapper per kernel facility, each usable on its own.

==================  ==========================================  ==========================================
module              classes                                     the kernel facility
==================  ==========================================  ==========================================
shm                 PosixSharedMemory, SysVSharedMemory         shm_open + mmap; shmget/shmat
mmap_file           MappedFile                                  mmap of a file, msync
==================  ==========================================  ==========================================

Every handle has the same lifecycle (idempotent ``close()``, ``closed``, context manager,
ResourceWarning when garbage-collected open); named objects are opened with the ``create`` / ``open``
/ ``open_or_create`` classmethods, and only the creator (the owner) ever unlinks.
"""

from __future__ import annotations

from .mmap_file import MappedFile as MappedFile
from .shm import (
    PosixSharedMemory as PosixSharedMemory,
    SysVSharedMemory as SysVSharedMemory,
    remove_sysv_shm as remove_sysv_shm,
    unlink_posix_shm as unlink_posix_shm,
)

__all__ = (
    "PosixSharedMemory", "SysVSharedMemory", "unlink_posix_shm", "remove_sysv_shm",
    "MappedFile",
)


def _fixup_module_metadata() -> None:
    """Tracebacks and reprs say ipcraft.primitives.X, not a private module's name."""
    for name in __all__:
        obj = globals()[name]
        mod = getattr(obj, "__module__", "")
        if mod.startswith("ipcraft.primitives._"):
            obj.__module__ = __name__


_fixup_module_metadata()
