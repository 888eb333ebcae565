"""unix:// (stream + framing) and unix+seqpacket:// (the kernel keeps boundaries).

Decisions:

* **Peer credentials, both ways.**  After accept() the listener reads SO_PEERCRED and sends a one-byte
  verdict; a refused client gets AuthenticationError naming its uid instead of a mysterious EOF.  The
  client checks the server's credentials too (own uid, root, or allowed_uids), which matters for
  abstract names: anyone can bind one first.
* **Owner-only socket files, atomically** (primitives.sockets._bind_path): the socket inode is chmod'ed
  (default 0600) before bind(), which creates the file with that mode, so no client ever sees a socket
  file with looser permissions.  A stale socket file (nobody listening: ECONNREFUSED) is replaced; a
  live one is EADDRINUSE.  close() unlinks the file only if it is still the one this listener bound.
* **seqpacket message size** is bounded by the socket send buffer; ipcraft raises SO_SNDBUF toward
  net.core.wmem_max and reports the resulting limit in MessageTooLarge.
"""

from __future__ import annotations

import errno
import mmap
import os
import socket

from .._auth import VERDICT_OK, VERDICT_REFUSED, uid_allowed
from .._endpoint import Endpoint
from .._errors import os_error
from .._names import DEFAULT_MODE, validate_unix_path
from .._peer import Peer
from .._wait import deadline_after, wait_fd
from ..errors import AuthenticationError, ChannelClosed, HandleClosed, MessageTooLarge, PeerVanished
from ..primitives.sockets import _bind_path, peer_credentials
from . import framed, unframe
from ._contract import Message, Transport
from ._io import SocketStream, SocketTransport, raise_sndbuf, send_timeout, timed_out

_SOCK_TYPES = {"unix": socket.SOCK_STREAM, "unix+seqpacket": socket.SOCK_SEQPACKET}
_DEFAULT_HANDSHAKE_TIMEOUT = 10.0


def sockaddr(endpoint: Endpoint) -> bytes:
    return validate_unix_path(endpoint.address[1:] if endpoint.abstract else endpoint.address,
                              abstract=endpoint.abstract)


def _handshake_deadline(endpoint: Endpoint, deadline: float | None) -> float | None:
    hs = deadline_after(endpoint.options.get("handshake_timeout", _DEFAULT_HANDSHAKE_TIMEOUT))
    if deadline is None:
        return hs
    return deadline if hs is None else min(deadline, hs)


def connect(endpoint: Endpoint, deadline: float | None) -> Transport:
    """Connect to a unix:// or unix+seqpacket:// listener and pass its credential check."""
    addr = sockaddr(endpoint)
    sock = socket.socket(socket.AF_UNIX, _SOCK_TYPES[endpoint.scheme] | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        try:
            sock.connect(addr)
        except BlockingIOError:
            # A full accept backlog: wait for room (EAGAIN on Unix sockets means exactly that).
            while True:
                if not wait_fd(sock.fileno(), 4, deadline):  # POLLOUT
                    raise timed_out(f"connecting to {endpoint}") from None
                try:
                    sock.connect(addr)
                    break
                except BlockingIOError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.EISCONN:
                        break
                    raise
        except OSError as exc:
            if isinstance(exc, HandleClosed):
                raise
            raise os_error(exc.errno or errno.EIO, f"connecting to {endpoint}", endpoint.address) from exc
        peer = peer_credentials(sock)
        allowed = endpoint.options.get("allowed_uids")
        if not uid_allowed(peer.uid, allowed, allow_root=True):
            raise AuthenticationError(f"the server at {endpoint} runs as uid {peer.uid}, which is neither "
                                      "this process's uid, root, nor in allowed_uids=")
        verdict = _recv_exact(sock, 1, _handshake_deadline(endpoint, deadline), f"connecting to {endpoint}")
        if verdict != VERDICT_OK:
            reason = _recv_reason(sock)
            raise AuthenticationError(f"the server at {endpoint} refused this process: {reason}")
    except BaseException:
        sock.close()
        raise
    return _wrap(sock, endpoint, peer)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None, what: str) -> bytes:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except BlockingIOError:
            if not wait_fd(sock.fileno(), 1, deadline):
                raise timed_out(f"{what} (waiting for the server's verdict)") from None
            continue
        except OSError as exc:
            raise os_error(exc.errno or errno.EIO, what) from exc
        if not chunk:
            raise PeerVanished(f"{what}: the server closed the connection during the handshake")
        data += chunk
    return data


def _recv_reason(sock: socket.socket) -> str:
    try:
        wait_fd(sock.fileno(), 1, deadline_after(1.0))
        return sock.recv(512).decode(errors="replace") or "no reason given"
    except OSError:
        return "no reason given"


def _wrap(sock: socket.socket, endpoint: Endpoint, peer: Peer) -> Transport:
    t: Transport
    if endpoint.scheme == "unix":
        raise_sndbuf(sock)
        t = SocketStream(sock, f"{endpoint}")
    else:
        t = SeqpacketTransport(sock, f"{endpoint}")
    t.peer = peer
    t.authenticated = True  # the kernel vouched for the peer's uid, and the policy accepted it
    return t


