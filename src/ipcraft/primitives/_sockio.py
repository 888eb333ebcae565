"""The surface every socket primitive shares: timed send/recv over a socket, typed errors, addresses.

Decisions:

* **The socket stays in the mode the user sees** (blocking, except a listening socket, which is
  non-blocking so that ``accept(timeout=...)`` never hangs when another process takes the client).
  A call without a timeout is the plain system call and the kernel waits; a call with one passes
  ``MSG_DONTWAIT`` (this call only) and sleeps in poll(2) on EAGAIN.
* **Stream ``send`` sends everything** (``sendall``); a message socket's ``send`` sends one message,
  which the kernel never splits.  A stream ``recv`` returns what is there; a message socket's ``recv``
  returns one whole message, whose size it first learns with ``MSG_PEEK | MSG_TRUNC``, so a message
  larger than ``size`` is refused (MessageTooLarge) and left queued instead of silently truncated.
* **End of stream is ChannelClosed**, a vanished peer PeerVanished (EPIPE, ECONNRESET); sends pass
  MSG_NOSIGNAL, so no SIGPIPE even where it is not ignored.
"""

from __future__ import annotations

import errno
import functools
import os
import select
import socket
import stat
from collections.abc import Callable
from typing import Any, TypeVar

from .._errors import os_error
from .._names import UNIX_PATH_MAX, validate_unix_path
from .._resource import Handle
from .._wait import POLLIN, POLLOUT, deadline_after, remaining, wait_fd
from ..errors import ChannelClosed, HandleClosed, MessageTooLarge, Timeout

R = TypeVar("R")
S = TypeVar("S", bound="SocketBase")

_TYPES = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM, "seqpacket": socket.SOCK_SEQPACKET}
_NAMES = {v: k for k, v in _TYPES.items()}
_DEFAULT_RECV = 65536
_SHUT_WR = socket.SHUT_WR
_PySocket = socket.socket  # the class body below has a property named ``socket``


def sock_type(kind: str | int) -> int:
    """``"stream"``/``"dgram"``/``"seqpacket"`` (or a socket.SOCK_* value) as a SOCK_* value."""
    if isinstance(kind, str) and kind in _TYPES:
        return _TYPES[kind]
    if kind in _NAMES:
        return int(kind)
    raise ValueError(f"a socket type is one of {', '.join(_TYPES)}, not {kind!r}")


