"""Non-blocking I/O with deadlines over file descriptors and sockets, shared by the fd transports.

Every fd here is non-blocking.  An operation is tried first; only on EAGAIN does the caller sleep in
poll(2) until the fd is ready or the deadline passes.  The ready case costs one system call, and
timeouts and asyncio (add_reader) work on every fd transport the same way.
"""

from __future__ import annotations

import errno
import io
import os
import socket
from collections.abc import Sequence

from .._errors import os_error
from .._wait import POLLIN, POLLOUT, wait_fd
from ..errors import HandleClosed, Timeout
from ..primitives._pipeio import OneShotIO
from ._contract import Transport

#: The most buffers one writev/sendmsg takes (a batch of many large messages is written in slices).
IOV_MAX = 1024


def timed_out(what: str) -> Timeout:
    return Timeout(f"{what}: timed out")


class FdStream(OneShotIO, Transport):
    """A byte stream over a pipe or FIFO fd (os.readv/os.writev).

    With ``blocking=False`` the fd is non-blocking and every wait is a poll(2).  With ``blocking=True``
    (an anonymous pipe this process owns) the fd stays blocking, so a call without a deadline is one
    system call that sleeps in the kernel, and a call with a deadline first tries the one-shot read or
    write of the primitives' pipes (``OneShotIO``: RWF_NOWAIT, else poll then at most PIPE_BUF bytes).
    """

    splits_writes = True

    def __init__(self, fd: int, what: str, *, readable: bool = True, writable: bool = True,
                 blocking: bool = False) -> None:
        self._fd = fd
        self._what = what
        self.readable = readable
        self.writable = writable
        self.blocking = blocking
        self._nonblock = not blocking
        os.set_blocking(fd, blocking)

    def fileno(self) -> int:
        if self._fd < 0:
            raise HandleClosed(f"{self._what} is closed")
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def wait_readable(self, deadline: float | None) -> bool:
        return wait_fd(self.fileno(), POLLIN, deadline)

    def recv_into(self, buf: memoryview, deadline: float | None, exact: bool = False) -> int:
        fd = self._fd
        while True:
            try:
                if deadline is None or not self.blocking:
                    return os.readv(fd, [buf])
                return self._read_now(fd, buf)
            except BlockingIOError:
                if not wait_fd(fd, POLLIN, deadline):
                    raise timed_out(f"receiving on {self._what}") from None
            except OSError as exc:
                raise os_error(exc.errno or errno.EIO, f"receiving on {self._what}") from exc

    def write_some(self, views: list[memoryview]) -> int:
        """Write a prefix of ``views`` without blocking; return how many bytes went out.

        Raises BlockingIOError when no byte fits yet (the caller waits for POLLOUT on fileno()).
        """
        return self._write_now(self.fileno(), views)

    def send_all(self, parts: Sequence[bytes | memoryview], deadline: float | None) -> None:
        fd = self._fd
        sent = 0
        if deadline is None and self.blocking and len(parts) == 1:
            # The common case: one small frame into a blocking pipe is one system call.
            try:
                sent = os.write(fd, parts[0])
            except OSError as exc:
                raise os_error(exc.errno or errno.EIO, f"sending on {self._what}") from exc
            if sent == len(parts[0]):
                return
        views = consume([memoryview(p).cast("B") for p in parts], sent)
        total = sent + sum(len(v) for v in views)
        while views:
            try:
                if deadline is None and self.blocking:
                    n = os.writev(fd, views[:IOV_MAX]) if len(views) > 1 else os.write(fd, views[0])
                else:
                    n = self._write_now(fd, views[:IOV_MAX])
            except BlockingIOError:
                if not wait_fd(fd, POLLOUT, deadline):
                    raise send_timeout(self, self._what, sent, total) from None
                continue
            except OSError as exc:
                raise os_error(exc.errno or errno.EIO, f"sending on {self._what}") from exc
            sent += n
            views = consume(views, n)


class SocketTransport(Transport):
    """What every transport over one connected socket shares: its fd and its closing."""

    sock: socket.socket
    _what: str

    def fileno(self) -> int:
        fd = self.sock.fileno()
        if fd < 0:
            raise HandleClosed(f"{self._what} is closed")
        return fd

    def close(self) -> None:
        self.sock.close()


