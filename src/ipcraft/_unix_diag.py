"""What the kernel knows of every Unix domain socket on the machine (for ipcraft.inventory).

Decisions:

* **sock_diag first, /proc/net/unix as the fallback.**  /proc/net/unix gives each socket's inode,
  type, state and the path it was *bound* as, nothing more.  A socket file that was renamed or
  hard-linked after bind() (ipcraft's own listeners bind a temporary name, chmod it and link it into
  place) is listed there under a name that no longer exists.  The NETLINK_SOCK_DIAG query
  (``ss -x`` uses it) also returns the device and inode of the bound *file* (UNIX_DIAG_VFS), the
  owner's uid (UNIX_DIAG_UID) and the queue lengths (UNIX_DIAG_RQLEN), so the file can be found again
  by its inode.  When the unix_diag module is missing, the /proc file is parsed instead and those
  facts are None.
* **Owners by scanning /proc/<pid>/fd.**  The kernel does not record which process holds a socket;
  ``socket:[inode]`` links in /proc/<pid>/fd tell, for the processes we may look at.  The scan costs
  one readlink per open descriptor on the machine, so callers ask for it explicitly.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# <linux/sock_diag.h>, <linux/unix_diag.h>, <linux/netlink.h>
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_UDIAG_SHOW = 0x1 | 0x2 | 0x4 | 0x10 | 0x40  # NAME | VFS | PEER | RQLEN | UID
_ATTR_NAME, _ATTR_VFS, _ATTR_PEER, _ATTR_RQLEN, _ATTR_UID = 0, 1, 2, 4, 7
_NLMSGHDR = struct.Struct("=IHHII")
_REQUEST = struct.Struct("=BBHIIIII")  # unix_diag_req
_MSG = struct.Struct("=BBBxI8x")  # unix_diag_msg: family, type, state, pad, inode, cookie
_RTA = struct.Struct("=HH")

#: SOCK_* numbers -> the names ipcraft's URL schemes use.
SOCK_TYPES: dict[int, str] = {int(socket.SOCK_STREAM): "stream", int(socket.SOCK_DGRAM): "dgram",
                              int(socket.SOCK_SEQPACKET): "seqpacket"}
# sock_diag reports TCP_* state numbers; /proc/net/unix reports SS_* numbers plus the ACCEPTCON flag.
_DIAG_STATES = {1: "connected", 7: "unconnected", 10: "listening", 2: "connecting"}
_PROC_STATES = {1: "unconnected", 2: "connecting", 3: "connected", 4: "disconnecting"}
_ACCEPTCON = 0x10000


@dataclass(frozen=True)
class UnixSocketInfo:
    """One Unix socket: its sockfs inode, type, state and the address it was bound to."""

    inode: int
    type: str
    state: str
    bound_as: str | None  # path, "@abstract" or None for an unnamed socket
    vfs: tuple[int, int] | None = None  # (st_dev, st_ino) of the bound file (sock_diag only)
    peer: int | None = None  # inode of the connected peer socket
    uid: int | None = None
    rqueue: int | None = None  # listener: connections waiting; others: bytes queued to read
    wqueue: int | None = None  # listener: the backlog; others: bytes queued to send


def unix_sockets() -> list[UnixSocketInfo]:
    """Every Unix socket in this network namespace, from sock_diag or else /proc/net/unix."""
    try:
        return list(_diag_dump())
    except OSError:
        return proc_net_unix()


def _diag_dump() -> Iterator[UnixSocketInfo]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG) as s:
        req = _REQUEST.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, _UDIAG_SHOW, 0xFFFFFFFF, 0xFFFFFFFF)
        s.sendto(_NLMSGHDR.pack(_NLMSGHDR.size + len(req), _SOCK_DIAG_BY_FAMILY,
                                _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + req, (0, 0))
        while True:
            data = s.recv(1 << 16)
            if not data:
                return
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, kind = _NLMSGHDR.unpack_from(data, off)[:2]
                if kind == _NLMSG_DONE:
                    return
                if kind == _NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + _NLMSGHDR.size)[0]
                    raise OSError(err, os.strerror(err))
                yield _parse_diag(memoryview(data)[off + _NLMSGHDR.size:off + length])
                off += (length + 3) & ~3


def _parse_diag(msg: memoryview) -> UnixSocketInfo:
    _family, stype, state, inode = _MSG.unpack_from(msg)
    attrs: dict[int, bytes] = {}
    off = _MSG.size
    while off + _RTA.size <= len(msg):
        length, kind = _RTA.unpack_from(msg, off)
        if length < _RTA.size:
            break
        attrs[kind] = bytes(msg[off + _RTA.size:off + length])
        off += (length + 3) & ~3
    vfs = None
    if _ATTR_VFS in attrs:
        ino, kdev = struct.unpack("=II", attrs[_ATTR_VFS])
        # The kernel's dev_t is MAJOR << 20 | MINOR; os.stat() encodes it the glibc way.
        vfs = (os.makedev(kdev >> 20, kdev & 0xFFFFF), ino)
    rq = struct.unpack("=II", attrs[_ATTR_RQLEN]) if _ATTR_RQLEN in attrs else (None, None)
    return UnixSocketInfo(
        inode=inode,
        type=SOCK_TYPES.get(stype, str(stype)),
        state=_DIAG_STATES.get(state, str(state)),
        bound_as=_name(attrs[_ATTR_NAME]) if _ATTR_NAME in attrs else None,
        vfs=vfs,
        peer=struct.unpack("=I", attrs[_ATTR_PEER])[0] if _ATTR_PEER in attrs else None,
        uid=struct.unpack("=I", attrs[_ATTR_UID])[0] if _ATTR_UID in attrs else None,
        rqueue=rq[0],
        wqueue=rq[1],
    )


def _name(raw: bytes) -> str | None:
    if not raw:
        return None
    if raw[0] == 0:  # abstract: no terminating NUL, and NULs inside are shown as '@' (like ss)
        return "@" + os.fsdecode(raw[1:].replace(b"\0", b"@"))
    return os.fsdecode(raw.split(b"\0", 1)[0])


def proc_net_unix(path: str = "/proc/net/unix") -> list[UnixSocketInfo]:
    """Parse /proc/net/unix (columns: Num RefCount Protocol Flags Type St Inode [Path])."""
    out = []
    with open(path, "rb") as f:
        header = f.readline().split()
        col = {name: i for i, name in enumerate(header)}
        for line in f:
            fields = line.split(None, len(header) - 1)
            if len(fields) < col[b"Inode"] + 1:
                continue
            flags = int(fields[col[b"Flags"]], 16)
            st = int(fields[col[b"St"]], 16)
            stype = int(fields[col[b"Type"]], 16)
            path_field = fields[col[b"Path"]].rstrip(b"\n") if len(fields) > col[b"Path"] else b""
            out.append(UnixSocketInfo(
                inode=int(fields[col[b"Inode"]]),
                type=SOCK_TYPES.get(stype, str(stype)),
                state="listening" if flags & _ACCEPTCON else _PROC_STATES.get(st, str(st)),
                bound_as=os.fsdecode(path_field) or None,
            ))
    return out


def socket_owners() -> dict[int, int]:
    """Map socket inode -> the pid of a process holding it, for the processes we may inspect."""
    owners: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owners.setdefault(int(target[8:-1]), pid)  # a shared socket: the first pid found
    return owners


def is_bound(path: str) -> bool:
    """Whether any socket is bound to the socket file at ``path`` (a listener or a datagram socket).

    Probes with a datagram connect(): ECONNREFUSED means no socket is bound to the file any more,
    success or EPROTOTYPE (a stream or seqpacket socket is bound) means one is.  A datagram connect
    queues nothing on a listener, so the probe has no effect on whoever owns the socket.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return False
    except OSError as exc:
        if exc.errno == errno.EPROTOTYPE:
            return True
        raise
    finally:
        probe.close()
    return True