class SocketBase(Handle):
    """A handle owning one socket.socket; see the module docstring for the I/O rules."""

    _sock: socket.socket | None = None

    @classmethod
    def _wrap(cls: type[S], sock: socket.socket) -> S:
        """A handle around ``sock`` (the public constructors are classmethods; __init__ refuses)."""
        self = object.__new__(cls)
        self._adopt(sock)
        return self

    def _adopt(self, sock: socket.socket) -> None:
        self._sock = sock
        self.type: int = sock.type & ~(socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self._stream = self.type == socket.SOCK_STREAM

    @property
    def socket(self) -> _PySocket:
        """The underlying socket.socket, for options ipcraft does not wrap (setsockopt ...)."""
        return self._live()

    def fileno(self) -> int:
        """The socket's fd, for select/poll/epoll.  Raises HandleClosed once closed."""
        return self._live().fileno()

    def _live(self) -> _PySocket:
        s = self._sock
        if s is None or self._closed:
            self._raise_closed()
        return s

    def _close(self) -> None:
        s, self._sock = self._sock, None
        if s is not None:
            s.close()

    @property
    def address(self) -> Any:
        """The local address (getsockname)."""
        return self._address(self._live().getsockname())

    @property
    def peer_address(self) -> Any:
        """The connected peer's address (getpeername).  Raises OSError(ENOTCONN) if not connected."""
        sock = self._live()
        return self._address(self._io(lambda f: sock.getpeername(), 0, None, "asking for the peer of"))

    def _address(self, raw: Any) -> Any:
        return raw

    # -- the I/O loop ---------------------------------------------------------------------------------

    def _io(self, op: Callable[[int], R], events: int, timeout: float | None, what: str) -> R:
        """Run ``op(flags)``: plainly without a timeout, else with MSG_DONTWAIT plus poll on EAGAIN."""
        sock = self._live()
        flags = 0 if timeout is None else socket.MSG_DONTWAIT
        deadline = deadline_after(timeout)
        while True:
            try:
                return op(flags)
            except BlockingIOError:
                if not wait_fd(sock.fileno(), events, deadline):
                    raise Timeout(f"{what} {self!r}: timed out after {timeout} s") from None
            except OSError as exc:
                if isinstance(exc, HandleClosed):
                    raise
                raise self._error(exc, what) from exc

    def _error(self, exc: OSError, what: str) -> Exception:
        if exc.errno == errno.EMSGSIZE:
            return MessageTooLarge(f"{what} {self!r}: the message is larger than the kernel allows "
                                   f"({self._size_limit()})")
        return os_error(exc.errno or errno.EIO, f"{what} {self!r}")

    def _size_limit(self) -> str:
        sock = self._live()
        return (f"a datagram must fit the socket send buffer, SO_SNDBUF = "
                f"{sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)}; raise it with setsockopt up to "
                "/proc/sys/net/core/wmem_max")

    # -- sending ----------------------------------------------------------------------------------------

    def send(self, data: Any, *, timeout: float | None = None) -> int:
        """Send ``data``: all of it on a stream socket, as one message on a message socket.

        Raises:
            PeerVanished: the peer closed or died (EPIPE, ECONNRESET); close this socket.
            MessageTooLarge: one message larger than the kernel takes (EMSGSIZE); nothing was sent,
                the socket is usable.
            Timeout: no room in time; nothing sent on a message socket, the socket usable.  On a stream
                socket ``exc.written`` says how many bytes went out before.
        """
        sock = self._live()
        view = memoryview(data).cast("B")
        if not self._stream:
            self._io(lambda f: sock.send(view, f | socket.MSG_NOSIGNAL), POLLOUT, timeout, "sending on")
            return len(view)
        return self._send_all(lambda v, f: sock.send(v, f | socket.MSG_NOSIGNAL), view, timeout)

    def _send_all(self, op: Callable[[memoryview, int], int], view: memoryview, timeout: float | None) -> int:
        deadline = deadline_after(timeout)
        sent = 0
        while True:
            try:
                sent += self._io(functools.partial(op, view[sent:]), POLLOUT, remaining(deadline), "sending on")
            except Timeout as exc:
                raise Timeout(str(exc), written=sent) from exc
            if sent >= len(view):
                return sent

    def sendto(self, data: Any, address: Any, *, timeout: float | None = None) -> int:
        """Send one datagram to ``address`` (an unconnected dgram socket).  Raises as :meth:`send`."""
        sock = self._live()
        addr = self._sockaddr(address)
        self._io(lambda f: sock.sendto(data, f | socket.MSG_NOSIGNAL, addr), POLLOUT, timeout, "sending on")
        return memoryview(data).nbytes

    def _sockaddr(self, address: Any) -> Any:
        return address

    # -- receiving ------------------------------------------------------------------------------------

    def recv(self, size: int | None = None, *, timeout: float | None = None) -> bytes:
        """Receive: up to ``size`` bytes (default 65536) on a stream socket, whatever is there; one
        whole message on a message socket (``size`` then caps it).

        Raises:
            ChannelClosed: end of stream (the peer shut down or closed); the socket stays open.
            MessageTooLarge: the next message exceeds ``size``; it stays queued, the socket is usable.
            Timeout: nothing arrived in time; the socket is usable.
        """
        return self.recvfrom(size, timeout=timeout)[0]

    def recv_into(self, buffer: Any, *, timeout: float | None = None) -> int:
        """Receive into the writable ``buffer``; return the byte count.  As :meth:`recv` (a message
        larger than the buffer is refused and stays queued)."""
        view = memoryview(buffer).cast("B")
        sock = self._live()
        if self._stream:
            n = self._io(lambda f: sock.recv_into(view, len(view), f), POLLIN, timeout, "receiving on")
        else:
            n = self._recv_message(len(view), timeout, lambda size: (sock.recv_into(view, size,
                                                                                    socket.MSG_DONTWAIT), None))[0]
        if n == 0:
            self._maybe_eof()
        return int(n)

    def recvfrom(self, size: int | None = None, *, timeout: float | None = None) -> tuple[bytes, Any]:
        """As :meth:`recv`, and also the sender's address (dgram sockets; None where there is none)."""
        sock = self._live()
        if self._stream:
            n = _DEFAULT_RECV if size is None else size
            data, addr = self._io(lambda f: sock.recvfrom(n, f), POLLIN, timeout, "receiving on")
        else:
            data, addr = self._recv_message(size, timeout, lambda n: sock.recvfrom(max(n, 1), socket.MSG_DONTWAIT))
        if not data and size != 0:
            self._maybe_eof()
        return data, self._address(addr) if addr else None

    def _recv_message(self, size: int | None, timeout: float | None,
                      take: Callable[[int], tuple[Any, Any]]) -> tuple[Any, Any]:
        """Wait for the next message, refuse (and keep) one over ``size``, then ``take(length)`` it."""
        sock = self._live()
        peek = socket.MSG_PEEK | socket.MSG_TRUNC
        deadline = deadline_after(timeout)
        while True:
            n = self._io(lambda f: sock.recv_into(bytearray(1), 1, f | peek), POLLIN, remaining(deadline),
                         "receiving on")
            if size is not None and n > size:
                raise MessageTooLarge(f"the next message on {self!r} is {n} bytes, more than the {size} "
                                      "asked for; it was left queued", n, size)
            try:
                return take(n)
            except BlockingIOError:  # another reader took it between the peek and the read
                continue
            except OSError as exc:
                raise self._error(exc, "receiving on") from exc

    def _maybe_eof(self) -> None:
        """A zero-length read: end of stream, or (message sockets) an empty message."""
        if self._stream:
            raise ChannelClosed(f"end of stream on {self!r}: the peer shut down or closed")
        if self.type == socket.SOCK_SEQPACKET:
            p = select.poll()
            p.register(self._live().fileno(), select.POLLRDHUP)
            if p.poll(0):
                raise ChannelClosed(f"end of stream on {self!r}: the peer shut down or closed")

    def shutdown(self, how: int = _SHUT_WR) -> None:
        """Shut down one direction (socket.SHUT_RD/SHUT_WR/SHUT_RDWR); the peer then reads end of
        stream.  Unlike close(), this reaches every process sharing the socket."""
        sock = self._live()
        self._io(lambda f: sock.shutdown(how), 0, None, "shutting down")

    def __repr__(self) -> str:
        if self._closed or self._sock is None:
            return f"<{type(self).__name__} closed>"
        try:
            where = f" {self.address!r}"
        except OSError:
            where = ""
        kind = _NAMES.get(socket.SocketKind(self.type), str(self.type))
        return f"<{type(self).__name__} {kind}{where} fd={self._sock.fileno()}>"


def connect_unix(sock: socket.socket, raw: bytes) -> tuple[bytes, bool]:
    """Start ``sock.connect(raw)``, meeting an abstract name a C program bound padded with NULs to
    sizeof(struct sockaddr_un) if nobody holds ``raw`` itself.

    Returns ``(address, connected)``: the address that answered, and False if the connect is
    pending (EAGAIN: a non-blocking socket and a full accept backlog; retry with that address).
    Other errors propagate (the first attempt's ECONNREFUSED if the padded name is not bound either).
    """
    addresses = [raw]
    if raw.startswith(b"\0") and len(raw) < UNIX_PATH_MAX + 1:
        addresses.append(raw.ljust(UNIX_PATH_MAX + 1, b"\0"))
    for i, addr in enumerate(addresses):
        try:
            sock.connect(addr)
        except BlockingIOError:
            return addr, False
        except ConnectionRefusedError:
            if i + 1 < len(addresses):
                continue
            if i:  # report the address as asked for, not the padded form
                raise ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED)) from None
            raise
        return addr, True
    raise AssertionError("unreachable")  # pragma: no cover


