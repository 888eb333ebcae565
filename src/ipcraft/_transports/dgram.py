"""unix+dgram:// and udp:// — datagram queues: one datagram per message, boundaries kept by the kernel.

The handle that creates the queue binds the address and is its only receiver (and the owner, which
removes a socket file on close); handles that open it are senders, connected to that address.

Decisions:

* **Delivery.**  unix+dgram is reliable and ordered per sender: a full receive queue makes senders
  wait (EAGAIN, then poll for POLLOUT; the kernel caps the queue at net.unix.max_dgram_qlen
  datagrams).  udp:// is neither: a datagram is dropped silently when the receiver's SO_RCVBUF is
  full, when nothing is bound there, or on the network; datagrams may be reordered or (rarely)
  duplicated off-host.  A send that the kernel knows cannot arrive because an earlier datagram got
  ICMP "port unreachable" raises PeerVanished: that message was not sent, the queue stays usable.
  The receiver's SO_RCVBUF is raised to ``recv_buffer=`` (default: toward net.core.rmem_max, at most
  4 MiB) to make drops under bursts less likely.
* **Sizes.**  udp carries at most 65507 bytes per datagram over IPv4 (65535 less the 20-byte IP and
  8-byte UDP headers) and 65527 over IPv6, ipcraft's 8-byte frame header included.  unix+dgram is
  bounded by the sender's socket send buffer, which is raised toward net.core.wmem_max exactly as for
  unix+seqpacket (the same code).  Larger messages raise MessageTooLarge before anything is sent.
* **Who may send.**  The socket file is bound atomically with mode 0600 by default (the helpers of
  unix://), so only this uid (and root) can send.  The receiver also asks the kernel for each
  sender's credentials (SO_PASSCRED) and refuses a message from a uid other than its own or those in
  ``allowed_uids=`` with AuthenticationError (the message is discarded, the queue stays usable); so a
  unix+dgram receiver is authenticated.  A sender is authenticated when the socket file is owned by
  its own uid or root (an abstract name proves nothing: anyone may bind one first).  udp:// is never
  authenticated, so pickle is refused on it.
* ``last_meta`` of a received message is ``{"address": sender}`` (None for an unbound Unix sender),
  plus ``pid``, ``uid`` and ``gid`` for unix+dgram.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import struct
from typing import Any

from .._auth import uid_allowed
from .._endpoint import Endpoint
from .._errors import os_error
from .._names import DEFAULT_MODE
from .._peer import Peer
from .._wait import wait_fd
from ..errors import AuthenticationError, HandleClosed, InvalidEndpoint, MessageTooLarge, PeerVanished
from . import framed, unframe
from ._contract import Message, Transport
from ._io import raise_sndbuf, timed_out
from ._sockets import bind_abstract, bind_path, bound_endpoint, connect_unix, resolve_inet, sockaddr

_POLLIN, _POLLOUT = 1, 4
_CRED = struct.Struct("3i")
_CRED_SPACE = socket.CMSG_SPACE(_CRED.size)
_UDP_MAX: dict[int, int] = {socket.AF_INET: 65507, socket.AF_INET6: 65527}
_RCVBUF_DEFAULT_CAP = 4 * 1024 * 1024


def open_queue(endpoint: Endpoint, create: bool | str) -> Transport:
    """Bind and receive (``create`` true, or "if_missing" and nobody is bound), else connect and send."""
    if endpoint.scheme == "udp":
        if endpoint.options.get("insecure", True) is False:
            raise InvalidEndpoint(f"{endpoint}: udp:// cannot authenticate its peers; insecure=False "
                                  "cannot be honoured (use tcp:// with an authkey)")
        opener, busy = _udp_receiver, errno.EADDRINUSE
    else:
        opener, busy = _unix_receiver, errno.EEXIST
    if create is False:
        return _sender(endpoint)
    try:
        return opener(endpoint)
    except OSError as exc:
        if create == "if_missing" and exc.errno == busy:
            return _sender(endpoint)
        raise


def _unix_receiver(endpoint: Endpoint) -> DatagramTransport:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    ino = None
    try:
        if endpoint.abstract:
            bind_abstract(sock, sockaddr(endpoint), endpoint)
        else:
            try:
                ino = bind_path(sock, endpoint.address, endpoint.options.get("mode", DEFAULT_MODE),
                                 f"binding {endpoint}")[1]
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise os_error(errno.EEXIST, f"creating {endpoint}: a receiver is already bound there "
                               "(open it with create=False to send)", endpoint.address) from None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        _set_rcvbuf(sock, endpoint)
        t = DatagramTransport(sock, endpoint, receiver=True)
    except BaseException:
        sock.close()
        raise
    t.owner, t._bound_ino = True, ino
    t.max_payload, t.limit_source = raise_sndbuf(sock)
    t.authenticated = True  # every message's sender uid is checked in recv_message
    return t


def _udp_receiver(endpoint: Endpoint) -> DatagramTransport:
    family, addr = resolve_inet(*endpoint.host_port, socket.SOCK_DGRAM, f"binding {endpoint}")
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        try:
            sock.bind(addr)
        except OSError as exc:
            raise os_error(exc.errno or errno.EIO, f"binding {endpoint}", endpoint.address) from exc
        _set_rcvbuf(sock, endpoint)
        t = DatagramTransport(sock, endpoint, receiver=True)
    except BaseException:
        sock.close()
        raise
    t.endpoint = bound_endpoint(endpoint, sock)
    t.owner = True
    _udp_limit(t, family)
    return t


def _sender(endpoint: Endpoint) -> DatagramTransport:
    if endpoint.scheme == "udp":
        family, addr = resolve_inet(*endpoint.host_port, socket.SOCK_DGRAM, f"opening {endpoint}")
    else:
        family, addr = socket.AF_UNIX, sockaddr(endpoint)
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        addr = _connect(sock, addr, endpoint)
        t = DatagramTransport(sock, endpoint, receiver=False)
    except BaseException:
        sock.close()
        raise
    t._addr = addr
    if family == socket.AF_UNIX:
        t.max_payload, t.limit_source = raise_sndbuf(sock)
        t.authenticated = not endpoint.abstract and _owned_by_us_or_root(endpoint.address)
    else:
        _udp_limit(t, family)
        t.peer = Peer(address=sock.getpeername())
    return t


def _connect(sock: socket.socket, addr: Any, endpoint: Endpoint) -> Any:
    """Connect the sender; return the address that answered (an abstract name may answer padded)."""
    try:
        if sock.family == socket.AF_UNIX:
            return connect_unix(sock, addr)[0]  # a blocking datagram connect never pends
        sock.connect(addr)
        return addr
    except OSError as exc:
        hint = ""
        if exc.errno == errno.ECONNREFUSED:
            hint = " (nothing receives there: a stale socket file, or the receiver has closed)"
        elif exc.errno == errno.EPROTOTYPE:
            hint = " (the socket there is not a datagram socket)"
        raise os_error(exc.errno or errno.EIO, f"opening {endpoint} to send{hint}", endpoint.address) from exc


def _udp_limit(t: DatagramTransport, family: int) -> None:
    ip = "IPv6 (65535 less the 8-byte UDP header)" if family == socket.AF_INET6 else \
        "IPv4 (65535 less the 20-byte IP and 8-byte UDP headers)"
    t.max_payload, t.limit_source = _UDP_MAX[family], f"the largest UDP datagram over {ip}"


def _set_rcvbuf(sock: socket.socket, endpoint: Endpoint) -> None:
    want = endpoint.options.get("recv_buffer")
    if want is None:
        try:
            with open("/proc/sys/net/core/rmem_max") as f:
                want = min(int(f.read()), _RCVBUF_DEFAULT_CAP)
        except OSError:
            return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
    except OSError as exc:
        raise os_error(exc.errno or errno.EIO, f"setting recv_buffer={want} on {endpoint}") from exc


def _owned_by_us_or_root(path: str) -> bool:
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return False
    return uid in (os.geteuid(), 0)


class DatagramTransport(Transport):
    """One bound receiver or one connected sender of a datagram queue."""

    def __init__(self, sock: socket.socket, endpoint: Endpoint, *, receiver: bool) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self._receiver = receiver
        self._raw = endpoint.framing == "none"
        self._unix = sock.family == socket.AF_UNIX
        self._bound_ino: int | None = None
        self._creator_pid = os.getpid()
        self._addr: Any = None
        self._allowed = endpoint.options.get("allowed_uids")
        self._scratch = bytearray(65536)
        self.last_meta: dict[str, Any] = {}
        sock.setblocking(False)

    def fileno(self) -> int:
        fd = self.sock.fileno()
        if fd < 0:
            raise HandleClosed(f"{self.endpoint} is closed")
        return fd

    def close(self) -> None:
        self.sock.close()
        if self.owner:
            self.unlink()

    def unlink(self) -> None:
        """Remove the socket file, if it is still the one this receiver bound (udp and abstract: no-op)."""
        ino, self._bound_ino = self._bound_ino, None
        if ino is None or os.getpid() != self._creator_pid:  # a forked child's copy never removes it
            return
        try:
            if os.stat(self.endpoint.address).st_ino == ino:
                os.unlink(self.endpoint.address)
        except OSError:
            pass

    def extra(self) -> dict[str, Any]:
        role = "receiver" if self._receiver else "sender"
        facts: dict[str, Any] = {"endpoint": self.endpoint, "role": role}
        if self._receiver:
            facts["recv_buffer"] = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        return facts

    def _only(self, receiver: bool, verb: str) -> None:
        if self._receiver != receiver:
            mine = "receives (it created the queue)" if self._receiver else "sends (it opened the queue)"
            raise io.UnsupportedOperation(f"cannot {verb} on this handle of {self.endpoint}: it only {mine}")

    def wait_readable(self, deadline: float | None) -> bool:
        self._only(True, "receive")
        return wait_fd(self.fileno(), _POLLIN, deadline)

    def send_message(self, sid: int, payload: memoryview, deadline: float | None, **extra: Any) -> None:
        """Send one datagram; waits for room in a unix receiver's queue (udp never waits)."""
        self._only(False, "send")
        if extra:
            raise TypeError(f"{self.endpoint.scheme}:// takes no per-message options; got {', '.join(extra)}")
        parts = framed(sid, payload, self._raw)
        size = sum(memoryview(p).nbytes for p in parts)
        if self.max_payload is not None and size > self.max_payload:
            raise MessageTooLarge(f"a {size}-byte datagram does not fit {self.endpoint}: the limit is "
                                  f"{self.max_payload} bytes ({self.limit_source})", size, self.max_payload)
        retried = False
        while True:
            try:
                self.sock.sendmsg(parts, (), socket.MSG_NOSIGNAL)
                return
            except BlockingIOError:
                if not wait_fd(self.fileno(), _POLLOUT, deadline):
                    raise timed_out(f"sending on {self.endpoint} (the receiver's queue stayed full; "
                                    "nothing was sent)") from None
            except OSError as exc:
                gone = exc.errno in (errno.ECONNREFUSED, errno.ENOTCONN)
                if gone and self._unix and not retried:
                    retried = True  # the receiver may have been replaced: reconnect once to the path
                    try:
                        self.sock.connect(self._addr)
                        continue
                    except OSError:
                        pass
                if gone:
                    why = ("the receiver closed" if self._unix
                           else "an earlier datagram got ICMP port unreachable")
                    raise PeerVanished(f"sending on {self.endpoint}: nothing receives there ({why}); this "
                                       "message was not sent", exc.errno) from None
                if exc.errno == errno.EMSGSIZE:
                    raise MessageTooLarge(f"a {size}-byte datagram does not fit {self.endpoint} "
                                          f"({self.limit_source})", size, self.max_payload) from None
                raise os_error(exc.errno or errno.EIO, f"sending on {self.endpoint}") from exc

    def recv_message(self, deadline: float | None, **extra: Any) -> Message:
        """One whole datagram; its ``meta`` (and ``last_meta``) says who sent it."""
        self._only(True, "receive")
        if extra:
            raise TypeError(f"{self.endpoint.scheme}:// takes no per-message options; got {', '.join(extra)}")
        while True:
            try:
                if not self._unix:
                    n, addr = self.sock.recvfrom_into(self._scratch)
                    self.last_meta = {"address": addr}
                    return unframe(memoryview(self._scratch)[:n], self.last_meta, self._raw)
                return unframe(self._recv_unix(), self.last_meta, self._raw)
            except BlockingIOError:
                if not wait_fd(self.fileno(), _POLLIN, deadline):
                    raise timed_out(f"receiving on {self.endpoint}") from None
            except OSError as exc:
                raise os_error(exc.errno or errno.EIO, f"receiving on {self.endpoint}") from exc

    def _recv_unix(self) -> memoryview:
        # Peek at the length first (MSG_TRUNC reports the real size), so a datagram larger than the
        # scratch gets a buffer of its size instead of being cut.
        n = self.sock.recv_into(self._scratch, len(self._scratch), socket.MSG_PEEK | socket.MSG_TRUNC)
        buf = self._scratch if n <= len(self._scratch) else bytearray(n)
        got, anc, flags, addr = self.sock.recvmsg_into([buf], _CRED_SPACE)
        pid = uid = gid = None
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, uid, gid = _CRED.unpack(data[:_CRED.size])
        self.last_meta = {"address": addr or None, "pid": pid, "uid": uid, "gid": gid}
        if flags & socket.MSG_TRUNC:
            raise MessageTooLarge(f"a datagram on {self.endpoint} was larger than announced and was cut; "
                                  "another process reads from this receiver's socket", n, got)
        if not uid_allowed(uid, self._allowed):
            raise AuthenticationError(f"a message on {self.endpoint} from uid {uid} (pid {pid}) was "
                                      f"discarded unread: this receiver runs as uid {os.geteuid()}; pass "
                                      "allowed_uids= to admit others")
        return memoryview(buf)[:got]
