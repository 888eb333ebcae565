"""Every IPC object on the machine, as values, and a way to remove one (``ipcraft ls`` / ``ipcraft rm``).

Where each kind comes from:

===============  ================================================================================
kind             the kernel's own listing
===============  ================================================================================
``posix_shm``    files in /dev/shm (glibc's ``shm_open`` opens files in this tmpfs)
``posix_sem``    files ``/dev/shm/sem.NAME`` (glibc keeps named semaphores there)
``bcast``        files in /dev/shm that hold an ipcraft broadcast ring (``bcast://``; its magic), with
                 its publishers and each subscriber's pid, lag and missed count from the ring's tables
``posix_mq``     files in the mqueue filesystem (/dev/mqueue, wherever it is mounted); each reads
                 ``QSIZE:<bytes> NOTIFY:.. SIGNO:.. NOTIFY_PID:..``
``sysv_mq``      /proc/sysvipc/msg     (the columns are found from its header line)
``sysv_sem``     /proc/sysvipc/sem
``sysv_shm``     /proc/sysvipc/shm
``unix_socket``  NETLINK_SOCK_DIAG (as ``ss -x``), else /proc/net/unix; named sockets only
``fifo``         none: see below
===============  ================================================================================

Decisions:

* **FIFOs cannot be listed machine-wide.**  A FIFO is a file like any other; the kernel keeps no
  table of them, and finding them all means walking every filesystem.  ``list_objects(dirs=...)``
  lists the FIFOs (and socket files nobody is bound to) directly inside the directories given.
* **Unnamed sockets are left out.**  A socketpair or an unbound client has no name anyone could use
  or remove; the listing is about named things.  Every socket bound to a name is listed, including
  the connections a listener accepted (they carry its name), with their state.
* **A socket's file is found by inode.**  The path a socket was bound as (what /proc/net/unix shows)
  need not be its file's name any more: ipcraft's listeners bind a temporary name and link it into
  place.  sock_diag gives the bound file's device and inode, so the file is looked up in the same
  directory by inode.
* **POSIX message queues need the mqueue filesystem mounted** to be listed (``mount -t mqueue none
  /dev/mqueue``); the queues work without it.  Without a mount, ``list_objects("posix_mq")`` raises
  FileNotFoundError saying so, and ``list_objects()`` leaves the kind out with a RuntimeWarning.
* **System V shared memory keeps its status bits**, as ``ipcs -m`` shows them: ``details["status"]``
  is ``"dest"`` (removed with IPC_RMID but still attached: it goes with the last detach, and its key
  reads 0), ``"locked"`` (SHM_LOCK: never swapped), both, or ``""``.  The kernel prints them in the
  perms column of /proc/sysvipc/shm (SHM_DEST 01000, SHM_LOCKED 02000); ``mode`` keeps the
  permission bits only.
* **remove() never guesses.**  A System V id is checked to still carry the key that was listed
  (ids are reused), and a socket file is unlinked only when no socket is bound to it.

.. versionadded:: 0.1
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import posix_ipc
import sysv_ipc

from ._errors import os_error, translating, translating_sysv
from ._names import validate_name
from ._unix_diag import is_bound, socket_owners, unix_sockets
from .errors import ProtocolError
from .primitives.shm import SHM_DIR, unlink_posix_shm

__all__ = ("IPCObject", "KINDS", "list_objects", "lookup", "remove", "mqueue_dir")

#: Every kind of object, in listing order.
KINDS = ("posix_shm", "posix_sem", "bcast", "posix_mq", "sysv_shm", "sysv_sem", "sysv_mq", "unix_socket", "fifo")

_SYSV_FILES = {"sysv_mq": "msg", "sysv_sem": "sem", "sysv_shm": "shm"}
#: The status bits /proc/sysvipc/shm prints in its perms column, with ipcs's word for each.
_SHM_STATUS = ((0o1000, "dest"), (0o2000, "locked"))
_SYSV_IDS = {"sysv_mq": "msqid", "sysv_sem": "semid", "sysv_shm": "shmid"}
_WHAT = {
    "posix_shm": "POSIX shared memory", "posix_sem": "POSIX semaphore", "posix_mq": "POSIX message queue",
    "bcast": "broadcast ring",
    "sysv_shm": "System V shared memory", "sysv_sem": "System V semaphore set",
    "sysv_mq": "System V message queue", "unix_socket": "Unix socket", "fifo": "FIFO",
}


@dataclass(frozen=True)
class IPCObject:
    """One IPC object as the kernel describes it; a value, taken at listing time.

    Attributes:
        kind: one of :data:`KINDS`.
        name: what a program opens it by: ``"/jobs"`` for POSIX objects, the path or ``"@name"`` of a
            socket, the path of a FIFO; None for System V objects.
        key: the System V key (``key_t``, as the kernel prints it; 0 is IPC_PRIVATE); None otherwise.
        id: the System V identifier, or the inode number of a socket; None otherwise.
        uid, gid: the owner.
        mode: the permission bits.
        size: bytes: of a shared memory segment, or queued in a message queue.
        messages: messages queued (System V queues always; POSIX queues when we may open them).
        pid: the creator (System V shared memory) or a process holding it open (a Unix socket, found
            in /proc/<pid>/fd when permitted); None when the kernel does not say.
        path: the file that stands for the object, if it has one.
        details: the other facts the kernel gives for this kind (``nattch``, ``lspid``, ``nsems``,
            ``value``, ``state``, ...), JSON-friendly.

    .. versionadded:: 0.1
    """

    kind: str
    name: str | None = None
    key: int | None = None
    id: int | None = None
    uid: int | None = None
    gid: int | None = None
    mode: int | None = None
    size: int | None = None
    messages: int | None = None
    pid: int | None = None
    path: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy cannot be pickled; the object travels as its fields.
        values = [getattr(self, f.name) for f in fields(self)]
        return (IPCObject, (*values[:-1], dict(self.details)))

    @property
    def label(self) -> str:
        """How the object is named in messages: ``POSIX semaphore '/lock'``, ``... key 0x1234 id 5``."""
        if self.kind in _SYSV_FILES:
            return f"{_WHAT[self.kind]} key {(self.key or 0) & 0xFFFFFFFF:#010x} id {self.id}"
        return f"{_WHAT[self.kind]} {self.name!r}"

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return {"kind": self.kind, "name": self.name, "key": self.key, "id": self.id, "uid": self.uid,
                "gid": self.gid, "mode": self.mode, "size": self.size, "messages": self.messages,
                "pid": self.pid, "path": self.path, "details": dict(self.details)}


def list_objects(kind: str | None = None, *, dirs: Iterable[str] = (),
                 find_pids: bool = True) -> list[IPCObject]:
    """List the IPC objects of ``kind`` (every kind if None) that this process can see.

    Args:
        kind: one of :data:`KINDS`, or None for all.
        dirs: directories whose FIFOs and unbound ("stale") socket files are listed too; nothing
            is listed as a FIFO without them.
        find_pids: look for the processes holding Unix sockets in /proc/<pid>/fd (one readlink per
            open descriptor on the machine).

    Raises:
        ValueError: an unknown kind.
        FileNotFoundError: ``kind="posix_mq"`` and no mqueue filesystem is mounted.

    .. versionadded:: 0.1
    """
    kinds = KINDS if kind is None else (_check_kind(kind),)
    dirs = tuple(dirs)
    out: list[IPCObject] = []
    for k in kinds:
        if k == "posix_mq":
            try:
                out += _posix_mqs()
            except FileNotFoundError as exc:
                if kind is not None:
                    raise
                warnings.warn(str(exc.strerror), RuntimeWarning, stacklevel=2)
        elif k in ("posix_shm", "posix_sem", "bcast"):
            out += [o for o in _dev_shm() if o.kind == k]
        elif k in _SYSV_FILES:
            out += _sysv(k)
        elif k == "unix_socket":
            out += _sockets(dirs, find_pids)
        else:
            out += _fifos(dirs)
    return out


def lookup(kind: str, ident: str | int, *, by_id: bool = False) -> IPCObject:
    """Find one object: a POSIX name (``"/jobs"`` or ``"jobs"``), a System V key (or id, with
    ``by_id=True``), or the path (or ``@name``) of a socket or FIFO.

    Raises:
        ValueError: an unknown kind, a bad name or key, or a System V key shared by several objects
            (IPC_PRIVATE): pass the id.
        FileNotFoundError: no such object.

    .. versionadded:: 0.1
    """
    kind = _check_kind(kind)
    what = f"{_WHAT[kind]} {ident!r}"
    if kind in _SYSV_FILES:
        number = ident if isinstance(ident, int) else _parse_int(ident, "id" if by_id else "key")
        if by_id:
            found = [o for o in _sysv(kind) if o.id == number]
        else:
            found = [o for o in _sysv(kind) if (o.key or 0) & 0xFFFFFFFF == number & 0xFFFFFFFF]
        if len(found) > 1:
            raise ValueError(f"{len(found)} objects of kind {kind} have key {number:#x} (IPC_PRIVATE); "
                             f"name one by its id: {', '.join(str(o.id) for o in found)}")
    elif kind.startswith("posix_") or kind == "bcast":
        name = "/" + validate_name(str(ident).removeprefix("bcast://"), _WHAT[kind])
        if kind == "posix_mq" and mqueue_dir() is None:
            return _unmounted_mq(name)
        found = [o for o in list_objects(kind) if o.name == name]
    else:
        text = str(ident)
        where = text if text.startswith("@") else os.path.abspath(text)
        directory = None if where.startswith("@") else os.path.dirname(where)
        objs = list_objects(kind, dirs=(directory,) if directory else (), find_pids=False)
        found = [o for o in objs if where in (o.name, o.path)]
        found.sort(key=lambda o: o.details.get("state") != "listening")  # the listener first
    if not found:
        raise FileNotFoundError(errno.ENOENT, f"{what}: no such object", str(ident))
    return found[0]


def remove(obj: IPCObject) -> None:
    """Remove the object from the system, whoever created it (permissions allowing).

    POSIX names are unlinked (shm_unlink, sem_unlink, mq_unlink): processes that have them open keep
    using them until they close.  System V objects are removed at once with IPC_RMID (shared memory
    once the last process detaches).  A socket file or FIFO is unlinked; a socket file only when no
    socket is bound to it any more.

    Raises:
        FileNotFoundError: it is already gone (or a System V id now names another object).
        PermissionError: not allowed (errno EPERM or EACCES).
        OSError: errno EBUSY for a live socket (a listener or a bound datagram socket, or any
            abstract name: it vanishes with its last socket).
        ValueError: an unknown kind.

    .. versionadded:: 0.1
    """
    kind = _check_kind(obj.kind)
    what = f"remove {obj.label}"
    if kind in ("posix_shm", "bcast"):
        unlink_posix_shm(obj.name or "")
    elif kind == "posix_sem":
        with translating(what):
            posix_ipc.unlink_semaphore(obj.name)
    elif kind == "posix_mq":
        with translating(what):
            posix_ipc.unlink_message_queue(obj.name)
    elif kind in _SYSV_FILES:
        if not any(o.id == obj.id and o.key == obj.key for o in _sysv(kind)):
            raise FileNotFoundError(errno.ENOENT, f"{what}: it no longer exists (or the id was reused)")
        rm = {"sysv_mq": sysv_ipc.remove_message_queue, "sysv_sem": sysv_ipc.remove_semaphore,
              "sysv_shm": sysv_ipc.remove_shared_memory}[kind]
        with translating_sysv(what):
            rm(obj.id)
    else:
        _remove_file(obj, what)


def mqueue_dir() -> str | None:
    """Where the mqueue filesystem is mounted (from /proc/self/mounts), or None.

    .. versionadded:: 0.1
    """
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "mqueue":
                    return fields[1].replace("\\040", " ")
    except OSError:
        pass
    return None


# -- the listers ---------------------------------------------------------------------------------

def _check_kind(kind: str) -> str:
    k = kind.replace("-", "_")
    if k not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; the kinds are {', '.join(KINDS)}")
    return k


def _parse_int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"a System V {what} is a number such as 1234 or 0x4d2, not {text!r}") from None


def _file_facts(st: os.stat_result) -> dict[str, Any]:
    return {"uid": st.st_uid, "gid": st.st_gid, "mode": stat.S_IMODE(st.st_mode)}


def _dev_shm() -> list[IPCObject]:
    out = []
    for entry, st in _scan_stat(SHM_DIR):
        if not stat.S_ISREG(st.st_mode):
            continue
        if entry.name.startswith("sem."):
            name = "/" + entry.name[4:]
            out.append(IPCObject("posix_sem", name, path=entry.path, details=_sem_value(name),
                                 **_file_facts(st)))
        else:
            ring = _bcast_facts(entry.path)
            out.append(IPCObject("posix_shm" if ring is None else "bcast", "/" + entry.name, size=st.st_size,
                                 path=entry.path, pid=None if ring is None else ring.pop("creator_pid"),
                                 details=ring or {}, **_file_facts(st)))
    return out


def _bcast_facts(path: str) -> dict[str, Any] | None:
    """The tables of the broadcast ring in ``path`` (read-only), or None if it holds none (or we may
    not read it, or its header is damaged)."""
    from ._rings import bcast

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if os.pread(fd, 8, 0) != bcast.MAGIC.to_bytes(8, "little"):
            return None
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m, memoryview(m) as buf:
            try:
                return bcast.describe(buf, path)
            except ProtocolError as exc:
                return {"damaged": str(exc)}
            finally:
                buf.release()
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def _sem_value(name: str) -> dict[str, Any]:
    try:
        with translating(f"open POSIX semaphore {name!r}"):
            sem = posix_ipc.Semaphore(name)
            try:
                return {"value": sem.value}
            finally:
                sem.close()
    except OSError:
        return {}  # not ours to open


def _posix_mqs() -> list[IPCObject]:
    root = mqueue_dir()
    if root is None:
        raise FileNotFoundError(errno.ENOENT, "POSIX message queues cannot be listed: no mqueue "
                                "filesystem is mounted (mount -t mqueue none /dev/mqueue)")
    out = []
    for entry in os.scandir(root):
        try:
            st = entry.stat(follow_symlinks=False)
            with open(entry.path) as f:
                text = f.read()
        except FileNotFoundError:
            continue
        except PermissionError:
            text = ""
        status = dict(tok.split(":", 1) for tok in text.split() if ":" in tok)
        name = "/" + entry.name
        details: dict[str, Any] = {k.lower(): int(v) for k, v in status.items() if v.lstrip("-").isdigit()}
        messages = None
        attrs = _mq_attrs(name)
        if attrs:
            messages = attrs.pop("messages")
            details.update(attrs)
        out.append(IPCObject("posix_mq", name, size=details.pop("qsize", None), messages=messages,
                             pid=details.get("notify_pid") or None, path=entry.path, details=details,
                             **_file_facts(st)))
    return out


def _mq_attrs(name: str) -> dict[str, int]:
    """mq_getattr's facts, when we may open the queue (opening changes nothing)."""
    try:
        with translating(f"open POSIX message queue {name!r}"):
            q = posix_ipc.MessageQueue(name, read=True, write=False)
            try:
                return {"messages": q.current_messages, "maxmsg": q.max_messages,
                        "msgsize": q.max_message_size}
            finally:
                q.close()
    except OSError:
        return {}