def bind_path(sock: socket.socket, path: str, mode: int, what: str) -> tuple[int, int]:
    """Bind an AF_UNIX socket to the file ``path`` with exactly ``mode``; return the file's (dev, ino).

    A stale socket file is replaced; a live one or a non-socket is EADDRINUSE/EEXIST.
    """
    raw = validate_unix_path(path)
    if os.path.lexists(path):
        _remove_if_stale(path, sock.type & ~(socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK), what)
    try:
        os.fchmod(sock.fileno(), mode)  # Linux creates the socket file with this mode, less the umask
        sock.bind(raw)
        st = os.stat(path)
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)  # the umask only tightened it; make it exactly what was asked
    except OSError as exc:
        raise os_error(exc.errno or errno.EIO, what, path) from exc
    return st.st_dev, st.st_ino


def _remove_if_stale(path: str, type_: int, what: str) -> None:
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode):
        raise os_error(errno.EEXIST, f"{what}: {path} exists and is not a socket", path)
    probe = socket.socket(socket.AF_UNIX, type_ | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens there: a leftover of a crashed process
        return
    except BlockingIOError:
        pass  # a full accept backlog: alive
    except OSError as exc:
        if exc.errno != errno.EPROTOTYPE:  # EPROTOTYPE: a live socket of another type
            raise os_error(exc.errno or errno.EIO, what, path) from exc
    finally:
        probe.close()
    raise os_error(errno.EADDRINUSE, f"{what}: another socket is live there", path)


def resolve_inet(host: str, port: int, type_: int, what: str) -> tuple[int, Any]:
    """The (family, sockaddr) of host:port, resolving names (first result)."""
    try:
        info = socket.getaddrinfo(host, port, type=type_)
    except socket.gaierror as exc:
        raise OSError(errno.EHOSTUNREACH, f"{what}: cannot resolve {host!r} ({exc.strerror})") from None
    family, _, _, _, addr = info[0]
    return family, addr
