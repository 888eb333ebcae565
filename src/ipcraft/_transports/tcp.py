"""tcp://host:port — a byte stream + framing, behind the authkey handshake of ipcraft._auth.

Decisions:

* **A secret or an explicit opt-out, never a silent default.**  Both connect() and listen() need
  ``authkey=`` (bytes) or ``insecure=True``.  Every connection starts with the handshake of
  ``_auth.Handshake`` whichever was chosen, so a side with a key and a side without one both learn
  it at once (AuthenticationError on both sides) instead of deadlocking (CPython #123736).  Only a
  successful authkey handshake sets ``authenticated``, and only then may pickle be decoded; an
  insecure endpoint asking for serializer=pickle is refused before any socket is made.
* **The handshake is bounded** by ``handshake_timeout`` (default 10 s, and the caller's deadline on
  the connecting side).  On the listening side a client that fails it (wrong key, silence, not
  ipcraft, a broken TLS hello) is closed and counted in ``refused``; ``accept()`` waits for the next
  client.  A client already connected gets its full handshake_timeout even when ``accept(timeout)``
  is shorter: cutting it off would drop clients that merely arrived late in the wait.
* **TLS** (``ssl_context=``) wraps the socket before the handshake, so the authkey proofs travel
  encrypted.  TLS alone does not set ``authenticated``: a certificate proves a server's name, not
  that the peer may send code (use an authkey for that too).
* **TCP_NODELAY** is on by default (``nodelay=``): ipcraft writes whole frames, so Nagle only adds
  latency to small messages.
* **Port 0** is resolved at bind time: ``listener.endpoint`` holds the real port, so
  ``str(listener.endpoint)`` is the URL to connect to.
"""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Any

from .._auth import HELLO_SIZE, PROOF_SIZE, Handshake
from .._endpoint import Endpoint
from .._errors import os_error
from .._peer import Peer
from .._wait import deadline_after, wait_fd
from ..errors import AuthenticationError, InvalidEndpoint, IPCError, PeerVanished, Timeout
from ..primitives.sockets import _inet
from ._contract import Transport
from ._io import SocketStream, timed_out
from .unix import UnixListener

_POLLIN, _POLLOUT = 1, 4
_DEFAULT_HANDSHAKE_TIMEOUT = 10.0


def _authkey(endpoint: Endpoint) -> bytes | None:
    """The authkey to use (None when insecure=True); refuse an endpoint that chose neither or both."""
    opts = endpoint.options
    key, insecure = opts.get("authkey"), opts.get("insecure", False)
    if key is None and not insecure:
        raise InvalidEndpoint(
            f"{endpoint}: tcp:// needs authkey=b'...' (a shared secret both sides pass; the connection "
            "is then authenticated and may carry pickle) or insecure=True (anyone who can reach the "
            "port may connect; pickle is refused)")
    if key is not None and insecure:
        raise InvalidEndpoint(f"{endpoint}: pass either authkey= or insecure=True, not both")
    if key is not None and (not isinstance(key, (bytes, bytearray)) or not key):
        raise InvalidEndpoint(f"{endpoint}: authkey must be non-empty bytes, not {type(key).__name__}")
    ctx = opts.get("ssl_context")
    if ctx is not None and not isinstance(ctx, ssl.SSLContext):
        raise InvalidEndpoint(f"{endpoint}: ssl_context must be an ssl.SSLContext, not {type(ctx).__name__}")
    serializer = opts.get("serializer")
    if key is None and serializer is not None and serializer.trusted_only:
        raise AuthenticationError(
            f"{endpoint}: serializer {serializer.name} can run code when loading and is allowed only on "
            "an authenticated channel; an insecure tcp:// channel is not one (pass authkey=, or use the "
            "default msgpack)")
    return bytes(key) if key is not None else None


def _handshake_deadline(endpoint: Endpoint, deadline: float | None) -> float | None:
    hs = deadline_after(endpoint.options.get("handshake_timeout", _DEFAULT_HANDSHAKE_TIMEOUT))
    if deadline is None:
        return hs
    return deadline if hs is None else min(deadline, hs)


def bound_endpoint(endpoint: Endpoint, sock: socket.socket) -> Endpoint:
    """``endpoint`` with the port the kernel actually bound (port 0 resolved)."""
    host = endpoint.address.rpartition(":")[0]  # keeps IPv6 brackets
    return Endpoint(endpoint.scheme, f"{host}:{sock.getsockname()[1]}", endpoint.options)


def connect(endpoint: Endpoint, deadline: float | None) -> Transport:
    """Connect to a tcp:// listener, then run TLS (if asked) and the authkey handshake."""
    key = _authkey(endpoint)
    family, addr = _inet(*endpoint.host_port, socket.SOCK_STREAM, f"connecting to {endpoint}")
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        _connect_raw(sock, addr, endpoint, deadline)
    except BaseException:
        sock.close()
        raise
    return _secure(sock, endpoint, key, "client", _handshake_deadline(endpoint, deadline))


