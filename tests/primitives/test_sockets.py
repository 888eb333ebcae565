"""UnixSocket, TcpSocket, UdpSocket: thin, typed, faithful wrappers over socket(7)."""

from __future__ import annotations

import errno
import os
import signal
import stat

import pytest

from ipcraft.errors import (
    ChannelClosed,
    InvalidEndpoint,
    LimitExceeded,
    MessageTooLarge,
    PeerVanished,
    Timeout,
)
from ipcraft.primitives.sockets import TcpSocket, UdpSocket, UnixSocket
from ipcraft.testing import Child, ChildFailed, unique_name


@pytest.fixture()
def sock_path(tmp_ipc_dir: str) -> str:
    return os.path.join(tmp_ipc_dir, "s.sock")


@pytest.mark.timeout(30)
def test_fd_passing_between_two_processes(sock_path: str) -> None:
    """A child sends a pipe's write end over SCM_RIGHTS; the parent writes through the received fd."""
    with UnixSocket.listen(sock_path) as listener:
        def child() -> bytes:
            r, w = os.pipe()
            with UnixSocket.connect(sock_path, timeout=5) as s:
                s.send_fds(b"take this", [w])
                os.close(w)
                s.recv(timeout=10)  # wait for the parent's go
            return os.read(r, 100)

        c = Child(child)
        with listener.accept(timeout=10) as conn:
            data, fds = conn.recv_fds(timeout=10)
            assert data == b"take this" and len(fds) == 1
            assert not os.get_inheritable(fds[0])  # MSG_CMSG_CLOEXEC
            os.write(fds[0], b"written by the parent")
            os.close(fds[0])
            conn.send(b"go")
            assert c.result(10) == b"written by the parent"


@pytest.mark.timeout(30)
def test_peer_credentials_of_a_child_that_dropped_to_nobody() -> None:
    """SO_PEERCRED reports the uid/gid the peer had at connect(): here nobody (65534)."""
    name = "@" + unique_name("cred")
    with UnixSocket.listen(name) as listener:
        def child() -> int:
            os.setgid(65534)
            os.setuid(65534)
            with UnixSocket.connect(name, timeout=5) as s:
                s.send(b"hi")
                s.recv(timeout=10)
            return os.getpid()

        c = Child(child)
        with listener.accept(timeout=10) as conn:
            peer = conn.peer_credentials()
            assert conn.recv(timeout=10) == b"hi"
            conn.send(b"bye")
        assert (peer.uid, peer.gid) == (65534, 65534)
        assert peer.pid == c.result(10) == c.pid


def test_abstract_names_leave_no_file_and_are_exclusive() -> None:
    """An @name binds in the abstract namespace: no file, address reads back, a second bind fails."""
    name = "@" + unique_name("abs")
    with UnixSocket.listen(name) as listener:
        assert listener.address == name
        with pytest.raises(OSError) as info:
            UnixSocket.listen(name)
        assert info.value.errno == errno.EADDRINUSE
        with UnixSocket.connect(name) as c, listener.accept(timeout=5) as s:
            c.send(b"abstract")
            assert s.recv(timeout=5) == b"abstract"
            assert s.peer_credentials().pid == os.getpid()
    with pytest.raises(ConnectionRefusedError):  # gone with the last socket
        UnixSocket.connect(name)


def test_seqpacket_keeps_boundaries_and_refuses_oversize_reads() -> None:
    """seqpacket: one send, one recv, whatever the sizes; a message over size= stays queued."""
    a, b = UnixSocket.pair("seqpacket")
    with a, b:
        for msg in (b"one", b"", b"x" * 100_000, b"two"):
            a.send(msg)
        assert b.recv(timeout=1) == b"one"
        assert b.recv(timeout=1) == b""
        with pytest.raises(MessageTooLarge) as info:
            b.recv(1000, timeout=1)
        assert info.value.size == 100_000
        buf = bytearray(200_000)
        assert b.recv_into(buf, timeout=1) == 100_000
        assert b.recv(timeout=1) == b"two"
        a.close()
        with pytest.raises(ChannelClosed):
            b.recv(timeout=1)


def test_dgram_between_bound_sockets(tmp_ipc_dir: str) -> None:
    """unix dgram: sendto a bound path, recvfrom tells the sender's address; empty datagrams exist."""
    rx_path, tx_path = os.path.join(tmp_ipc_dir, "rx"), os.path.join(tmp_ipc_dir, "tx")
    with UnixSocket.bind(rx_path) as rx, UnixSocket.bind(tx_path) as tx:
        tx.sendto(b"d1", rx_path)
        tx.sendto(b"", rx_path)
        assert rx.recvfrom(timeout=1) == (b"d1", tx_path)
        assert rx.recv(timeout=1) == b""
        with pytest.raises(Timeout):
            rx.recv(timeout=0.05)
        with pytest.raises(MessageTooLarge, match="SO_SNDBUF"):
            tx.sendto(b"x" * (64 << 20), rx_path)


def test_path_too_long_is_invalid_endpoint(tmp_ipc_dir: str) -> None:
    """A path longer than sun_path's 107 bytes: InvalidEndpoint explaining the limit."""
    long_path = os.path.join(tmp_ipc_dir, "x" * 120)
    for make in (UnixSocket.listen, UnixSocket.connect, UnixSocket.bind):
        with pytest.raises(InvalidEndpoint, match="107"):
            make(long_path)


