"""Sockets: Unix-domain sockets (stream, datagram, seqpacket; file-system and abstract names; fd
passing; peer credentials) and thin TCP/UDP helpers, all with timeouts and typed errors.

Decisions:

* **Addresses are strings**: ``"/run/app.sock"`` (or a relative path) names a socket file,
  ``"@name"`` an abstract name (Linux: no file, gone when the last socket closes, no permissions: any
  local process may connect, so check :meth:`UnixSocket.peer_credentials`).  The length is checked
  before the kernel sees it: sun_path holds 107 bytes plus the NUL.
* **Abstract names as C writes them**: the kernel compares all ``addrlen`` bytes of an abstract
  address, and the common C idiom binds with ``addrlen = sizeof(struct sockaddr_un)``, so the name is
  padded with NULs to the whole sun_path.  A connect to ``"@name"`` that nobody holds
  (ECONNREFUSED) is tried once more with that padded form.  Addresses that a receive reports keep
  their NULs and can be sent back to as they are.
* **Socket files are owner-only and made atomically**: the socket's own inode is chmod'ed before
  ``bind()``, and Linux gives the new file that mode (less the umask, which ipcraft then restores), so
  no client ever sees a looser file.  A stale file (nobody accepts there: ECONNREFUSED) is replaced, a
  live one is EADDRINUSE.  Only the binder removes the file, on close, in the process that bound it,
  and only if the path still names the socket it bound.
* **Received fds are close-on-exec** (MSG_CMSG_CLOEXEC) and never silently dropped: more fds than
  ``maxfds`` (MSG_CTRUNC) is an error, and the ones that did arrive are closed.
* The kernel checks SCM_RIGHTS against SCM_MAX_FD (253) per message; ipcraft checks first.

.. versionadded:: 0.1
"""

from __future__ import annotations

import array
import errno
import os
import socket
import struct
from typing import Any, Final

from .._errors import os_error
from .._names import DEFAULT_MODE, validate_unix_path
from .._peer import Peer
from .._wait import POLLIN, POLLOUT, deadline_after, wait_fd
from ..errors import ChannelClosed, LimitExceeded, MessageTooLarge, Timeout
from ._sockio import SocketBase, bind_path, connect_unix, resolve_inet, sock_type

__all__ = ("UnixSocket", "TcpSocket", "UdpSocket", "peer_credentials")

_CRED = struct.Struct("3i")
_FD_SIZE = array.array("i").itemsize


def peer_credentials(sock: socket.socket) -> Peer:
    """The peer's pid, uid and gid as the kernel recorded them at connect() or socketpair()
    (SO_PEERCRED on an AF_UNIX socket).  They cannot be forged, and do not change if the peer later
    drops privileges.

    .. versionadded:: 0.1
    """
    pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return Peer(pid=pid, uid=uid, gid=gid)


def _unix_sockaddr(address: str) -> bytes:
    """The sun_path bytes for ``"/path"`` or ``"@abstract"``; InvalidEndpoint if too long or empty."""
    if address.startswith("@"):
        return validate_unix_path(address[1:], abstract=True)
    return validate_unix_path(address)