def _connect_raw(sock: socket.socket, addr: Any, endpoint: Endpoint, deadline: float | None) -> None:
    sock.setblocking(False)
    err = sock.connect_ex(addr)
    if err in (errno.EINPROGRESS, errno.EAGAIN):
        if not wait_fd(sock.fileno(), _POLLOUT, deadline):
            raise timed_out(f"connecting to {endpoint}")
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise os_error(err, f"connecting to {endpoint}", endpoint.address)


def _secure(sock: socket.socket, endpoint: Endpoint, key: bytes | None, role: str,
            deadline: float | None) -> SocketStream:
    """Set socket options, wrap in TLS if asked, run the authkey handshake; close ``sock`` on failure."""
    opts = endpoint.options
    try:
        if opts.get("nodelay", True):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = Peer(address=sock.getpeername())
        ctx = opts.get("ssl_context")
        if ctx is not None:
            sock = _tls(sock, ctx, endpoint, role, deadline)
        t = SocketStream(sock, str(endpoint))
        t.peer = peer
        t.authenticated = _handshake(t, key, role, deadline, endpoint)
    except OSError as exc:  # includes ssl.SSLError and ipcraft's OSError subclasses
        sock.close()
        if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):
            raise AuthenticationError(f"the TLS handshake with {endpoint} failed: {exc}") from exc
        raise
    except BaseException:
        sock.close()
        raise
    return t


def _tls(sock: socket.socket, ctx: ssl.SSLContext, endpoint: Endpoint, role: str,
         deadline: float | None) -> ssl.SSLSocket:
    if role == "server":
        tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    else:
        name = endpoint.options.get("server_hostname", endpoint.host_port[0])
        tls = ctx.wrap_socket(sock, server_hostname=name, do_handshake_on_connect=False)
    try:  # wrap_socket() took over the fd: from here on only ``tls`` can close it
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                ready = wait_fd(tls.fileno(), _POLLIN, deadline)
            except ssl.SSLWantWriteError:
                ready = wait_fd(tls.fileno(), _POLLOUT, deadline)
            if not ready:
                raise timed_out(f"the TLS handshake with {endpoint}")
    except BaseException:
        tls.close()
        raise


def _handshake(t: SocketStream, key: bytes | None, role: str, deadline: float | None,
               endpoint: Endpoint) -> bool:
    """Run both halves of the authkey handshake over ``t``; return whether it authenticated."""
    hs = Handshake(key, role)
    what = f"the ipcraft handshake with {endpoint}"
    t.send_all([hs.hello()], deadline)
    proof = hs.receive_hello(_recv_exact(t, HELLO_SIZE, deadline, what))
    if proof is not None:
        t.send_all([proof], deadline)
        hs.receive_proof(_recv_exact(t, PROOF_SIZE, deadline, what))
    return hs.authenticated


def _recv_exact(t: SocketStream, n: int, deadline: float | None, what: str) -> bytes:
    """Exactly ``n`` bytes (no more: what follows belongs to the channel's frames)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = t.recv_into(view[got:], deadline)
        except Timeout:
            raise timed_out(f"{what} (the peer sent {got} of {n} bytes)") from None
        if k == 0:
            raise PeerVanished(f"{what}: the peer closed the connection during the handshake (it may "
                               "have refused this side's key or lack of one)")
        got += k
    return bytes(buf)


class TcpListener(UnixListener):
    """A listening TCP socket that hands out handshaken transports.

    ``refused`` counts clients dropped because their handshake failed; ``last_refusal`` says why the
    latest one was.  Accepting, fileno() and close() are UnixListener's (a TCP listener has no socket
    file, so close() unlinks nothing).
    """

    def __init__(self, endpoint: Endpoint) -> None:  # not super().__init__(): that binds a Unix socket
        self._sock: socket.socket | None = None
        self._bound_ino = None
        self._key = _authkey(endpoint)
        self.refused = 0
        self.last_refusal = ""
        family, addr = _inet(*endpoint.host_port, socket.SOCK_STREAM, f"listening on {endpoint}")
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(endpoint.options.get("backlog", 128))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise os_error(exc.errno or errno.EIO, f"listening on {endpoint}", endpoint.address) from exc
        self._sock = sock
        self.endpoint = bound_endpoint(endpoint, sock)

    def accept(self, deadline: float | None) -> Transport:
        """The next client that passes the handshake; failed clients are closed and counted."""
        while True:
            sock = self._accept_raw(deadline)
            try:
                return _secure(sock, self.endpoint, self._key, "server",
                               _handshake_deadline(self.endpoint, None))
            except (OSError, IPCError) as exc:
                self.refused += 1
                self.last_refusal = f"{type(exc).__name__}: {exc}"


def listen(endpoint: Endpoint) -> TcpListener:
    return TcpListener(endpoint)