def test_socket_file_is_owner_only_and_removed_by_the_binder_only(sock_path: str) -> None:
    """The listener's file is 0600; accepted, connected and forked copies never remove it."""
    old = os.umask(0)
    try:
        listener = UnixSocket.listen(sock_path)
    finally:
        os.umask(old)
    with listener:
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        with UnixSocket.connect(sock_path) as c, listener.accept(timeout=5) as s:
            pass
        assert c.closed and s.closed and os.path.exists(sock_path)
        Child(listener.close).result(10)
        assert os.path.exists(sock_path)
    assert not os.path.exists(sock_path)


def test_stale_file_is_replaced_and_live_one_refused(sock_path: str) -> None:
    """A socket file nobody listens on is replaced; a live one is EADDRINUSE; a regular file EEXIST."""
    with UnixSocket.listen(sock_path):
        with pytest.raises(OSError) as info:
            UnixSocket.listen(sock_path)
        assert info.value.errno == errno.EADDRINUSE
    def crash() -> None:
        s = UnixSocket.listen(sock_path)
        os._exit(s.fileno() and 0)  # dies without closing: the file stays behind

    with pytest.raises(ChildFailed):
        Child(crash).result(10)
    assert os.path.exists(sock_path)
    with UnixSocket.listen(sock_path) as fresh:
        assert fresh.address == sock_path
    open(sock_path, "w").close()
    with pytest.raises(FileExistsError):
        UnixSocket.listen(sock_path)


def test_fd_limits_are_explained() -> None:
    """More than SCM_MAX_FD fds is LimitExceeded; more than maxfds arriving is MessageTooLarge."""
    a, b = UnixSocket.pair("stream")
    r, w = os.pipe()
    try:
        with pytest.raises(LimitExceeded, match="SCM_MAX_FD"):
            a.send_fds(b"x", [r] * 254)
        with pytest.raises(ValueError):
            a.send_fds(b"", [r])
        a.send_fds(b"x", [r, w, r])
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(MessageTooLarge, match="maxfds=1"):
            b.recv_fds(maxfds=1, timeout=1)
        assert len(os.listdir("/proc/self/fd")) == before  # the fd that came was closed
    finally:
        for x in (a, b):
            x.close()
        os.close(r)
        os.close(w)


@pytest.mark.timeout(30)
def test_peer_killed_is_eof_then_peer_vanished() -> None:
    """After the peer is SIGKILLed, recv reports ChannelClosed and send PeerVanished, no hang."""
    a, b = UnixSocket.pair()
    with a, b:
        def child() -> None:
            a.send(b"alive")
            signal.pause()

        c = Child(child)
        a.close()
        assert b.recv(timeout=10) == b"alive"
        c.kill()
        c.wait()
        with pytest.raises(ChannelClosed):
            b.recv(timeout=10)
        with pytest.raises(PeerVanished):
            b.send(b"x" * 1_000_000, timeout=10)


def test_stream_send_timeout_reports_bytes_written() -> None:
    """A stream send the peer does not drain times out with Timeout.written > 0, socket usable."""
    a, b = UnixSocket.pair()
    with a, b:
        with pytest.raises(Timeout) as info:
            a.send(b"x" * (16 << 20), timeout=0.1)
        written = info.value.written
        assert 0 < written < 16 << 20
        got = 0
        while got < written:
            got += len(b.recv(1 << 20, timeout=1))
        assert got == written


def test_tcp_round_trip_and_errors() -> None:
    """TcpSocket listen/connect/accept moves bytes; refused and timed-out operations are typed."""
    with TcpSocket.listen() as listener:
        host, port = listener.address
        with TcpSocket.connect(host, port, timeout=5) as c, listener.accept(timeout=5) as s:
            c.send(b"y" * 300_000)
            got = bytearray()
            while len(got) < 300_000:
                got += s.recv(timeout=5)
            assert got == b"y" * 300_000
            assert s.peer_address == c.address
            with pytest.raises(Timeout):
                c.recv(timeout=0.05)
            s.shutdown()
            with pytest.raises(ChannelClosed):
                c.recv(timeout=5)
        with pytest.raises(Timeout):
            listener.accept(timeout=0.05)
    with pytest.raises(ConnectionRefusedError):
        TcpSocket.connect(host, port, timeout=5)


def test_udp_round_trip_and_size_limit() -> None:
    """UdpSocket bind/connect carry datagrams; one over 65507 bytes is MessageTooLarge naming it."""
    with UdpSocket.bind() as rx, UdpSocket.connect(*rx.address) as tx:
        tx.send(b"ping")
        data, addr = rx.recvfrom(timeout=5)
        assert data == b"ping" and addr == tx.address
        with pytest.raises(MessageTooLarge, match="65507"):
            tx.send(b"x" * 70_000)
        rx.sendto(b"pong", tx.address)
        assert tx.recv(timeout=5) == b"pong"


def test_bad_socket_type_and_public_constructor() -> None:
    """An unknown socket type is ValueError naming the choices; the classes have no public __init__."""
    with pytest.raises(ValueError, match="stream, dgram, seqpacket"):
        UnixSocket.pair("raw")
    for cls in (UnixSocket, TcpSocket, UdpSocket):
        with pytest.raises(TypeError):
            cls()


def test_a_path_of_exactly_107_bytes_binds(tmp_ipc_dir: str) -> None:
    """sun_path's full 107 bytes are usable: binding needs no longer temporary name."""
    path = os.path.join(tmp_ipc_dir, "p" * (107 - len(tmp_ipc_dir) - 1))
    assert len(os.fsencode(path)) == 107
    with UnixSocket.listen(path) as listener, UnixSocket.connect(path, timeout=5) as c:
        with listener.accept(timeout=5) as s:
            c.send(b"full length")
            assert s.recv(timeout=5) == b"full length"
    assert not os.path.exists(path)
