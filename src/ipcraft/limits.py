"""The kernel limits that bite IPC, as typed values with their knob and a one-line meaning.

Each :class:`Limit` says where the number comes from (a /proc/sys file, an rlimit, a constant of the
ABI, or a measurement) so that a refused request can be traced to the knob that refused it; ipcraft's
error messages name the same sources.

Decisions:

* **Read at call time, never cached.**  An administrator may change a knob while a program runs; a
  stale number would point at the wrong cause.
* **What this kernel does not expose is left out**, not reported as zero: a kernel built without
  System V IPC has no /proc/sys/kernel/msgmax.  :func:`get` then raises KeyError saying so.
* **rlimits are this process's soft limit**, with the hard limit beside it; ``None`` means unlimited
  (RLIM_INFINITY).
* **The pipe's default capacity is measured** on a fresh pipe (F_GETPIPE_SZ) rather than assumed to
  be 16 pages: pipe-user-pages-soft shrinks it to one page for a user who holds too many pipe pages.

.. versionadded:: 0.1
"""

from __future__ import annotations

import fcntl
import os
import resource
import select
from dataclasses import dataclass

from ._names import UNIX_PATH_MAX
from .primitives.shm import SHM_DIR

__all__ = ("Limit", "get_limits", "get")


@dataclass(frozen=True)
class Limit:
    """One kernel limit.

    Attributes:
        name: a stable short name: the sysctl name (``kernel.msgmnb``), the rlimit (``RLIMIT_NOFILE``)
            or the constant (``PIPE_BUF``).
        value: the limit now; None means unlimited.
        unit: ``bytes``, ``pages``, ``messages``, ``queues``, ``semaphores``, ``segments``,
            ``sets``, ``datagrams``, ``descriptors`` or ``operations``.
        source: where the value comes from: a /proc path, ``getrlimit(RLIMIT_X)``, a header.
        meaning: one line: what it limits, and what happens at the limit.
        hard: for an rlimit, the hard limit (None: unlimited); None otherwise.
        group: ``pipe``, ``posix_mq``, ``sysv_mq``, ``sysv_sem``, ``sysv_shm``, ``socket``,
            ``posix_shm`` or ``process``: the facility it concerns.

    .. versionadded:: 0.1
    """

    name: str
    value: int | None
    unit: str
    source: str
    meaning: str
    group: str
    hard: int | None = None

    def as_dict(self) -> dict[str, object]:
        """The fields as a JSON-ready dict."""
        return {"name": self.name, "value": self.value, "unit": self.unit, "source": self.source,
                "meaning": self.meaning, "group": self.group, "hard": self.hard}


# (name, /proc path, field index, unit, group, meaning)
_PROC: tuple[tuple[str, str, int, str, str, str], ...] = (
    ("fs.pipe-max-size", "/proc/sys/fs/pipe-max-size", 0, "bytes", "pipe",
     "largest capacity an unprivileged F_SETPIPE_SZ may set (EPERM above it)"),
    ("fs.pipe-user-pages-soft", "/proc/sys/fs/pipe-user-pages-soft", 0, "pages", "pipe",
     "pipe pages one user may hold before new pipes shrink to the minimum of 1-2 pages (0: off)"),
    ("fs.mqueue.msg_max", "/proc/sys/fs/mqueue/msg_max", 0, "messages", "posix_mq",
     "largest maxmsg an unprivileged mq_open may ask for (EINVAL above it)"),
    ("fs.mqueue.msgsize_max", "/proc/sys/fs/mqueue/msgsize_max", 0, "bytes", "posix_mq",
     "largest msgsize an unprivileged mq_open may ask for (EINVAL above it)"),
    ("fs.mqueue.msg_default", "/proc/sys/fs/mqueue/msg_default", 0, "messages", "posix_mq",
     "maxmsg of a queue created without attributes"),
    ("fs.mqueue.msgsize_default", "/proc/sys/fs/mqueue/msgsize_default", 0, "bytes", "posix_mq",
     "msgsize of a queue created without attributes"),
    ("fs.mqueue.queues_max", "/proc/sys/fs/mqueue/queues_max", 0, "queues", "posix_mq",
     "POSIX message queues on the system (ENOSPC beyond it)"),
    ("kernel.msgmax", "/proc/sys/kernel/msgmax", 0, "bytes", "sysv_mq",
     "largest System V message (msgsnd fails with EINVAL above it)"),
    ("kernel.msgmnb", "/proc/sys/kernel/msgmnb", 0, "bytes", "sysv_mq",
     "default qbytes of a new System V queue: msgsnd blocks (or EAGAIN) when it is full"),
    ("kernel.msgmni", "/proc/sys/kernel/msgmni", 0, "queues", "sysv_mq",
     "System V message queues on the system (msgget fails with ENOSPC beyond it)"),
    ("kernel.sem.SEMMSL", "/proc/sys/kernel/sem", 0, "semaphores", "sysv_sem",
     "semaphores in one System V set (semget EINVAL above it)"),
    ("kernel.sem.SEMMNS", "/proc/sys/kernel/sem", 1, "semaphores", "sysv_sem",
     "System V semaphores on the system (semget ENOSPC beyond it)"),
    ("kernel.sem.SEMOPM", "/proc/sys/kernel/sem", 2, "operations", "sysv_sem",
     "operations in one semop call (E2BIG above it)"),
    ("kernel.sem.SEMMNI", "/proc/sys/kernel/sem", 3, "sets", "sysv_sem",
     "System V semaphore sets on the system (semget ENOSPC beyond it)"),
    ("kernel.shmmax", "/proc/sys/kernel/shmmax", 0, "bytes", "sysv_shm",
     "largest System V shared memory segment (shmget EINVAL above it)"),
    ("kernel.shmall", "/proc/sys/kernel/shmall", 0, "pages", "sysv_shm",
     "System V shared memory pages on the system (shmget ENOSPC beyond it)"),
    ("kernel.shmmni", "/proc/sys/kernel/shmmni", 0, "segments", "sysv_shm",
     "System V shared memory segments on the system (shmget ENOSPC beyond it)"),
    ("net.core.wmem_max", "/proc/sys/net/core/wmem_max", 0, "bytes", "socket",
     "largest SO_SNDBUF a process may set; bounds one unix+seqpacket/dgram message"),
    ("net.core.rmem_max", "/proc/sys/net/core/rmem_max", 0, "bytes", "socket",
     "largest SO_RCVBUF a process may set"),
    ("net.core.wmem_default", "/proc/sys/net/core/wmem_default", 0, "bytes", "socket",
     "SO_SNDBUF of a new socket: a larger datagram gets EMSGSIZE unless the buffer is raised"),
    ("net.core.rmem_default", "/proc/sys/net/core/rmem_default", 0, "bytes", "socket",
     "SO_RCVBUF of a new socket"),
    ("net.unix.max_dgram_qlen", "/proc/sys/net/unix/max_dgram_qlen", 0, "datagrams", "socket",
     "datagrams queued on a Unix datagram socket before senders block (or EAGAIN)"),
)