class SocketStream(SocketTransport):
    """A byte stream over a connected stream socket (Unix or TCP, TLS included).

    Plain sockets stay in blocking mode: a call without a deadline blocks in the kernel (one system
    call; a large payload is read with MSG_WAITALL in one go), and a call with a deadline adds
    MSG_DONTWAIT and sleeps in poll(2) only when the socket is not ready.  TLS sockets cannot take
    per-call flags, so they are non-blocking throughout.
    """

    def __init__(self, sock: socket.socket, what: str) -> None:
        self.sock = sock
        self._what = what
        self._tls = hasattr(sock, "cipher")
        self.splits_writes = not self._tls
        sock.setblocking(self._tls is False)

    def wait_readable(self, deadline: float | None) -> bool:
        if self._tls and self.sock.pending():  # type: ignore[attr-defined]  # decrypted bytes waiting
            return True
        return wait_fd(self.fileno(), POLLIN, deadline)

    def recv_into(self, buf: memoryview, deadline: float | None, exact: bool = False) -> int:
        """Read into ``buf``; with ``exact`` and no deadline, wait until it is full (or EOF)."""
        sock = self.sock
        if deadline is None and not self._tls:
            flags = socket.MSG_WAITALL if exact else 0
        else:
            flags = 0 if self._tls else socket.MSG_DONTWAIT
        while True:
            try:
                return sock.recv_into(buf, 0, flags)
            except (BlockingIOError, _SSLWantRead):
                if not wait_fd(self.fileno(), POLLIN, deadline):
                    raise timed_out(f"receiving on {self._what}") from None
            except _SSLWantWrite:
                wait_fd(self.fileno(), POLLOUT, deadline)
            except OSError as exc:
                if exc.errno is None:  # an ssl.SSLError without errno: a broken TLS stream
                    raise os_error(errno.ECONNRESET, f"receiving on {self._what} ({exc})") from exc
                raise os_error(exc.errno, f"receiving on {self._what}") from exc

    def write_some(self, views: list[memoryview]) -> int:
        """Send a prefix of ``views`` without blocking; return how many bytes went out.

        Raises BlockingIOError when no byte fits yet.  Not for TLS (``splits_writes`` is False there:
        an SSL write that could not finish must be retried with the same buffer).
        """
        if self._tls:
            raise io.UnsupportedOperation(f"{self._what}: a TLS stream cannot write part of a frame "
                                          "without blocking")
        return self.sock.sendmsg(views, (), socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)

    def send_all(self, parts: Sequence[bytes | memoryview], deadline: float | None) -> None:
        sock = self.sock
        sent = 0
        if deadline is None and len(parts) == 1 and not self._tls:
            # The common case: one small frame on a blocking socket is one system call.
            try:
                sent = sock.send(parts[0], socket.MSG_NOSIGNAL)
            except OSError as exc:
                raise os_error(exc.errno or errno.EPIPE, f"sending on {self._what}") from exc
            if sent == len(parts[0]):
                return
        views = consume([memoryview(p).cast("B") for p in parts], sent)
        total = sent + sum(len(v) for v in views)
        flags = socket.MSG_NOSIGNAL
        if deadline is not None and not self._tls:
            flags |= socket.MSG_DONTWAIT
        while views:
            try:
                if self._tls:
                    n = sock.send(views[0])
                elif len(views) > 1:
                    n = sock.sendmsg(views[:IOV_MAX], (), flags)
                else:
                    n = sock.send(views[0], flags)
            except (BlockingIOError, _SSLWantWrite):
                if not wait_fd(self.fileno(), POLLOUT, deadline):
                    raise send_timeout(self, self._what, sent, total) from None
                continue
            except _SSLWantRead:
                wait_fd(self.fileno(), POLLIN, deadline)
                continue
            except OSError as exc:
                raise os_error(exc.errno or errno.EPIPE, f"sending on {self._what}") from exc
            sent += n
            views = consume(views, n)


def raise_sndbuf(sock: socket.socket) -> tuple[int, str]:
    """Raise SO_SNDBUF toward net.core.wmem_max; return (largest record that fits, its source).

    On Unix sockets the sender's buffer bounds both a datagram/seqpacket record and how much of a
    stream write the kernel takes at once; the 208 KiB default cuts a 1 MiB message into five
    wake-ups.  Memory is charged only for data actually queued.
    """
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            wmem_max = int(f.read())
    except OSError:
        wmem_max = 212992
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wmem_max)
    except OSError:
        pass
    # The kernel doubles the value for bookkeeping; a record may use about the requested size, less
    # the skb overhead.  Leave a margin of 32 KiB.
    usable = max(0, sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2 - 32768)
    return usable, f"SO_SNDBUF, capped by /proc/sys/net/core/wmem_max = {wmem_max}"


try:
    import ssl as _ssl

    _SSLWantRead: type[BaseException] = _ssl.SSLWantReadError
    _SSLWantWrite: type[BaseException] = _ssl.SSLWantWriteError
except ImportError:  # pragma: no cover - Python built without ssl
    class _SSLWantRead(Exception):  # type: ignore[no-redef]
        pass

    class _SSLWantWrite(Exception):  # type: ignore[no-redef]
        pass


def consume(views: list[memoryview], n: int) -> list[memoryview]:
    """Drop the first ``n`` bytes from a list of buffers (after a partial write), and empty buffers."""
    while views and (n or not len(views[0])):
        if n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        else:
            views[0] = views[0][n:]
            n = 0
    return views


def send_timeout(transport: Transport, what: str, sent: int, total: int) -> Timeout:
    """The Timeout for a send that could not finish.  Mid-frame, the stream is cut, so close it: the
    Timeout then says ``closed=True`` and how much was ``written``."""
    if sent == 0:
        return Timeout(f"sending on {what}: timed out (nothing was sent; still usable)")
    transport.close()
    return Timeout(f"sending on {what}: timed out after {sent} of {total} bytes of a frame; the byte "
                   "stream cannot be resumed mid-frame, so the channel was closed", written=sent, closed=True)