def _unmounted_mq(name: str) -> IPCObject:
    """Without an mqueue mount a queue can still be found (and removed) by opening it."""
    attrs = _mq_attrs(name)
    if not attrs:
        with translating(f"open POSIX message queue {name!r}"):
            posix_ipc.MessageQueue(name, read=True, write=False).close()  # raise why it failed
    return IPCObject("posix_mq", name, messages=attrs.pop("messages", None), details=attrs)


def _sysv(kind: str) -> list[IPCObject]:
    path = f"/proc/sysvipc/{_SYSV_FILES[kind]}"
    try:
        with open(path) as f:
            header = f.readline().split()
            rows: list[dict[str, Any]] = [dict(zip(header, map(int, line.split()), strict=False))
                                          for line in f if line.strip()]
    except FileNotFoundError:
        return []
    out = []
    for row in rows:
        # perms is printed in octal ("%4o") but was read as decimal digits.
        perms = int(str(row.pop("perms")), 8)
        mode = perms & 0o777
        common: dict[str, Any] = {"key": row.pop("key"), "id": row.pop(_SYSV_IDS[kind]),
                                  "uid": row.pop("uid"), "gid": row.pop("gid"), "mode": mode}
        if kind == "sysv_mq":
            obj = IPCObject(kind, size=row.pop("cbytes"), messages=row.pop("qnum"), details=row, **common)
        elif kind == "sysv_shm":
            row["status"] = " ".join(word for bit, word in _SHM_STATUS if perms & bit)
            obj = IPCObject(kind, size=row.pop("size"), pid=row.pop("cpid"), details=row, **common)
        else:
            obj = IPCObject(kind, details=row, **common)
        out.append(obj)
    return out


