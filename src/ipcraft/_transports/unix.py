"""unix:// (stream + framing) and unix+seqpacket:// (the kernel keeps boundaries).

Decisions:

* **Peer credentials, both ways.**  After accept() the listener reads SO_PEERCRED and sends a one-byte
  verdict; a refused client gets AuthenticationError naming its uid instead of a mysterious EOF.  The
  client checks the server's credentials too (own uid, root, or allowed_uids), which matters for
  abstract names: anyone can bind one first.  On unix+seqpacket the verdict and its reason are one
  record, so the client receives the whole record at once.
* **Handshakes are resumable steps** (_sockets): the same code runs in a blocking connect, on an
  asyncio loop, and side by side with the other clients' in a listener.
* **Owner-only socket files, atomically** (bind_path): the socket inode is chmod'ed
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
from .._names import DEFAULT_MODE
from .._peer import Peer
from .._wait import wait_fd
from ..errors import AuthenticationError, ChannelClosed, MessageTooLarge, PeerVanished
from ..primitives.sockets import peer_credentials
from . import framed, unframe
from ._contract import Message, Transport
from ._io import SocketStream, SocketTransport, raise_sndbuf, send_timeout, timed_out
from ._sockets import (
    SocketListener,
    Steps,
    bind_abstract,
    bind_path,
    connect_unix_steps,
    handshake_deadline,
    recv_exact,
    recv_some,
    run,
    sockaddr,
)

_SOCK_TYPES = {"unix": socket.SOCK_STREAM, "unix+seqpacket": socket.SOCK_SEQPACKET}
#: The longest refusal reason a client reads after the verdict byte.
_REASON_ROOM = 512


def connect(endpoint: Endpoint, deadline: float | None) -> Transport:
    """Connect to a unix:// or unix+seqpacket:// listener and pass its credential check."""
    return run(connect_steps(endpoint, deadline))


def connect_steps(endpoint: Endpoint, deadline: float | None) -> Steps[Transport]:
    """:func:`connect` as resumable steps (see _sockets)."""
    sock, peer = yield from client_steps(endpoint, deadline)
    try:
        return _wrap(sock, endpoint, peer)
    except BaseException:
        sock.close()
        raise