class SeqpacketTransport(SocketTransport):
    """Messages over a connected SOCK_SEQPACKET socket: one send, one record, never merged or split.

    The socket stays blocking (MSG_DONTWAIT for calls with a deadline, as SocketStream does).  Records
    are received in one system call into an anonymous mapping as large as any record the kernel lets a
    peer send (twice wmem_max, plus room): its pages cost nothing until a large record touches them,
    and it is reused, so a 1 MiB record is never a fresh allocation.
    """

    def __init__(self, sock: socket.socket, what: str) -> None:
        self.sock = sock
        self._what = what
        sock.setblocking(True)
        self.max_payload, self.limit_source = raise_sndbuf(sock)
        self._buf: mmap.mmap | None = None

    def close(self) -> None:
        super().close()
        buf, self._buf = self._buf, None
        if buf is not None:
            try:
                buf.close()
            except BufferError:
                pass  # a view of the last record is still alive; the mapping goes with it

    def wait_readable(self, deadline: float | None) -> bool:
        return wait_fd(self.fileno(), 1, deadline)

    def send_message(self, sid: int, payload: memoryview, deadline: float | None) -> None:
        sock, parts = self.sock, framed(sid, payload)
        flags = socket.MSG_NOSIGNAL if deadline is None else socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT
        while True:
            try:
                sock.sendmsg(parts, (), flags)
                return
            except BlockingIOError:
                if not wait_fd(self.fileno(), 4, deadline):
                    raise send_timeout(self, self._what, 0, 1) from None
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    size = sum(memoryview(p).nbytes for p in parts)
                    raise MessageTooLarge(
                        f"a {size}-byte message does not fit {self._what}: a seqpacket record must fit "
                        f"the socket send buffer ({self.limit_source})", size, self.max_payload) from None
                raise os_error(exc.errno or errno.EIO, f"sending on {self._what}") from exc

    def recv_message(self, deadline: float | None) -> Message:
        sock = self.sock
        buf = self._buf
        if buf is None:
            buf = self._buf = mmap.mmap(-1, _record_room())
        flags = 0 if deadline is None else socket.MSG_DONTWAIT
        while True:
            try:
                n, _, msg_flags, _ = sock.recvmsg_into([buf], 0, flags)
                break
            except BlockingIOError:
                if not wait_fd(self.fileno(), 1, deadline):
                    raise timed_out(f"receiving on {self._what}") from None
            except OSError as exc:
                raise os_error(exc.errno or errno.EIO, f"receiving on {self._what}") from exc
        if n == 0:
            # A zero-length record is impossible for ipcraft (every message has a header), so 0 is EOF.
            raise ChannelClosed(f"the peer closed {self._what}")
        if msg_flags & socket.MSG_TRUNC:
            raise MessageTooLarge(f"a record on {self._what} was larger than the {len(buf)}-byte receive "
                                  "area (the peer raised its send buffer past net.core.wmem_max with "
                                  "SO_SNDBUFFORCE); it was discarded", None, len(buf))
        return unframe(memoryview(buf)[:n])


def _record_room() -> int:
    """Bytes that hold any seqpacket record a peer can send: the kernel doubles SO_SNDBUF values."""
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            wmem_max = int(f.read())
    except OSError:
        wmem_max = 4 * 1024 * 1024
    return 2 * wmem_max + 65536


class UnixListener:
    """A listening Unix socket that hands out credential-checked transports."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._sock: socket.socket | None = None
        self._bound_ino: int | None = None
        self.endpoint = endpoint
        addr = sockaddr(endpoint)
        sock = socket.socket(socket.AF_UNIX, _SOCK_TYPES[endpoint.scheme] | socket.SOCK_CLOEXEC)
        try:
            if endpoint.abstract:
                _bind(sock, addr, endpoint)
            else:
                self._bound_ino = _bind_path(sock, endpoint.address, endpoint.options.get("mode", DEFAULT_MODE),
                                            f"binding {endpoint}")[1]
            sock.listen(endpoint.options.get("backlog", 128))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._allowed = endpoint.options.get("allowed_uids")
        self.refused = 0  # connections turned away by the credential policy

    def fileno(self) -> int:
        if self._sock is None:
            raise HandleClosed(f"the listener on {self.endpoint} is closed")
        return self._sock.fileno()

    def accept(self, deadline: float | None) -> Transport:
        while True:
            sock = self._accept_raw(deadline)
            try:
                peer = peer_credentials(sock)
                if not uid_allowed(peer.uid, self._allowed):
                    self.refused += 1
                    reason = (f"uid {peer.uid} is not allowed (the listener runs as uid {os.geteuid()}; "
                              "pass allowed_uids= to admit others)")
                    try:
                        sock.send(VERDICT_REFUSED + reason.encode(), socket.MSG_NOSIGNAL)
                    except OSError:
                        pass
                    sock.close()
                    continue
                sock.send(VERDICT_OK, socket.MSG_NOSIGNAL)
            except OSError:
                sock.close()  # the client vanished during the handshake: wait for the next one
                continue
            return _wrap(sock, self.endpoint, peer)

    def _accept_raw(self, deadline: float | None) -> socket.socket:
        if self._sock is None:
            raise HandleClosed(f"the listener on {self.endpoint} is closed")
        while True:
            try:
                sock, _ = self._sock.accept()
                sock.setblocking(False)
                return sock
            except BlockingIOError:
                if not wait_fd(self.fileno(), 1, deadline):
                    raise timed_out(f"accepting on {self.endpoint}") from None
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EINTR):
                    continue
                raise os_error(exc.errno or errno.EIO, f"accepting on {self.endpoint}") from exc

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.close()
        if self._bound_ino is not None:
            try:
                if os.stat(self.endpoint.address).st_ino == self._bound_ino:
                    os.unlink(self.endpoint.address)
            except OSError:
                pass


def listen(endpoint: Endpoint) -> UnixListener:
    return UnixListener(endpoint)


def _bind(sock: socket.socket, addr: bytes, endpoint: Endpoint) -> None:
    try:
        sock.bind(addr)
    except OSError as exc:
        raise os_error(exc.errno or errno.EIO, f"binding {endpoint}", endpoint.address) from exc