def _sockets(dirs: tuple[str, ...], find_pids: bool) -> list[IPCObject]:
    # The kernel's list first, then the owners: a socket made between the two is not listed, whereas
    # in the other order a socket made meanwhile was listed without its owner.
    sockets = unix_sockets()
    owners = socket_owners() if find_pids else {}
    dir_cache: dict[str, dict[tuple[int, int], str]] = {}
    out = []
    seen_files: set[str] = set()
    for s in sockets:
        if s.bound_as is None:
            continue
        path = None
        st = None
        if not s.bound_as.startswith("@"):
            path, st = _socket_file(s.bound_as, s.vfs, dir_cache)
        details: dict[str, Any] = {"type": s.type, "state": s.state}
        for k in ("peer", "rqueue", "wqueue"):
            if getattr(s, k) is not None:
                details[k] = getattr(s, k)
        if path != s.bound_as:
            details["bound_as"] = s.bound_as
        facts = _file_facts(st) if st is not None else {}
        if s.uid is not None:
            facts["uid"] = s.uid
        if path is not None:
            seen_files.add(path)
        out.append(IPCObject("unix_socket", path or s.bound_as, id=s.inode, pid=owners.get(s.inode),
                             path=path, details=details, **facts))
    for d in dirs:
        for entry, st in _scan_stat(d):
            if stat.S_ISSOCK(st.st_mode) and entry.path not in seen_files:
                state = "bound" if is_bound(entry.path) else "stale"
                out.append(IPCObject("unix_socket", entry.path, path=entry.path,
                                     details={"state": state}, **_file_facts(st)))
    return out