# (name, RLIMIT_*, unit, group, meaning)
_RLIMITS: tuple[tuple[str, int, str, str, str], ...] = (
    ("RLIMIT_MSGQUEUE", resource.RLIMIT_MSGQUEUE, "bytes", "posix_mq",
     "bytes of POSIX message queues this user may create, counted at mq_open (EMFILE beyond it)"),
    ("RLIMIT_NOFILE", resource.RLIMIT_NOFILE, "descriptors", "process",
     "open file descriptors in this process: every pipe, socket, queue and eventfd needs one (EMFILE)"),
    ("RLIMIT_MEMLOCK", resource.RLIMIT_MEMLOCK, "bytes", "process",
     "memory this process may lock with mlock/SHM_LOCK (EPERM or ENOMEM beyond it)"),
)


def get_limits() -> list[Limit]:
    """Every limit this kernel exposes, read now, grouped by facility.

    .. versionadded:: 0.1
    """
    out = [
        Limit("PIPE_BUF", select.PIPE_BUF, "bytes", "<limits.h> PIPE_BUF",
              "writes up to this size to a pipe or FIFO are atomic: never interleaved with others", "pipe"),
    ]
    capacity = _pipe_capacity()
    if capacity is not None:
        out.append(Limit("pipe.default_capacity", capacity, "bytes", "fcntl(F_GETPIPE_SZ) of a new pipe",
                         "bytes a new pipe holds before a writer blocks (or EAGAIN)", "pipe"))
    for name, path, index, unit, group, meaning in _PROC:
        value = _proc_field(path, index)
        if value is not None:
            src = f"{path} field {index + 1}" if name.startswith("kernel.sem.") else path
            out.append(Limit(name, value, unit, src, meaning, group))
    for name, which, unit, group, meaning in _RLIMITS:
        soft, hard = resource.getrlimit(which)
        out.append(Limit(name, _finite(soft), unit, f"getrlimit({name}) soft limit (ulimit)", meaning, group,
                         hard=_finite(hard)))
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        pass
    else:
        out.append(Limit("shm.size", st.f_blocks * st.f_frsize, "bytes", f"statvfs({SHM_DIR}) (tmpfs size=)",
                         "all POSIX shared memory and semaphores together; a write past it is SIGBUS",
                         "posix_shm"))
        out.append(Limit("shm.free", st.f_bavail * st.f_frsize, "bytes", f"statvfs({SHM_DIR})",
                         "room left in /dev/shm now", "posix_shm"))
    out.append(Limit("UNIX_PATH_MAX", UNIX_PATH_MAX, "bytes", "<sys/un.h> sun_path[108] less the NUL",
                     "longest Unix socket path or abstract name", "socket"))
    order = ("pipe", "posix_mq", "sysv_mq", "sysv_sem", "sysv_shm", "posix_shm", "socket", "process")
    return sorted(out, key=lambda lim: order.index(lim.group))


def get(name: str) -> Limit:
    """The limit called ``name`` (as in :attr:`Limit.name`), read now.

    Raises:
        KeyError: no such limit, or this kernel does not expose it; the message lists the names.

    .. versionadded:: 0.1
    """
    limits = get_limits()
    for lim in limits:
        if lim.name == name:
            return lim
    raise KeyError(f"no limit {name!r} on this system; the limits are: {', '.join(x.name for x in limits)}")


def _finite(v: int) -> int | None:
    return None if v == resource.RLIM_INFINITY else v


def _proc_field(path: str, index: int) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[index])
    except (OSError, ValueError, IndexError):
        return None


def _pipe_capacity() -> int | None:
    r, w = os.pipe()
    try:
        return fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    except OSError:
        return None
    finally:
        os.close(r)
        os.close(w)
