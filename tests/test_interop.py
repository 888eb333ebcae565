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
import socket
import time
from collections.abc import Callable

import pytest

import ipcraft
from ipcraft.primitives.posix_mq import PosixMessageQueue
from ipcraft.primitives.sysv_mq import TYPE_MAX, SysVMessageQueue
from ipcraft.testing import Child, run_in_child, unique_key, unique_name

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


# -- abstract Unix socket addresses as C writes them ------------------------------------------------

SUN_PATH = 108  # sizeof(((struct sockaddr_un *)0)->sun_path) on Linux


def _c_style_abstract(name: str) -> bytes:
    """The address a C program binds with ``addrlen = sizeof(struct sockaddr_un)``: NUL, the name,
    NULs to the end of sun_path."""
    return (b"\0" + name.encode()).ljust(SUN_PATH, b"\0")


def test_connect_to_an_abstract_name_padded_to_sockaddr_un():
    """A plain-socket server bound as C binds (padded to sizeof(sockaddr_un)) is reached by
    UnixSocket.connect("@name") and by a unix+dgram:@name sender; an unpadded name nobody holds is
    still ECONNREFUSED."""
    from ipcraft.primitives.sockets import UnixSocket
    name = unique_name("pad")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dserver:
        server.bind(_c_style_abstract(name))
        server.listen(1)
        dserver.bind(_c_style_abstract(name + "d"))
        with UnixSocket.connect(f"@{name}", timeout=5) as client:
            conn, _ = server.accept()
            with conn:
                client.send(b"hello")
                assert conn.recv(16) == b"hello"
        with ipcraft.queue(f"unix+dgram:@{name}d", serializer="raw") as sender:
            sender.send_bytes(b"datagram")
        dserver.settimeout(5)
        assert dserver.recv(64)[8:] == b"datagram"
    with pytest.raises(ConnectionRefusedError):
        UnixSocket.connect(f"@{name}", timeout=5)


def test_datagram_return_address_is_passed_back_as_it_is():
    """A plain-socket client bound as C binds sends to an ipcraft datagram socket; the address
    recvfrom reports (NULs and all) is accepted by sendto, and the reply reaches the client."""
    from ipcraft.primitives.sockets import UnixSocket
    name = unique_name("ret")
    with UnixSocket.bind(f"@{name}", type="dgram") as server, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(_c_style_abstract(name + "c"))
        client.sendto(b"ping", b"\0" + name.encode())
        data, addr = server.recvfrom(timeout=5)
        assert data == b"ping" and addr.startswith(f"@{name}c\0")
        server.sendto(b"pong", addr, timeout=5)
        client.settimeout(5)
        assert client.recv(16) == b"pong"


# -- an inherited eventfd keeps its blocking mode --------------------------------------------------

_PLAIN_READER = ("import os, sys\n"
                 "fd = int(sys.argv[1])\n"
                 "print('ready', flush=True)\n"
                 "print(os.eventfd_read(fd), flush=True)\n"  # blocking read: EAGAIN would raise
                 "os.eventfd_write(fd, 5)\n")