def _socket_file(bound_as: str, vfs: tuple[int, int] | None,
                 cache: dict[str, dict[tuple[int, int], str]]) -> tuple[str | None, os.stat_result | None]:
    """The socket's file now: its bind-time path, or a name in that directory with its inode."""
    try:
        st = os.stat(bound_as)
        if stat.S_ISSOCK(st.st_mode) and (vfs is None or (st.st_dev, st.st_ino) == vfs):
            return bound_as, st
    except OSError:
        pass
    if vfs is None:
        return None, None
    directory = os.path.dirname(bound_as) or "."
    if directory not in cache:
        cache[directory] = {(est.st_dev, est.st_ino): entry.path for entry, est in _scan_stat(directory)
                            if stat.S_ISSOCK(est.st_mode)}
    path = cache[directory].get(vfs)
    if path is None:
        return None, None  # the file was removed: the socket lives on, unreachable by path
    try:
        return path, os.stat(path)
    except OSError:
        return None, None


def _scan_stat(directory: str) -> list[tuple[os.DirEntry[str], os.stat_result]]:
    """The entries of ``directory`` with their lstat; entries that vanish meanwhile are left out."""
    out = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        try:
            out.append((entry, entry.stat(follow_symlinks=False)))
        except OSError:
            continue
    return out


