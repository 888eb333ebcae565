"""tcp://host:port — a byte stream + framing, behind the authkey handshake of ipcraft._auth.

Decisions:

* **A secret or an explicit opt-out, never a silent default.**  Both connect() and listen() need
  ``authkey=`` (bytes) or ``insecure=True``.  Every connection starts with the handshake of
  ``_auth.Handshake`` whichever was chosen, so a side with a key and a side without one both learn
  it at once (AuthenticationError on both sides) instead of deadlocking (CPython #123736).  Only a
  successful authkey handshake sets ``authenticated``, and only then may pickle be decoded; an
  insecure endpoint asking for serializer=pickle is refused before any socket is made.
* **The handshake is bounded** by ``handshake_timeout`` (default 10 s, and the caller's deadline on
  the connecting side).  On the listening side handshakes run concurrently (see _sockets): a client
  that fails its handshake (wrong key, silence, not ipcraft, a broken TLS hello) is closed and counted
  in ``refused`` without delaying the others.  A client already connected gets its full
  handshake_timeout even when ``accept(timeout)`` is shorter: cutting it off would drop clients that
  merely arrived late in the wait.
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

from .._auth import HELLO_SIZE, PROOF_SIZE, Handshake
from .._endpoint import Endpoint
from .._errors import os_error
from .._peer import Peer
from ..errors import AuthenticationError, InvalidEndpoint, PeerVanished
from ._contract import Transport
from ._io import SocketStream
from ._sockets import (
    POLLIN,
    POLLOUT,
    SocketListener,
    Steps,
    bound_endpoint,
    connect_socket,
    handshake_deadline,
    recv_exact,
    resolve_inet,
    run,
    send_all,
    timed_out,
)


def _authkey(endpoint: Endpoint) -> bytes | None:
    """The authkey to use (None when insecure=True); refuse an endpoint that chose neither or both."""
    opts = endpoint.options
    key, insecure = opts.get("authkey"), opts.get("insecure", False)
    if key is not None and not endpoint.handshake:
        raise InvalidEndpoint(f"{endpoint}: authkey= is proven by ipcraft's handshake, which "
                              f"framing={endpoint.framing} turns off; add handshake=true, or use insecure=True")
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


def connect(endpoint: Endpoint, deadline: float | None) -> Transport:
    """Connect to a tcp:// listener, then run TLS (if asked) and the authkey handshake."""
    return run(connect_steps(endpoint, deadline))


def connect_steps(endpoint: Endpoint, deadline: float | None) -> Steps[Transport]:
    """:func:`connect` as resumable steps (see _sockets).  Host names are resolved before the first."""
    key = _authkey(endpoint)
    what = f"connecting to {endpoint}"
    family, addr = resolve_inet(*endpoint.host_port, socket.SOCK_STREAM, what)
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        yield from connect_socket(sock, addr, deadline, what, endpoint.address)
    except BaseException:
        sock.close()
        raise
    return (yield from _secure(sock, endpoint, key, "client", handshake_deadline(endpoint, deadline)))


def _secure(sock: socket.socket, endpoint: Endpoint, key: bytes | None, role: str,
            deadline: float | None) -> Steps[Transport]:
    """Set socket options, wrap in TLS if asked, run the authkey handshake; close ``sock`` on failure."""
    opts = endpoint.options
    try:
        if opts.get("nodelay", True):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = Peer(address=sock.getpeername())
        ctx = opts.get("ssl_context")
        if ctx is not None:
            sock = yield from _tls(sock, ctx, endpoint, role, deadline)
        authenticated = False  # raw framing runs no handshake unless handshake=true asks for one
        if endpoint.handshake:
            authenticated = yield from _handshake(sock, key, role, deadline, endpoint)
        t = SocketStream(sock, str(endpoint))
        t.peer = peer
        t.authenticated = authenticated
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
         deadline: float | None) -> Steps[ssl.SSLSocket]:
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
                ready = yield (tls.fileno(), POLLIN, deadline)
            except ssl.SSLWantWriteError:
                ready = yield (tls.fileno(), POLLOUT, deadline)
            if not ready:
                raise timed_out(f"the TLS handshake with {endpoint}")
    except BaseException:
        tls.close()
        raise


def _handshake(sock: socket.socket, key: bytes | None, role: str, deadline: float | None,
               endpoint: Endpoint) -> Steps[bool]:
    """Run both halves of the authkey handshake over ``sock``; return whether it authenticated."""
    hs = Handshake(key, role)
    what = f"the ipcraft handshake with {endpoint}"
    yield from send_all(sock, hs.hello(), deadline, what)
    hello, _ = yield from recv_exact(sock, HELLO_SIZE, deadline, what, _closed_early)
    proof = hs.receive_hello(hello)
    if proof is not None:
        yield from send_all(sock, proof, deadline, what)
        hs.receive_proof((yield from recv_exact(sock, PROOF_SIZE, deadline, what, _closed_early))[0])
    return hs.authenticated


def _closed_early(message: str) -> PeerVanished:
    return PeerVanished(f"{message} (it may have refused this side's key or lack of one)")


class TcpListener(SocketListener):
    """A listening TCP socket that hands out handshaken transports.

    ``refused`` counts clients dropped because their handshake failed; ``last_refusal`` says why the
    latest one was.  Handshakes (TLS included) run concurrently (see _sockets).
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self._key = _authkey(endpoint)
        family, addr = resolve_inet(*endpoint.host_port, socket.SOCK_STREAM, f"listening on {endpoint}")
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(endpoint.options.get("backlog", 128))
        except OSError as exc:
            sock.close()
            raise os_error(exc.errno or errno.EIO, f"listening on {endpoint}", endpoint.address) from exc
        super().__init__(bound_endpoint(endpoint, sock), sock)

    def _handshake(self, sock: socket.socket) -> Steps[Transport]:
        return _secure(sock, self.endpoint, self._key, "server", handshake_deadline(self.endpoint, None))


def listen(endpoint: Endpoint) -> TcpListener:
    return TcpListener(endpoint)