def client_steps(endpoint: Endpoint, deadline: float | None) -> Steps[tuple[socket.socket, Peer]]:
    """Connect, check the server's credentials and receive its verdict; the raw non-blocking socket.

    The connect waits (for room in a full backlog) until ``deadline``; the verdict until the
    handshake deadline.  A refused client gets AuthenticationError with the server's reason.
    """
    addr = sockaddr(endpoint)
    what = f"connecting to {endpoint}"
    sock = socket.socket(socket.AF_UNIX, _SOCK_TYPES[endpoint.scheme] | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        yield from connect_unix_steps(sock, addr, deadline, what, endpoint.address)
        peer = peer_credentials(sock)
        if not uid_allowed(peer.uid, endpoint.options.get("allowed_uids"), allow_root=True):
            raise AuthenticationError(f"the server at {endpoint} runs as uid {peer.uid}, which is neither "
                                      "this process's uid, root, nor in allowed_uids=")
        if not endpoint.handshake:  # raw framing (socat, a C server) has no verdict byte unless asked for
            return sock, peer
        hs = handshake_deadline(endpoint, deadline)
        if sock.type == socket.SOCK_SEQPACKET:
            # The verdict and its reason are one record: a 1-byte receive would discard the reason.
            record = yield from recv_some(sock, 1 + _REASON_ROOM, hs, what)
            if not record:
                raise PeerVanished(f"{what}: the server closed the connection during the handshake")
            verdict, reason = record[:1], record[1:]
        else:
            verdict = (yield from recv_exact(sock, 1, hs, what))[0]
            reason = b""
            if verdict != VERDICT_OK:
                reason = yield from _rest(sock, hs, what)
        if verdict != VERDICT_OK:
            text = reason.decode(errors="replace") or "no reason given"
            raise AuthenticationError(f"the server at {endpoint} refused this process: {text}")
    except BaseException:
        sock.close()
        raise
    return sock, peer


def _rest(sock: socket.socket, deadline: float | None, what: str) -> Steps[bytes]:
    """What a refusing server sent after its verdict, up to _REASON_ROOM bytes or its close."""
    data = b""
    try:
        while len(data) < _REASON_ROOM:
            chunk = yield from recv_some(sock, _REASON_ROOM - len(data), deadline, what)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass  # the reason is a courtesy: what came is enough
    return data


def serve_verdict(sock: socket.socket, allowed: frozenset[int] | None, endpoint: Endpoint) -> Peer:
    """The listener's half: judge the client's credentials and send the verdict byte (with a reason).

    A fresh socket always has room for these few bytes, so nothing here waits.
    """
    peer = peer_credentials(sock)
    if not uid_allowed(peer.uid, allowed):
        reason = (f"uid {peer.uid} is not allowed (the listener runs as uid {os.geteuid()}; "
                  "pass allowed_uids= to admit others)")
        try:
            if endpoint.handshake:
                sock.send(VERDICT_REFUSED + reason.encode(), socket.MSG_NOSIGNAL)
        except OSError:
            pass
        raise AuthenticationError(f"refused a client of {endpoint}: {reason}")
    if not endpoint.handshake:
        return peer
    try:
        sock.send(VERDICT_OK, socket.MSG_NOSIGNAL)
    except OSError as exc:
        raise os_error(exc.errno or errno.EPIPE, f"accepting on {endpoint}") from exc
    return peer


class SeqpacketTransport(SocketTransport):
    """Messages over a connected SOCK_SEQPACKET socket: one send, one record, never merged or split.

    The socket stays blocking (MSG_DONTWAIT for calls with a deadline, as SocketStream does).  Records
    are received in one system call into an anonymous mapping as large as any record the kernel lets a
    peer send (twice wmem_max, plus room): its pages cost nothing until a large record touches them,
    and it is reused, so a 1 MiB record is never a fresh allocation.
    """

    #: framing=none: each record is one raw message, without ipcraft's header.
    raw: bool = False

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
        sock, parts = self.sock, framed(sid, payload, self.raw)
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
            # A zero-length record is impossible for ipcraft (every message has a header), so 0 is EOF;
            # with framing=none an empty message cannot be told from the end and reads as the end.
            raise ChannelClosed(f"the peer closed {self._what}")
        if msg_flags & socket.MSG_TRUNC:
            raise MessageTooLarge(f"a record on {self._what} was larger than the {len(buf)}-byte receive "
                                  "area (the peer raised its send buffer past net.core.wmem_max with "
                                  "SO_SNDBUFFORCE); it was discarded", None, len(buf))
        return unframe(memoryview(buf)[:n], raw=self.raw)


def _record_room() -> int:
    """Bytes that hold any seqpacket record a peer can send: the kernel doubles SO_SNDBUF values."""
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            wmem_max = int(f.read())
    except OSError:
        wmem_max = 4 * 1024 * 1024
    return 2 * wmem_max + 65536


def _wrap(sock: socket.socket, endpoint: Endpoint, peer: Peer) -> Transport:
    t: Transport
    if endpoint.scheme == "unix":
        raise_sndbuf(sock)
        t = SocketStream(sock, f"{endpoint}")
    else:
        t = SeqpacketTransport(sock, f"{endpoint}")
        t.raw = endpoint.framing == "none"
    t.peer = peer
    t.authenticated = True  # the kernel vouched for the peer's uid, and the policy accepted it
    return t


def bind_unix(endpoint: Endpoint, scheme: str | None = None) -> tuple[socket.socket, tuple[str, int] | None]:
    """A listening AF_UNIX socket bound to ``endpoint``, and the (path, inode) of its socket file."""
    sock = socket.socket(socket.AF_UNIX, _SOCK_TYPES[scheme or endpoint.scheme] | socket.SOCK_CLOEXEC)
    bound = None
    try:
        if endpoint.abstract:
            bind_abstract(sock, sockaddr(endpoint), endpoint)
        else:
            ino = bind_path(sock, endpoint.address, endpoint.options.get("mode", DEFAULT_MODE),
                            f"binding {endpoint}")[1]
            bound = (endpoint.address, ino)
        sock.listen(endpoint.options.get("backlog", 128))
    except BaseException:
        sock.close()
        raise
    return sock, bound


class UnixListener(SocketListener):
    """A listening Unix socket that hands out credential-checked transports.

    A client of a uid the policy refuses gets the reason and is counted in ``refused``.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        sock, bound = bind_unix(endpoint)
        super().__init__(endpoint, sock, bound)
        self._allowed = endpoint.options.get("allowed_uids")

    def _handshake(self, sock: socket.socket) -> Steps[Transport]:
        peer = serve_verdict(sock, self._allowed, self.endpoint)
        yield from ()
        return _wrap(sock, self.endpoint, peer)


def listen(endpoint: Endpoint) -> UnixListener:
    return UnixListener(endpoint)