class UnixSocket(SocketBase):
    """An AF_UNIX socket: ``"stream"`` (a byte stream), ``"seqpacket"`` (a connection that keeps message
    boundaries) or ``"dgram"`` (connectionless messages; the kernel never loses or reorders one on a
    Unix socket, a full receiver makes the sender wait).

    Made by :meth:`listen` (+ :meth:`accept`), :meth:`connect`, :meth:`bind` or :meth:`pair`.  Besides
    bytes it carries open file descriptors (:meth:`send_fds`/:meth:`recv_fds`) and tells the peer's
    pid/uid/gid (:meth:`peer_credentials`).  ``with`` closes it; the socket that bound a file removes
    it on close.

    .. versionadded:: 0.1
    """

    #: Most fds one SCM_RIGHTS message may carry (SCM_MAX_FD in include/net/scm.h).
    SCM_MAX_FD: Final[int] = 253

    _bound: tuple[int, int] | None = None
    _bound_path: str = ""
    _binder_pid: int = -1

    def __init__(self) -> None:
        self._closed = True  # nothing to release; keeps __del__ quiet
        raise TypeError("a UnixSocket comes from UnixSocket.listen(), connect(), bind() or pair()")

    @classmethod
    def _new(cls, type: str | int) -> tuple[UnixSocket, socket.socket]:
        sock = socket.socket(socket.AF_UNIX, sock_type(type) | socket.SOCK_CLOEXEC)
        return cls._wrap(sock), sock

    @classmethod
    def pair(cls, type: str | int = "stream") -> tuple[UnixSocket, UnixSocket]:
        """Two connected sockets (socketpair), e.g. for a parent and the child it forks."""
        a, b = socket.socketpair(socket.AF_UNIX, sock_type(type) | socket.SOCK_CLOEXEC)
        return cls._wrap(a), cls._wrap(b)

    @classmethod
    def bind(cls, address: str, *, type: str | int = "dgram", mode: int = DEFAULT_MODE) -> UnixSocket:
        """A socket bound to ``address`` (``"/path"`` or ``"@name"``), e.g. a datagram receiver.

        A socket file is created with ``mode`` (owner-only by default) and removed when this socket
        closes.

        Raises:
            InvalidEndpoint: the address is empty or longer than sun_path's 107 bytes.
            OSError(EADDRINUSE): a live socket is bound there; EEXIST: a non-socket file is there.
        """
        self, sock = cls._new(type)
        try:
            if address.startswith("@"):
                raw = _unix_sockaddr(address)
                try:
                    sock.bind(raw)
                except OSError as exc:
                    raise os_error(exc.errno or errno.EIO, f"binding {address}") from exc
            else:
                self._bound = bind_path(sock, address, mode, f"binding {address}")
                self._bound_path = address
                self._binder_pid = os.getpid()
        except BaseException:
            self.close()
            raise
        return self

    @classmethod
    def listen(cls, address: str, *, type: str | int = "stream", backlog: int = 128,
               mode: int = DEFAULT_MODE) -> UnixSocket:
        """A listening stream or seqpacket socket at ``address``; see :meth:`bind`.  Its fd is
        non-blocking, so :meth:`accept` never waits past its timeout."""
        self = cls.bind(address, type=type, mode=mode)
        try:
            self._io(lambda f: self._live().listen(backlog), 0, None, "listening on")
            self._live().setblocking(False)
        except BaseException:
            self.close()
            raise
        return self

    def accept(self, *, timeout: float | None = None) -> UnixSocket:
        """Wait for a client; return the connected socket (blocking mode, close-on-exec).

        Raises:
            Timeout: no client came in time; the listener is usable.
        """
        sock = self._live()
        conn, _ = self._io(lambda f: sock.accept(), POLLIN, timeout, "accepting on")
        conn.setblocking(True)
        return type(self)._wrap(conn)

    @classmethod
    def connect(cls, address: str, *, type: str | int = "stream", timeout: float | None = None) -> UnixSocket:
        """Connect to ``address``.  For ``"dgram"`` this only sets the default destination.

        A stream/seqpacket connect waits only while the listener's accept backlog is full.

        Raises:
            FileNotFoundError: no socket file at the path.  ConnectionRefusedError: nobody listens
                (a stale file, or an abstract name nobody holds).
            InvalidEndpoint: the address is too long (sun_path's 107 bytes) or empty.
            Timeout: the backlog stayed full.
        """
        raw = _unix_sockaddr(address)
        self, sock = cls._new(type)
        try:
            sock.setblocking(False)
            deadline = deadline_after(timeout)
            try:
                raw, connected = connect_unix(sock, raw)
            except OSError as exc:
                raise os_error(exc.errno or errno.EIO, f"connecting to {address}", address) from exc
            while not connected:  # EAGAIN on AF_UNIX: the accept backlog is full
                if not wait_fd(sock.fileno(), POLLOUT, deadline):
                    raise Timeout(f"connecting to {address}: the listener's backlog stayed full for "
                                  f"{timeout} s") from None
                try:
                    sock.connect(raw)
                    connected = True
                except BlockingIOError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.EISCONN:
                        break
                    raise os_error(exc.errno or errno.EIO, f"connecting to {address}", address) from exc
            sock.setblocking(True)
        except BaseException:
            self.close()
            raise
        return self

    def peer_credentials(self) -> Peer:
        """The pid, uid and gid of the peer when it connected (SO_PEERCRED); see
        :func:`peer_credentials`."""
        return peer_credentials(self._live())

    def send_fds(self, data: Any, fds: list[int], *, timeout: float | None = None) -> int:
        """Send ``data`` with copies of the open file descriptors ``fds`` (SCM_RIGHTS).

        The receiver gets new fds for the same open files (offsets and flags shared); closing the
        originals afterwards is safe.  On a stream socket ``data`` must not be empty: the kernel
        attaches fds to bytes.

        Raises:
            LimitExceeded: more than SCM_MAX_FD (253) fds (EINVAL); nothing sent, usable.
            and as :meth:`send`.
        """
        sock = self._live()
        view = memoryview(data).cast("B")
        fds = list(fds)
        if len(fds) > self.SCM_MAX_FD:
            raise LimitExceeded(errno.EINVAL, f"sending {len(fds)} fds on {self!r}: one message carries at "
                                f"most SCM_MAX_FD = {self.SCM_MAX_FD} (include/net/scm.h)")
        if self._stream and not len(view):
            raise ValueError("on a stream socket the fds travel with at least one byte of data")
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        first = self._io(lambda f: sock.sendmsg([view], anc, f | socket.MSG_NOSIGNAL), POLLOUT, timeout,
                         "sending fds on")
        if first < len(view):  # a stream took part of it: the fds went with that part
            self._send_all(lambda v, f: sock.send(v, f | socket.MSG_NOSIGNAL), view[first:], timeout)
        return len(view)

    def recv_fds(self, size: int = 65536, maxfds: int = 253, *,
                 timeout: float | None = None) -> tuple[bytes, list[int]]:
        """Receive up to ``size`` bytes and the fds sent with them; the caller owns (must close) them.

        Raises:
            MessageTooLarge: more than ``maxfds`` fds were attached (MSG_CTRUNC: the kernel dropped the
                rest; those that came are closed), or a message longer than ``size`` was cut
                (MSG_TRUNC).  The data is lost; the socket is usable.
            ChannelClosed: end of stream.
            and as :meth:`recv`.
        """
        sock = self._live()
        flags = socket.MSG_CMSG_CLOEXEC
        data, anc, msg_flags, _ = self._io(
            lambda f: sock.recvmsg(size, socket.CMSG_SPACE(maxfds * _FD_SIZE), f | flags), POLLIN, timeout,
            "receiving fds on")
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[:len(payload) - len(payload) % _FD_SIZE])
                fds.extend(arr)
        if msg_flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            for fd in fds:
                os.close(fd)
            cut = (f"more than maxfds={maxfds} descriptors were attached (the kernel dropped the rest)"
                   if msg_flags & socket.MSG_CTRUNC else f"the message was longer than size={size}")
            raise MessageTooLarge(f"receiving fds on {self!r}: {cut}; the message was discarded and the fds "
                                  "that arrived were closed")
        if not data and self._stream:
            raise ChannelClosed(f"end of stream on {self!r}: the peer shut down or closed")
        return data, fds

    def _address(self, raw: Any) -> Any:
        if isinstance(raw, bytes):
            return "@" + os.fsdecode(raw[1:]) if raw.startswith(b"\0") else os.fsdecode(raw)
        return raw

    def _sockaddr(self, address: Any) -> Any:
        return _unix_sockaddr(address)

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            bound, self._bound = self._bound, None
            if bound is not None and os.getpid() == self._binder_pid:
                try:
                    st = os.stat(self._bound_path)
                    if (st.st_dev, st.st_ino) == bound:
                        os.unlink(self._bound_path)
                except OSError:
                    pass


