"""ipcraft against peers that do not import it: libc through ctypes, plain os and socket calls.

Each test here exercises one C idiom that ipcraft must meet as a C program would: queues opened
read-only or write-only, System V types as a C long, abstract socket addresses padded to
sizeof(struct sockaddr_un), a shared eventfd whose blocking mode ipcraft must not change, and the
System V status bits that ``ipcraft ls`` shows as ipcs(1) does.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

import pytest

import ipcraft
from ipcraft.primitives.posix_mq import PosixMessageQueue
from ipcraft.primitives.sysv_mq import TYPE_MAX, SysVMessageQueue
from ipcraft.testing import run_in_child, unique_key, unique_name

NOBODY = 65534
LONG_MAX = 2 ** (8 * ctypes.sizeof(ctypes.c_long) - 1) - 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mq_open.argtypes = (ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)
_libc.mq_send.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint)
_libc.mq_receive.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p)
_libc.mq_receive.restype = ctypes.c_ssize_t
_libc.mq_unlink.argtypes = (ctypes.c_char_p,)
_libc.msgget.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.msgsnd.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.msgrcv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long, ctypes.c_int)
_libc.msgrcv.restype = ctypes.c_ssize_t
_libc.msgctl.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p)

_IPC_CREAT, _IPC_EXCL, _IPC_NOWAIT, _IPC_RMID = 0o1000, 0o2000, 0o4000, 0


def _check(rc: int) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


class _MqAttr(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long),
                ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4))


def _c_mq_create(name: str, mode: int) -> int:
    """mq_open(O_CREAT | O_EXCL | O_RDWR, mode) as a C program does (umask cleared, so mode is exact)."""
    attr = _MqAttr(0, 4, 256, 0)
    old = os.umask(0)
    try:
        return _check(_libc.mq_open(f"/{name}".encode(), os.O_CREAT | os.O_EXCL | os.O_RDWR, mode,
                                    ctypes.byref(attr)))
    finally:
        os.umask(old)


def _c_mq_receive(mqd: int) -> bytes:
    buf = ctypes.create_string_buffer(256)
    n = _check(_libc.mq_receive(mqd, buf, 256, None))
    return buf.raw[:n]


def _c_msg(mtype: int, data: bytes) -> ctypes.Array[ctypes.c_char]:
    """A struct msgbuf: a C long type, then the bytes."""
    buf = ctypes.create_string_buffer(ctypes.sizeof(ctypes.c_long) + len(data))
    ctypes.c_long.from_buffer(buf).value = mtype
    buf[ctypes.sizeof(ctypes.c_long):] = data
    return buf


def _c_msgrcv(msqid: int, msgtyp: int, flags: int = 0) -> tuple[bytes, int]:
    buf = ctypes.create_string_buffer(ctypes.sizeof(ctypes.c_long) + 256)
    n = _check(_libc.msgrcv(msqid, buf, 256, msgtyp, flags))
    return buf.raw[ctypes.sizeof(ctypes.c_long):ctypes.sizeof(ctypes.c_long) + n], ctypes.c_long.from_buffer(buf).value


def _refused(call: Callable[[], object]) -> str:
    """``"refused errno=N"`` if ``call()`` raises PermissionError, else ``"allowed"`` (what it opened
    is closed)."""
    try:
        got = call()
    except PermissionError as exc:
        return f"refused errno={exc.errno}"
    if hasattr(got, "close"):
        got.close()
    return "allowed"


def _become_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


# -- queues opened read-only or write-only -------------------------------------------------------------

def test_posix_queue_of_another_user_opens_read_only():
    """A 0644 queue made by a C-style mq_open as root: nobody cannot open it read-write, but opens it
    with access="r" (mq_open O_RDONLY) and receives what the C side sent; its send is refused."""
    name = unique_name("acc")
    mqd = _c_mq_create(name, 0o644)
    try:
        _check(_libc.mq_send(mqd, b"from C", 6, 3))

        def reader() -> tuple[str, bytes, int, str]:
            _become_nobody()
            rw = _refused(lambda: PosixMessageQueue.open(name))
            with PosixMessageQueue.open(name, access="r") as q:
                data, prio = q.recv(timeout=5)
                send = _refused(lambda: q.send(b"x"))
            return rw, data, prio, send
        assert run_in_child(reader, timeout=20) == (f"refused errno={errno.EACCES}", b"from C", 3,
                                                    f"refused errno={errno.EBADF}")
    finally:
        os.close(mqd)
        _libc.mq_unlink(f"/{name}".encode())


def test_posix_queue_of_another_user_opens_write_only_as_a_channel():
    """A 0622 queue made by a C-style mq_open as root: nobody sends through
    ``ipcraft.queue("mq://name?access=w")`` and the C side receives the frame."""
    name = unique_name("acw")
    mqd = _c_mq_create(name, 0o622)
    try:
        def writer() -> str:
            _become_nobody()
            with ipcraft.queue(f"mq://{name}?access=w&serializer=raw") as q:
                q.send_bytes(b"to C")
                return _refused(lambda: q.recv_bytes(timeout=0))
        assert run_in_child(writer, timeout=20) == f"refused errno={errno.EBADF}"
        frame = _c_mq_receive(mqd)
        assert frame[8:] == b"to C" and len(frame) == 12
    finally:
        os.close(mqd)
        _libc.mq_unlink(f"/{name}".encode())


def test_access_is_validated():
    """A bad access value is a ValueError (InvalidEndpoint in a URL) before anything is opened."""
    with pytest.raises(ValueError, match="access"):
        PosixMessageQueue.open(unique_name("bad"), access="x")
    with pytest.raises(ValueError, match="access"):
        SysVMessageQueue.open(unique_key(), access="read")
    with pytest.raises(ipcraft.errors.InvalidEndpoint):
        ipcraft.queue(f"mq://{unique_name('bad')}?access=rx")


def test_sysv_queue_of_another_user_opens_read_only_and_write_only():
    """A 0644 System V queue made by msgget as root: nobody opens it with access="r" (msgget asks
    for read only) and receives; a 0622 one with access="w" and sends, which the C side receives."""
    key_r, key_w = unique_key(), unique_key()
    id_r = _check(_libc.msgget(key_r, _IPC_CREAT | _IPC_EXCL | 0o644))
    id_w = _check(_libc.msgget(key_w, _IPC_CREAT | _IPC_EXCL | 0o622))
    try:
        msg = _c_msg(7, b"from C")
        _check(_libc.msgsnd(id_r, msg, 6, 0))

        def child() -> tuple[str, tuple[bytes, int], str, str]:
            _become_nobody()
            rw = _refused(lambda: SysVMessageQueue.open(key_r))
            with SysVMessageQueue.open(key_r, access="r") as q:
                got = q.recv(timeout=5)
                send = _refused(lambda: q.send(b"x"))
            with ipcraft.queue(f"sysvmq://{key_w}?access=w&serializer=raw") as w:
                w.send_bytes(b"to C")
                recv = _refused(lambda: w.recv_bytes(timeout=0))
            return rw, got, send, recv
        assert run_in_child(child, timeout=20) == (f"refused errno={errno.EACCES}", (b"from C", 7),
                                                   f"refused errno={errno.EBADF}", f"refused errno={errno.EBADF}")
        frame, mtype = _c_msgrcv(id_w, 0, _IPC_NOWAIT)
        assert (frame[8:], mtype) == (b"to C", 1)
    finally:
        _libc.msgctl(id_r, _IPC_RMID, None)
        _libc.msgctl(id_w, _IPC_RMID, None)


# -- System V types are C longs ------------------------------------------------------------------------

def test_sysv_types_are_c_longs():
    """Types up to LONG_MAX go both ways between libc's msgsnd/msgrcv and ipcraft, and select as the
    kernel selects them (a negative type: the lowest type <= its absolute value)."""
    assert TYPE_MAX == LONG_MAX
    with SysVMessageQueue.create(unique_key()) as q:
        _check(_libc.msgsnd(q.id, _c_msg(LONG_MAX, b"max"), 3, 0))
        _check(_libc.msgsnd(q.id, _c_msg(2**40, b"big"), 3, 0))
        assert q.recv(type=LONG_MAX, timeout=5) == (b"max", LONG_MAX)
        assert q.recv(type=-(2**41), timeout=5) == (b"big", 2**40)
        q.send(b"one", type=LONG_MAX)
        q.send(b"two", type=2**33)
        q.send(b"three", type=5)
        assert _c_msgrcv(q.id, -(2**34), _IPC_NOWAIT) == (b"three", 5)
        assert _c_msgrcv(q.id, -(2**34), _IPC_NOWAIT) == (b"two", 2**33)
        assert _c_msgrcv(q.id, LONG_MAX, _IPC_NOWAIT) == (b"one", LONG_MAX)
        q.send(b"4", type=2**62)
        with pytest.raises(ipcraft.errors.Timeout):
            q.recv(type=2**62, except_type=True, timeout=0.05)
        assert q.recv(type=2**62 + 1, except_type=True, timeout=0) == (b"4", 2**62)
        with pytest.raises(ValueError, match="type"):
            q.send(b"x", type=LONG_MAX + 1)
        with pytest.raises(ValueError, match="type"):
            q.recv(type=-LONG_MAX - 1)


def test_sysvmq_channel_passes_long_types():
    """``sysvmq://`` passes a C long type= through send and recv selection."""
    with ipcraft.queue(f"sysvmq://{unique_key()}", create=True, serializer="raw") as q:
        q.send_bytes(b"a", type=LONG_MAX)
        q.send_bytes(b"b", type=3)
        assert q.recv_bytes(type=LONG_MAX, timeout=5) == b"a" and q.last_meta == {"type": LONG_MAX}
        assert q.recv_bytes(timeout=5) == b"b"