def _fifos(dirs: tuple[str, ...]) -> list[IPCObject]:
    out = []
    for d in dirs:
        for entry, st in _scan_stat(d):
            if stat.S_ISFIFO(st.st_mode):
                out.append(IPCObject("fifo", entry.path, path=entry.path, **_file_facts(st)))
    return out


def _remove_file(obj: IPCObject, what: str) -> None:
    path = obj.path
    if path is None:
        if obj.kind == "unix_socket" and obj.name and obj.name.startswith("@"):
            raise os_error(errno.EBUSY, f"{what}: an abstract name has no file; it vanishes when the "
                                        "last socket bound to it closes")
        raise FileNotFoundError(errno.ENOENT, f"{what}: it has no file any more", obj.name)
    with translating(what, path):
        st = os.lstat(path)
    want = stat.S_ISSOCK if obj.kind == "unix_socket" else stat.S_ISFIFO
    if not want(st.st_mode):
        raise FileNotFoundError(errno.ENOENT, f"{what}: {path} is no longer a {_WHAT[obj.kind]}", path)
    if obj.kind == "unix_socket" and is_bound(path):
        holder = f" (process {obj.pid})" if obj.pid else ""
        raise os_error(errno.EBUSY, f"{what}: a socket is still bound to it{holder}; stop it first", path)
    with translating(what, path):
        os.unlink(path)
