"""Primitives: one faithful wrapper per kernel facility, each usable on its own.

==================  ==========================================  ==========================================
module              classes                                     the kernel facility
==================  ==========================================  ==========================================
pipe                Pipe                                        pipe2, PIPE_BUF, F_GETPIPE_SZ/F_SETPIPE_SZ
fifo                Fifo                                        mkfifo, blocking/O_NONBLOCK open, ENXIO
posix_mq            PosixMessageQueue                           mq_open: priorities, notification, fd
sysv_mq             SysVMessageQueue                            msgget/msgsnd/msgrcv: types, MSG_EXCEPT
sockets             UnixSocket, TcpSocket, UdpSocket            AF_UNIX stream/dgram/seqpacket, SCM_RIGHTS,
                                                                SO_PEERCRED; AF_INET/AF_INET6
shm                 PosixSharedMemory, SysVSharedMemory         shm_open + mmap; shmget/shmat
mmap_file           MappedFile                                  mmap of a file, msync
semaphore           PosixSemaphore, SysVSemaphoreSet            sem_open; semget/semtimedop with SEM_UNDO
locks               FileLock, RecordLock                        flock; fcntl and OFD byte-range locks
eventfd             EventFD                                     eventfd counter and semaphore modes
sync                SharedMutex, SharedCondition                robust PTHREAD_PROCESS_SHARED mutex; futex
signals             SignalReceiver, SignalFD, sigqueue          sigaction scopes, rt signals, signalfd
==================  ==========================================  ==========================================

Every handle has the same lifecycle (idempotent ``close()``, ``closed``, context manager,
ResourceWarning when garbage-collected open); named objects are opened with the ``create`` / ``open``
/ ``open_or_create`` classmethods, and only the creator (the owner) ever unlinks.
"""

from __future__ import annotations

from .eventfd import EventFD as EventFD
from .fifo import Fifo as Fifo
from .locks import FileLock as FileLock
from .locks import LockHolder as LockHolder
from .locks import RecordLock as RecordLock
from .mmap_file import MappedFile as MappedFile
from .pipe import Pipe as Pipe
from .posix_mq import (
    PRIORITY_MAX as PRIORITY_MAX,
)
from .posix_mq import (
    PosixMessageQueue as PosixMessageQueue,
)
from .posix_mq import (
    unlink_message_queue as unlink_message_queue,
)
from .semaphore import (
    PosixSemaphore as PosixSemaphore,
)
from .semaphore import (
    SysVSemaphoreSet as SysVSemaphoreSet,
)
from .semaphore import (
    unlink_posix_semaphore as unlink_posix_semaphore,
)
from .shm import (
    PosixSharedMemory as PosixSharedMemory,
)
from .shm import (
    SysVSharedMemory as SysVSharedMemory,
)
from .shm import (
    remove_sysv_shm as remove_sysv_shm,
)
from .shm import (
    unlink_posix_shm as unlink_posix_shm,
)
from .signals import (
    SI_KERNEL as SI_KERNEL,
)
from .signals import (
    SI_QUEUE as SI_QUEUE,
)
from .signals import (
    SI_TKILL as SI_TKILL,
)
from .signals import (
    SI_USER as SI_USER,
)
from .signals import (
    SigInfo as SigInfo,
)
from .signals import (
    SignalFD as SignalFD,
)
from .signals import (
    SignalReceiver as SignalReceiver,
)
from .signals import (
    sigqueue as sigqueue,
)
from .sockets import (
    TcpSocket as TcpSocket,
)
from .sockets import (
    UdpSocket as UdpSocket,
)
from .sockets import (
    UnixSocket as UnixSocket,
)
from .sockets import (
    peer_credentials as peer_credentials,
)
from .sync import SharedCondition as SharedCondition
from .sync import SharedMutex as SharedMutex
from .sysv_mq import (
    IPC_PRIVATE as IPC_PRIVATE,
)
from .sysv_mq import (
    TYPE_MAX as TYPE_MAX,
)
from .sysv_mq import (
    SysVMessageQueue as SysVMessageQueue,
)
from .sysv_mq import (
    SysVMessageQueueStat as SysVMessageQueueStat,
)
from .sysv_mq import (
    ftok as ftok,
)
from .sysv_mq import (
    remove_message_queue as remove_message_queue,
)

__all__ = (
    "Pipe", "Fifo", "UnixSocket", "TcpSocket", "UdpSocket", "peer_credentials",
    "PosixSharedMemory", "SysVSharedMemory", "unlink_posix_shm", "remove_sysv_shm",
    "MappedFile",
    "PosixMessageQueue", "unlink_message_queue", "PRIORITY_MAX",
    "SysVMessageQueue", "SysVMessageQueueStat", "ftok", "remove_message_queue", "IPC_PRIVATE", "TYPE_MAX",
    "PosixSemaphore", "SysVSemaphoreSet", "unlink_posix_semaphore",
    "FileLock", "RecordLock", "LockHolder", "EventFD",
    "SharedMutex", "SharedCondition",
    "SignalReceiver", "SignalFD", "SigInfo", "sigqueue", "SI_USER", "SI_KERNEL", "SI_QUEUE", "SI_TKILL",
)


def _fixup_module_metadata() -> None:
    """Tracebacks and reprs say ipcraft.primitives.X, not a private module's name."""
    for name in __all__:
        obj = globals()[name]
        mod = getattr(obj, "__module__", "")
        if mod.startswith("ipcraft.primitives._"):
            obj.__module__ = __name__


_fixup_module_metadata()