class TcpSocket(SocketBase):
    """A TCP stream socket: :meth:`connect` to a server, or :meth:`listen` then :meth:`accept`.

    TCP_NODELAY is set on connected sockets (small messages leave at once; ipcraft's own framing
    sends each message in one call).  There is no authentication here; the ``tcp://`` channel scheme
    adds the authkey handshake.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self._closed = True  # nothing to release; keeps __del__ quiet
        raise TypeError("a TcpSocket comes from TcpSocket.connect() or TcpSocket.listen()")

    @classmethod
    def connect(cls, host: str, port: int, *, timeout: float | None = None) -> TcpSocket:
        """Connect to ``host:port``.

        Raises:
            ConnectionRefusedError: nobody listens there.  Timeout: no answer in time.
        """
        what = f"connecting to {host}:{port}"
        family, addr = resolve_inet(host, port, socket.SOCK_STREAM, what)
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)  # Python waits for EINPROGRESS with poll
            try:
                sock.connect(addr)
            except TimeoutError:
                raise Timeout(f"{what}: timed out after {timeout} s") from None
            except OSError as exc:
                raise os_error(exc.errno or errno.EIO, what) from exc
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return cls._wrap(sock)

    @classmethod
    def listen(cls, host: str = "127.0.0.1", port: int = 0, *, backlog: int = 128) -> TcpSocket:
        """Listen on ``host:port`` (port 0: the kernel picks one; see ``address``).  SO_REUSEADDR is
        set, so a restarted server can rebind while old connections linger in TIME_WAIT."""
        what = f"listening on {host}:{port}"
        family, addr = resolve_inet(host, port, socket.SOCK_STREAM, what)
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise os_error(exc.errno or errno.EIO, what) from exc
        return cls._wrap(sock)

    def accept(self, *, timeout: float | None = None) -> TcpSocket:
        """Wait for a client and return its connected socket.  Timeout leaves the listener usable."""
        sock = self._live()
        conn, _ = self._io(lambda f: sock.accept(), POLLIN, timeout, "accepting on")
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return type(self)._wrap(conn)


class UdpSocket(SocketBase):
    """A UDP datagram socket: :meth:`bind` to receive (and send with :meth:`sendto`), or
    :meth:`connect` to send to one peer.

    UDP may lose, duplicate or reorder datagrams, even on loopback under load.  One datagram carries
    at most 65507 bytes over IPv4 (65535 less the IP and UDP headers); a larger one is MessageTooLarge.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self._closed = True  # nothing to release; keeps __del__ quiet
        raise TypeError("a UdpSocket comes from UdpSocket.bind() or UdpSocket.connect()")

    @classmethod
    def _make(cls, host: str, port: int, connect: bool) -> UdpSocket:
        what = f"{'connecting to' if connect else 'binding'} udp {host}:{port}"
        family, addr = resolve_inet(host, port, socket.SOCK_DGRAM, what)
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(addr) if connect else sock.bind(addr)
        except OSError as exc:
            sock.close()
            raise os_error(exc.errno or errno.EIO, what) from exc
        return cls._wrap(sock)

    @classmethod
    def bind(cls, host: str = "127.0.0.1", port: int = 0) -> UdpSocket:
        """A socket bound to ``host:port`` (port 0: the kernel picks; see ``address``)."""
        return cls._make(host, port, False)

    @classmethod
    def connect(cls, host: str, port: int) -> UdpSocket:
        """A socket whose default destination is ``host:port``; it receives only from there."""
        return cls._make(host, port, True)

    def _size_limit(self) -> str:
        return "at most 65507 bytes in one UDP datagram over IPv4: 65535 less the IP and UDP headers"