def test_eventfd_from_an_inherited_fd_leaves_the_file_description_blocking():
    """EventFD.from_fd on a blocking eventfd shared with a plain-os process: ipcraft's timed recv
    never waits past its timeout, yet the fd stays blocking, so the other process's blocking read
    waits for ipcraft's send instead of failing with EAGAIN."""
    import subprocess
    import sys

    from ipcraft.errors import Timeout
    from ipcraft.primitives.eventfd import EventFD
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        with EventFD.from_fd(os.dup(efd)) as h:
            assert os.get_blocking(efd)
            with pytest.raises(Timeout):
                h.recv(timeout=0)
            with pytest.raises(Timeout):
                h.recv(timeout=0.05)
            assert os.get_blocking(efd)
            with subprocess.Popen([sys.executable, "-c", _PLAIN_READER, str(efd)], pass_fds=[efd],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as peer:
                try:
                    assert peer.stdout is not None and peer.stdout.readline() == "ready\n"
                    time.sleep(0.1)  # let the peer block in read(2)
                    h.send(7)
                    out, err = peer.communicate(timeout=10)
                finally:
                    peer.kill()
                assert peer.returncode == 0, err
                assert out == "7\n"
            assert h.recv(timeout=5) == 5
            assert os.get_blocking(efd)
    finally:
        os.close(efd)


# -- ipcraft ls shows System V status bits ---------------------------------------------------------

_libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
_libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_libc.shmat.restype = ctypes.c_void_p
_libc.shmdt.argtypes = (ctypes.c_void_p,)
_libc.shmctl.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_SHM_LOCK = 11


def test_ls_shows_sysv_shm_status_bits():
    """A segment a libc peer attached, locked (SHM_LOCK) and removed (IPC_RMID) while attached is
    listed with status "dest locked", as ipcs -m shows it; an ordinary one with an empty status."""
    import json

    from click.testing import CliRunner

    from ipcraft._cli import cli
    from ipcraft.inventory import list_objects
    plain = _check(_libc.shmget(unique_key(), 4096, _IPC_CREAT | _IPC_EXCL | 0o600))
    marked = _check(_libc.shmget(unique_key(), 4096, _IPC_CREAT | _IPC_EXCL | 0o640))
    addr = _libc.shmat(marked, None, 0)
    try:
        assert addr not in (None, ctypes.c_void_p(-1).value)
        _check(_libc.shmctl(marked, _SHM_LOCK, None))
        _check(_libc.shmctl(marked, _IPC_RMID, None))
        by_id = {o.id: o for o in list_objects("sysv_shm")}
        assert by_id[marked].details["status"] == "dest locked" and by_id[marked].mode == 0o640
        assert by_id[plain].details["status"] == "" and by_id[plain].mode == 0o600
        table = CliRunner().invoke(cli, ["ls", "--kind", "sysv_shm"], catch_exceptions=False).output
        row = next(line for line in table.splitlines() if f" {marked} " in line)
        assert "status=dest locked" in row and "640" in row
        listed = json.loads(CliRunner().invoke(cli, ["ls", "-k", "sysv_shm", "--format", "json"]).output)
        assert next(o for o in listed if o["id"] == marked)["details"]["status"] == "dest locked"
    finally:
        if addr not in (None, ctypes.c_void_p(-1).value):
            _libc.shmdt(addr)
        _libc.shmctl(plain, _IPC_RMID, None)
        _libc.shmctl(marked, _IPC_RMID, None)
    assert marked not in {o.id for o in list_objects("sysv_shm")}


# -- raw framing: peers that do not speak ipcraft's frames ------------------------------------------

def _plain_unix_server(path: str) -> socket.socket:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(10)
    return srv


def _read_until(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(10)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"the peer closed after {data!r}"
        data += chunk
    return data


def _connect_when_listening(path: str, timeout: float = 20) -> socket.socket:
    """A plain client connected to ``path`` once a command started in the background listens there."""
    deadline = time.monotonic() + timeout
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    while True:
        try:
            client.connect(path)
            return client
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() >= deadline:
                client.close()
                raise AssertionError(f"nothing listened on {path} within {timeout} s") from None
            time.sleep(0.05)


def test_unix_lines_with_a_plain_socket_server(tmp_ipc_dir):
    """framing=lines: ipcraft connects to a plain server without the verdict byte and both sides
    exchange newline-delimited messages; a final line without a newline still arrives."""
    path = os.path.join(tmp_ipc_dir, "s")
    with _plain_unix_server(path) as srv:
        with ipcraft.connect(f"unix://{path}?framing=lines", timeout=5) as ch:
            conn, _ = srv.accept()
            with conn:
                ch.send_bytes(b"hello")
                ch.send_bytes(b"")
                assert _read_until(conn, 7) == b"hello\n\n"
                conn.sendall(b"one\ntwo\nlast")
                assert ch.recv_bytes(timeout=5) == b"one" and ch.recv_bytes(timeout=5) == b"two"
                with pytest.raises(ValueError, match="newline"):
                    ch.send_bytes(b"a\nb")
            assert ch.recv_bytes(timeout=5) == b"last"
            with pytest.raises(ipcraft.errors.ChannelClosed):
                ch.recv_bytes(timeout=5)


def test_unix_listener_with_raw_framing_sends_no_verdict(tmp_ipc_dir):
    """A listener with framing=length accepts a plain client and sends it no verdict byte: the first
    bytes the client reads are the length-prefixed reply."""
    path = os.path.join(tmp_ipc_dir, "l")
    with ipcraft.listen(f"unix://{path}?framing=length") as listener:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            with listener.accept(timeout=5) as ch:
                client.sendall((5).to_bytes(4, "big") + b"hello" + (0).to_bytes(4, "big"))
                assert ch.recv_bytes(timeout=5) == b"hello" and ch.recv_bytes(timeout=5) == b""
                ch.send_bytes(b"reply")
                assert _read_until(client, 9) == b"\x00\x00\x00\x05reply"


def test_tcp_length_framing_with_a_plain_client():
    """tcp:// with framing=length and insecure=True runs no authkey handshake: a plain client's
    length-prefixed messages arrive, and ipcraft's replies are length-prefixed."""
    with ipcraft.listen("tcp://127.0.0.1:0?framing=length&insecure=true") as listener:
        with socket.create_connection(("127.0.0.1", listener.endpoint.host_port[1]), timeout=10) as client:
            with listener.accept(timeout=5) as ch:
                assert not ch.authenticated
                client.sendall((3).to_bytes(4, "big") + b"abc")
                assert ch.recv_bytes(timeout=5) == b"abc"
                ch.send_bytes(b"xyz")
                assert _read_until(client, 7) == b"\x00\x00\x00\x03xyz"


def test_raw_framing_with_the_handshake_asked_for(tmp_ipc_dir):
    """handshake=true keeps the verdict byte with framing=lines: two ipcraft ends still meet."""
    url = f"unix://{os.path.join(tmp_ipc_dir, 'h')}?framing=lines&handshake=true"
    with ipcraft.listen(url) as listener:
        def client() -> bytes:
            with ipcraft.connect(url, timeout=5) as ch:
                ch.send_bytes(b"ping")
                return ch.recv_bytes(timeout=5)
        child = Child(client)
        with listener.accept(timeout=5) as ch:
            assert ch.recv_bytes(timeout=5) == b"ping"
            ch.send_bytes(b"pong")
        assert child.result(10) == b"pong"


def test_raw_framing_is_validated():
    """A framing the scheme cannot keep, a serializer other than raw, an authkey without its
    handshake, or handshake=false with ipcraft's frames: InvalidEndpoint before anything is opened."""
    bad = ipcraft.errors.InvalidEndpoint
    with pytest.raises(bad, match="framing"):
        ipcraft.queue(f"mq://{unique_name('f')}?framing=lines", create=True)
    with pytest.raises(bad, match="serializer"):
        ipcraft.queue(f"mq://{unique_name('f')}?framing=none&serializer=msgpack", create=True)
    with pytest.raises(bad, match="framing"):
        ipcraft.connect("unix:@nothing-here?framing=none")
    with pytest.raises(bad, match="handshake"):
        ipcraft.connect("unix:@nothing-here?handshake=false")
    with pytest.raises(bad, match="authkey"):
        ipcraft.connect("tcp://127.0.0.1:9?framing=lines", authkey=b"k")
    with pytest.raises(bad):
        ipcraft.connect("shm://x?framing=none")


def test_cli_recv_framing_none_reads_what_libc_sends():
    """`ipcraft recv --framing none` prints a plain mq_send and a plain msgsnd (no ipcraft header),
    and `ipcraft send --framing none` puts plain messages that libc's mq_receive reads."""
    from click.testing import CliRunner

    from ipcraft._cli import cli
    run = CliRunner()
    name = unique_name("cli")
    mqd = _c_mq_create(name, 0o600)
    try:
        _check(_libc.mq_send(mqd, b"from mq_send", 12, 0))
        out = run.invoke(cli, ["recv", "--framing", "none", "-n", "1", "--timeout", "5", f"mq://{name}"],
                         catch_exceptions=False)
        assert out.exit_code == 0 and out.output == "from mq_send\n"
        sent = run.invoke(cli, ["send", "--framing", "none", f"mq://{name}", "to mq_receive"],
                          catch_exceptions=False)
        assert sent.exit_code == 0 and _c_mq_receive(mqd) == b"to mq_receive"
    finally:
        os.close(mqd)
        _libc.mq_unlink(f"/{name}".encode())
    key = unique_key()
    msqid = _check(_libc.msgget(key, _IPC_CREAT | _IPC_EXCL | 0o600))
    try:
        _check(_libc.msgsnd(msqid, _c_msg(9, b"from msgsnd"), 11, 0))
        out = run.invoke(cli, ["recv", "--framing", "none", "-n", "1", "--timeout", "5", f"sysvmq://{key}"],
                         catch_exceptions=False)
        assert out.exit_code == 0 and out.output == "from msgsnd\n"
    finally:
        _libc.msgctl(msqid, _IPC_RMID, None)


def test_datagrams_and_seqpacket_with_framing_none(tmp_ipc_dir):
    """framing=none on unix+dgram and unix+seqpacket: each datagram or record of a plain socket is one
    message, and ipcraft's are plain too."""
    dpath = os.path.join(tmp_ipc_dir, "d")
    with ipcraft.queue(f"unix+dgram://{dpath}?framing=none", create=True) as q, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as plain:
        plain.sendto(b"datagram", dpath)
        assert q.recv_bytes(timeout=5) == b"datagram"
    spath = os.path.join(tmp_ipc_dir, "p")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as srv:
        srv.bind(spath)
        srv.listen(1)
        with ipcraft.connect(f"unix+seqpacket://{spath}?framing=none", timeout=5) as ch:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(10)
                ch.send_bytes(b"record")
                assert conn.recv(100) == b"record"
                conn.send(b"back")
                assert ch.recv_bytes(timeout=5) == b"back"


def test_cli_send_and_recv_lines_with_plain_sockets(tmp_ipc_dir):
    """`ipcraft send --framing lines` to a plain server writes lines; `ipcraft recv --framing lines`
    on listen: prints what a plain client writes, as socat would exchange them."""
    import subprocess
    import sys
    path = os.path.join(tmp_ipc_dir, "c")
    with _plain_unix_server(path) as srv:
        sender = subprocess.Popen([sys.executable, "-m", "ipcraft", "send", "--framing", "lines",
                                   f"unix://{path}", "alpha", "beta"], stderr=subprocess.PIPE)
        try:
            conn, _ = srv.accept()
            with conn:
                assert _read_until(conn, 11) == b"alpha\nbeta\n"
            assert sender.wait(20) == 0, sender.stderr.read() if sender.stderr else ""
        finally:
            if sender.poll() is None:
                sender.kill()
            sender.wait(10)
            if sender.stderr:
                sender.stderr.close()
    os.unlink(path)
    receiver = subprocess.Popen([sys.executable, "-m", "ipcraft", "recv", "--framing", "lines",
                                 f"listen:unix://{path}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with _connect_when_listening(path) as client:
            client.sendall(b"gamma\ndelta\n")
        out, err = receiver.communicate(timeout=20)
        assert receiver.returncode == 0, err
        assert out == b"gamma\ndelta\n"
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.communicate(timeout=10)


def test_plain_mkfifo_with_framing_lines(tmp_ipc_dir):
    """A FIFO made by plain mkfifo, with no lock file: lines a plain writer puts in arrive through
    fifo://...?framing=lines and `ipcraft recv --framing lines`, and ipcraft's lines reach a plain
    reader.  Nothing else is created next to it, and an opener does not remove it."""
    from click.testing import CliRunner

    from ipcraft._cli import cli
    path = os.path.join(tmp_ipc_dir, "plain.fifo")
    os.mkfifo(path, 0o600)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(writer, b"first\nsecond\n")
        with ipcraft.queue(f"fifo://{path}?framing=lines") as q:
            assert not q.owner
            assert q.recv_bytes(timeout=5) == b"first" and q.recv_bytes(timeout=5) == b"second"
            q.send_bytes(b"to the plain reader")
            assert os.read(reader, 100) == b"to the plain reader\n"
        os.write(writer, b"third\n")
        out = CliRunner().invoke(cli, ["recv", "--framing", "lines", "-n", "1", "--timeout", "5", f"fifo://{path}"],
                                 catch_exceptions=False)
        assert out.exit_code == 0 and out.output == "third\n"
        assert sorted(os.listdir(tmp_ipc_dir)) == ["plain.fifo"]
    finally:
        os.close(reader)
        os.close(writer)
    with ipcraft.queue(f"fifo://{os.path.join(tmp_ipc_dir, 'made')}?framing=length", create=True) as q:
        q.send_bytes(b"x" * 10)
        assert q.recv_bytes(timeout=5) == b"x" * 10
    assert sorted(os.listdir(tmp_ipc_dir)) == ["plain.fifo"]


def test_pipe_with_framing_lines_talks_to_sed():
    """ipcraft.pipe(framing="lines") between Python and sed(1): lines go in, edited lines come back,
    and closing the writing end ends sed and so the stream."""
    import shutil
    import subprocess
    sed = shutil.which("sed")
    if sed is None:
        pytest.skip("no sed(1) on PATH")
    to_child_r, to_child_w = ipcraft.pipe(duplex=False, framing="lines")
    from_child_r, from_child_w = ipcraft.pipe(duplex=False, framing="lines")
    with to_child_r, from_child_w:
        child = subprocess.Popen([sed, "-u", "s/^/got /"], stdin=to_child_r.fileno(), stdout=from_child_w.fileno())
    try:
        with to_child_w, from_child_r:
            to_child_w.send_bytes(b"one")
            to_child_w.send_bytes(b"two")
            assert from_child_r.recv_bytes(timeout=10) == b"got one"
            assert from_child_r.recv_bytes(timeout=10) == b"got two"
            to_child_w.close()
            with pytest.raises(ipcraft.errors.ChannelClosed):
                from_child_r.recv_bytes(timeout=10)
        assert child.wait(10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    with pytest.raises(ipcraft.errors.InvalidEndpoint):
        ipcraft.pipe(framing="none")
    with pytest.raises(ipcraft.errors.InvalidEndpoint):
        ipcraft.pipe(framing="lines", serializer="msgpack")


def test_aio_with_framing_lines(tmp_ipc_dir):
    """ipcraft.aio over framing=lines: lines written without blocking the loop reach a plain server,
    and its lines come back as messages."""
    import asyncio

    import ipcraft.aio

    path = os.path.join(tmp_ipc_dir, "aio")

    async def talk(srv: socket.socket) -> tuple[bytes, bytes]:
        ch = await ipcraft.aio.connect(f"unix://{path}?framing=lines", timeout=5)
        try:
            conn, _ = srv.accept()
            with conn:
                await ch.send_bytes(b"async line")
                got = _read_until(conn, 11)
                conn.sendall(b"back\n")
                return got, await ch.recv_bytes(timeout=5)
        finally:
            ch.close()
    with _plain_unix_server(path) as srv:
        assert asyncio.run(asyncio.wait_for(talk(srv), 30)) == (b"async line\n", b"back")


def test_relay_moves_socat_style_lines_into_a_queue(tmp_ipc_dir):
    """`ipcraft relay --framing-a lines listen:unix://... mq://...` turns each line a plain client
    writes into one message of an ipcraft queue, and ends when the client closes."""
    import subprocess
    import sys
    path = os.path.join(tmp_ipc_dir, "relay")
    url = f"mq://{unique_name('rl')}"
    with ipcraft.queue(url, create=True) as q:
        relay = subprocess.Popen([sys.executable, "-m", "ipcraft", "relay", "--one-way", "--framing-a", "lines",
                                  f"listen:unix://{path}", url], stderr=subprocess.PIPE)
        try:
            with _connect_when_listening(path) as client:
                client.sendall(b"first line\nsecond line\n")
            assert q.recv_bytes(timeout=10) == b"first line"
            assert q.recv_bytes(timeout=10) == b"second line"
            _, err = relay.communicate(timeout=20)
            assert relay.returncode == 0, err
        finally:
            if relay.poll() is None:
                relay.kill()
                relay.communicate(timeout=10)
