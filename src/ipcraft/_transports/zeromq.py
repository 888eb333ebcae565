"""zmq+tcp://host:port and zmq+ipc:///path — ZeroMQ sockets (pyzmq, the ``ipcraft[zmq]`` extra).

One ZeroMQ frame carries one ipcraft message: the 8-byte frame header of ipcraft._framing followed by
the payload, exactly as on every other message transport.  Publish/subscribe adds one frame before it,
the topic, because ZeroMQ filters subscriptions on the first frame's prefix.

Decisions:

* **listen/connect: one socket per peer.**  The listener binds a ROUTER that only hands out
  addresses: a client's DEALER sends ``ipcraft-zmq/1``, the listener binds a fresh PAIR socket (a
  port the kernel picks on the listener's host, or ``<path>.<n>`` for ipc) and answers ``[b"ok",
  address]``; the client connects a PAIR there and both wait for ZeroMQ's handshake.  A PAIR admits one
  peer, so each accepted Channel has its own socket, high-water marks, heartbeats, disconnect events
  and file descriptor; demultiplexing one ROUTER into many Channels would need a shared reader and
  per-peer buffers, and fileno() could not say which peer is ready.
* **End of stream**: ZeroMQ has none, so close() sends one empty frame (never a valid ipcraft frame,
  which has at least its header); the peer's recv raises ChannelClosed after the last message and
  answers with an empty frame of its own.  close() waits for that answer (or the peer's own close)
  up to ``linger=`` seconds (default 5): ZeroMQ's queues live in this process, so without it a
  process that exits right after close() could lose what it sent last.  A peer whose connection
  drops without it (killed, cable pulled: heartbeats every second, a silent peer is dropped after
  three) makes a blocking send or recv raise PeerVanished, from the socket monitor's DISCONNECTED
  event (read between slices of at most 100 ms of a wait).
* **queue: PUSH/PULL.**  The creating handle (create=True or "if_missing") binds and the others
  connect; by default the creator receives (PULL) and openers send (PUSH), as with fifo:// and udp://;
  ``role=push`` on the creator turns that round.  ZeroMQ deals each message to one receiver, round
  robin.  A handle only does its role: the other direction raises io.UnsupportedOperation.
* **Secure by default.**  CURVE (ZeroMQ's own authentication and encryption) unless ``insecure=True``.
  The binding side needs its key pair (``curve_keys=``) and the public keys it admits
  (``curve_clients=``: a .key file, a directory of them, or a list); a connecting side needs its key
  pair and the server's public key (``curve_server=``).  ``ipcraft keygen`` writes pairs.  Clients
  are checked by a ZAP handler (pyzmq's, one thread per process); a refused client gets nothing and its
  connect() raises AuthenticationError.  Only a CURVE socket is ``authenticated`` (pickle allowed).
* **fileno()** is an epoll descriptor holding ZeroMQ's own FD, the monitor's FD and an eventfd.
  ZeroMQ's FD is edge-triggered: it signals that the socket's state changed, and any operation on the
  socket may consume the signal while a message is still waiting.  So once fileno() has been handed
  out (and while a thread of ours waits), every operation reads ZMQ_EVENTS afterwards and keeps the
  eventfd set exactly while a message is ready: the descriptor is then readable whenever a message
  (or the end) is ready, possibly also when none is (callers retry).  It never signals writability;
  ``fd_writable = False`` tells ipcraft.aio to retry sends on a timer.
* **Threads.**  ZeroMQ sockets are not thread-safe and a channel may send in one thread while it
  receives in another, so every socket call holds a per-socket lock and every wait happens outside
  it (a sender on ZeroMQ's and the monitor's FDs and an eventfd kept set while there is room, a
  receiver on the fileno() descriptor, in slices of at most 100 ms).  While a thread waits, every
  operation and every ZMQ_EVENTS read of another thread sets both eventfds from ZMQ_EVENTS: reading
  it consumes the FD's signal the waiter sleeps on.  A receive takes a message only when ZMQ_EVENTS
  says one is there (in pyzmq a receive that finds nothing costs an exception, several times the
  price of the check), except on the fast path right after a receive that found one (a stream of
  messages) and right after ZeroMQ's FD alone woke a waiting receive (a message has most likely come).
* **Fast path** (Channel's send/send_bytes/recv_bytes without a timeout): C (``_native.ZmqFast``,
  zmqfast.c) calling libzmq on pyzmq's socket (``Socket.underlying``) through the copy of libzmq pyzmq
  loaded: pyzmq's extension is opened with RTLD_NOLOAD (dlsym searches the libraries it was linked
  with), so no second copy is ever loaded, and the socket's type read through it must match.  It
  writes the header and the payload into one zmq_msg (one copy) and sends it with ZMQ_DONTWAIT, and
  returns a received payload with one copy, the GIL held throughout (nothing here blocks); it calls
  back into Python only to read the monitor every 32 sends, to keep fileno()'s descriptor exact while
  it is tracked, at the end of stream and for a malformed frame.  The same object is the socket's lock:
  the fast path only tries it (and gives up to the general path), ``with lock`` waits for it with the
  GIL released.  A blocking receive of one thread alone (no fileno() handed out, no other waiter, no
  topic, the last message small, the monitor not due) sleeps in C too (``ZmqFast.wait_recv``): one
  slice of poll() on ZeroMQ's FD, the ready eventfd and the monitor's FD with the GIL released, during
  which it counts as a waiter (every other operation keeps the eventfd exact), then the message that
  woke it; anything else it leaves to the general path.  Where pyzmq's libzmq cannot be found, a
  Python fast path serves: pyzmq's compiled
  send/recv, one state int, the monitor read every 32 sends, the lock taken with acquire()/release(),
  the header packed once per run of messages of one size; a message from 64 KiB on is received as a
  ZeroMQ frame (copy=False), so its payload is copied once, into the bytes returned or by the
  serializer.
* **Limits**: no mechanism limit (``max_payload`` is None); ZMQ_MAXMSGSIZE on the receiving socket
  is max_message_size plus the header, so ZeroMQ drops a peer that sends more (PeerVanished).
  ``hwm=`` sets both high-water marks (default 1000 messages): a send waits when the peer's queue is
  full, except on PUB, which drops messages for a subscriber that has fallen behind.
"""

from __future__ import annotations

import errno
import os
import select
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

try:
    import zmq
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator
    from zmq.utils.monitor import recv_monitor_message
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess without pyzmq
    raise ModuleNotFoundError("the zmq+tcp:// and zmq+ipc:// schemes need pyzmq: pip install 'ipcraft[zmq]'",
                              name=exc.name) from exc

from .. import _native
from .._endpoint import Endpoint
from .._errors import os_error
from .._framing import DEFAULT_MAX_MESSAGE_SIZE, HEADER, HEADER_SIZE, MAGIC
from .._names import DEFAULT_MODE
from .._peer import Peer
from .._wait import deadline_after, remaining
from ..errors import AuthenticationError, ChannelClosed, HandleClosed, InvalidEndpoint, PeerVanished, Timeout
from . import framed, unframe
from ._contract import Message, Transport
from ._sockets import POLLIN, Steps, run

#: What a client sends to a listener's ROUTER to ask for its own PAIR socket.
HELLO = b"ipcraft-zmq/1"
_BYE = b""
_HEARTBEAT_S = 1.0
_DEFAULT_HANDSHAKE_TIMEOUT = 10.0
_CLOSE_LINGER_MS = 1000
#: Seconds a pair's close() waits for the peer to acknowledge the end of stream (``linger=``).
_DEFAULT_LINGER = 5.0
#: Longest wait inside libzmq, in ms, before the monitor is read again (a dead peer is seen within it).
_SLICE_MS = 100
#: How often a pair's sends read the monitor, in seconds.
_CHECK_S = 0.005
#: A wait whose poll object another thread of the handle sleeps on naps this long (ms) and looks again.
_BUSY_NAP_MS = 5
#: Messages from this size on are handed to ZeroMQ without another copy (pyzmq's zero-copy send).
_ZERO_COPY_FROM = 64 * 1024
_MONITOR_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_AUTH_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def has_curve() -> bool:
    """Whether this libzmq was built with CURVE (libsodium)."""
    return bool(zmq.has("curve"))


# -- keys ----------------------------------------------------------------------------------------------

def generate_keypair(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write a CURVE key pair as ``<name>.key`` (public) and ``<name>.key_secret`` (mode 0600) in
    ``directory``; return both paths (ZeroMQ's certificate format, readable by zmq.auth)."""
    old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        public, secret = zmq.auth.create_certificates(os.fspath(directory), name)
    finally:
        os.umask(old)
    os.chmod(public, 0o644)
    return Path(public), Path(secret)


def _z85_key(value: Any, what: str) -> bytes:
    key = value.encode() if isinstance(value, str) else bytes(value)
    if len(key) != 40:
        raise InvalidEndpoint(f"{what}: a CURVE key is 40 Z85 characters (ipcraft keygen writes them), "
                              f"not {len(key)} bytes")
    try:
        zmq.utils.z85.decode(key)
    except (ValueError, KeyError, IndexError) as exc:
        raise InvalidEndpoint(f"{what}: not a Z85-encoded CURVE key") from exc
    return key


def _load_file(path: str | os.PathLike[str], what: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise InvalidEndpoint(f"{what}: cannot read the key file {os.fspath(path)!r}: {exc}") from exc
    return _z85_key(public, what), (_z85_key(secret, what) if secret else None)


def _key_pair(value: Any, what: str) -> tuple[bytes, bytes]:
    """``curve_keys=``: a .key_secret file, or a (public, secret) pair of Z85 keys."""
    if isinstance(value, (str, os.PathLike)):
        public, secret = _load_file(value, what)
        if secret is None:
            raise InvalidEndpoint(f"{what}: {os.fspath(value)!r} holds no secret key (give the .key_secret file)")
        return public, secret
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return _z85_key(value[0], what), _z85_key(value[1], what)
    raise InvalidEndpoint(f"{what}: curve_keys is a .key_secret file or a (public, secret) pair")


def _public_key(value: Any, what: str) -> bytes:
    """``curve_server=``: a .key file or a Z85 public key."""
    if isinstance(value, (str, os.PathLike)) and (os.sep in os.fspath(value) or os.path.exists(value)):
        return _load_file(value, what)[0]
    return _z85_key(value, what)


def _public_keys(value: Any, what: str) -> frozenset[bytes]:
    """``curve_clients=``: a directory of .key files, one .key file, or Z85 public keys."""
    if isinstance(value, (str, os.PathLike)):
        if os.path.isdir(value):
            return frozenset(_load_file(p, what)[0] for p in sorted(Path(value).glob("*.key")))
        return frozenset({_public_key(value, what)})
    if isinstance(value, Iterable):
        return frozenset(_public_key(v, what) for v in value)
    raise InvalidEndpoint(f"{what}: curve_clients is a directory, a .key file or a list of public keys")


class _Security:
    """How one socket authenticates: None (insecure) or CURVE as server or client."""

    def __init__(self, endpoint: Endpoint, server: bool) -> None:
        opts = endpoint.options
        what = str(endpoint)
        given = [k for k in ("curve_keys", "curve_server", "curve_clients") if k in opts]
        self.server = server
        self.curve = not opts.get("insecure", False)
        self.keys: tuple[bytes, bytes] | None = None
        self.server_key: bytes | None = None
        self.clients: frozenset[bytes] = frozenset()
        if not self.curve:
            if given:
                raise InvalidEndpoint(f"{what}: insecure=True contradicts {', '.join(given)}")
            serializer = opts.get("serializer")
            if serializer is not None and serializer.trusted_only:
                raise AuthenticationError(
                    f"{what}: serializer {serializer.name} can run code when loading and is allowed only on "
                    "an authenticated channel; an insecure ZeroMQ socket is not one (use CURVE keys, or the "
                    "default msgpack)")
            return
        if not has_curve():
            raise AuthenticationError(f"{what}: this libzmq has no CURVE support; pass insecure=True "
                                      "to go without authentication")
        if "curve_keys" not in opts:
            raise AuthenticationError(f"{what} is authenticated with CURVE by default: pass curve_keys= "
                                      "(this side's .key_secret file; `ipcraft keygen` makes one) or insecure=True")
        self.keys = _key_pair(opts["curve_keys"], what)
        if server:
            if "curve_clients" not in opts:
                raise AuthenticationError(f"{what}: the binding side needs curve_clients= (the public keys "
                                          "it admits: a directory of .key files, a file, or a list)")
            self.clients = _public_keys(opts["curve_clients"], what)
        else:
            if "curve_server" not in opts:
                raise AuthenticationError(f"{what}: the connecting side needs curve_server= (the binding "
                                          "side's public key or .key file)")
            self.server_key = _public_key(opts["curve_server"], what)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Set the CURVE options on ``sock`` (a server's clients are checked by its context's ZAP handler)."""
        if self.keys is None:
            return
        sock.curve_publickey, sock.curve_secretkey = self.keys
        if self.server:
            sock.curve_server = True
        else:
            sock.curve_serverkey = self.server_key


class _Context:
    """A ZeroMQ context of our own per listener, queue, port or connection: closing the last socket
    terminates it, which waits (up to each socket's linger) until ZeroMQ has handed what was queued to
    the kernel, so a process that exits right after close() loses nothing.  A CURVE server's context
    also runs pyzmq's ZAP handler (a thread), which admits the clients' public keys and counts
    refusals."""

    def __init__(self, clients: frozenset[bytes] | None) -> None:
        self.zmq: zmq.Context[Any] = zmq.Context(io_threads=1)
        self._pid = os.getpid()
        self._refs = 0
        self._clients = clients or frozenset()
        self.refused = 0
        self._auth: ThreadAuthenticator | None = None
        if clients is not None:
            try:
                self._auth = ThreadAuthenticator(self.zmq)
                self._auth.start()
                self._auth.configure_curve_callback("*", credentials_provider=self)
            except BaseException:
                self.zmq.term()
                raise

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by the ZAP thread for each CURVE client (its public key in Z85)."""
        ok = key in self._clients
        if not ok:
            self.refused += 1
        return ok

    def acquire(self) -> _Context:
        self._refs += 1
        return self

    def release(self) -> None:
        """One user fewer; the last one's release terminates the context (a forked child's never)."""
        self._refs -= 1
        if self._refs > 0 or os.getpid() != self._pid:
            return
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self.zmq.term()


def _context_for(security: _Security) -> _Context:
    return _Context(security.clients if security.server and security.curve else None)


# -- sockets -------------------------------------------------------------------------------------------

#: Plain ints: pyzmq's constants are enums, whose operators cost more than the calls they guard.
_EV, _IN, _OUT, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.NOBLOCK)
#: The compiled send and recv under pyzmq's Python Socket class, whose send wrapper (routing ids,
#: groups) costs as much as the call itself; the fast path binds these to its socket once.
_SEND, _RECV = zmq.backend.Socket.send, zmq.backend.Socket.recv
#: The state of a transport, one int the fast path reads: everything open; a pair's peer vanished
#: (what arrived can still be received, nothing sent); the end of stream reached or the socket closed.
_OPEN, _VANISHED, _ENDED = 0, 1, 2
#: A pair's fast path reads the socket monitor (a dead peer) once every this many sends (a power of 2).
_CHECK_EVERY = 32
_pack_header, _unpack_header, _MAGIC = HEADER.pack, HEADER.unpack_from, MAGIC
#: Whether transports use the C fast path (_native.ZmqFast) where pyzmq's libzmq can be found; the
#: tests turn it off to exercise the Python one.
_USE_NATIVE = True
#: The library through which _native.ZmqFast reaches pyzmq's libzmq, once found ("" : none).
_zmq_lib: str | None = None


class _Flags:
    """The three ints of a transport's fast path where _native.ZmqFast (which keeps them itself) is not
    used: ``state`` (_OPEN, _VANISHED, _ENDED), ``track`` (every operation reads ZMQ_EVENTS afterwards:
    fileno() was handed out, or a thread waits) and ``cold`` (the last receive had to wait)."""

    __slots__ = ("state", "track", "cold")

    def __init__(self) -> None:
        self.state, self.track, self.cold = _OPEN, False, False


def _libzmq_candidates() -> list[str]:
    """Where the libzmq pyzmq uses may be found, best first: pyzmq's compiled extension (dlsym searches
    the libraries it was linked with, so this finds the very copy pyzmq calls), then every libzmq
    mapped into this process."""
    found = []
    ext = getattr(sys.modules.get(zmq.backend.Socket.__module__), "__file__", None)
    if ext:
        found.append(ext)
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(None, 5)[-1].strip()
                if os.path.basename(path).startswith("libzmq") and path not in found:
                    found.append(path)
    except OSError:
        pass
    return found


def _native_fast(sock: zmq.Socket[Any], limit: int, pair: bool, hooks: Any) -> _native.ZmqFast | None:
    """The C fast path over ``sock`` through pyzmq's own libzmq, or None (then the Python one serves)."""
    global _zmq_lib
    if not _USE_NATIVE or _zmq_lib == "":
        return None
    args = (int(sock.underlying), int(sock.type), _MAGIC, limit, pair, hooks)
    if _zmq_lib is not None:
        return _native.ZmqFast(_zmq_lib, *args)
    for path in _libzmq_candidates():
        try:
            fast = _native.ZmqFast(path, *args)
        except OSError:
            continue
        _zmq_lib = path
        return fast
    _zmq_lib = ""
    return None


def _events(sock: zmq.Socket[Any]) -> int:
    """ZMQ_EVENTS: POLLIN/POLLOUT now (reading it also processes ZeroMQ's pending commands)."""
    return sock.getsockopt(_EV)  # type: ignore[return-value]


def _last_endpoint(sock: zmq.Socket[Any]) -> str:
    return str(sock.getsockopt_string(zmq.LAST_ENDPOINT))


def _zmq_url(endpoint: Endpoint) -> str:
    if endpoint.scheme == "zmq+ipc":
        return f"ipc://{endpoint.address}"
    host, port = endpoint.host_port
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def _new_socket(kind: int, endpoint: Endpoint, security: _Security, ctx: _Context) -> zmq.Socket[Any]:
    opts = endpoint.options
    sock: zmq.Socket[Any] = ctx.zmq.socket(kind)
    try:
        sock.linger = 0
        if ":" in endpoint.address and endpoint.scheme == "zmq+tcp":
            sock.ipv6 = True
        hwm = opts.get("hwm", 1000)
        sock.sndhwm = sock.rcvhwm = hwm
        beat = opts.get("heartbeat", _HEARTBEAT_S)
        if beat > 0:
            sock.setsockopt(zmq.HEARTBEAT_IVL, int(beat * 1000))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(beat * 3000))
            sock.setsockopt(zmq.HEARTBEAT_TTL, int(beat * 3000))
        sock.setsockopt(zmq.MAXMSGSIZE, opts.get("max_message_size", 64 << 20) + HEADER_SIZE + 256)
        security.apply(sock)
    except BaseException:
        sock.close(0)
        raise
    return sock


def _bind(sock: zmq.Socket[Any], url: str, endpoint: Endpoint) -> str:
    """Bind ``sock``; return the address ZeroMQ bound (port 0 / ``*`` resolved)."""
    try:
        sock.bind(url)
    except zmq.ZMQError as exc:
        raise os_error(exc.errno or errno.EIO, f"binding {endpoint}", endpoint.address) from exc
    bound = _last_endpoint(sock)
    if bound.startswith("ipc://"):
        os.chmod(bound[len("ipc://"):], endpoint.options.get("mode", DEFAULT_MODE))
    return bound


def _ipc_file(bound: str) -> tuple[str, int] | None:
    """(path, inode) of the socket file a bind to ``ipc://path`` created, to remove it on close."""
    if not bound.startswith("ipc://"):
        return None
    path = bound[len("ipc://"):]
    return path, os.stat(path).st_ino


def _remove_ipc_file(f: tuple[str, int] | None) -> None:
    """Remove the socket file now, if it is still ours (ZeroMQ's I/O thread would, but later)."""
    if f is None:
        return
    try:
        if os.stat(f[0]).st_ino == f[1]:
            os.unlink(f[0])
    except FileNotFoundError:
        pass


def _endpoint_of(endpoint: Endpoint, bound: str) -> Endpoint:
    if endpoint.scheme == "zmq+ipc":
        return endpoint
    port = bound.rpartition(":")[2]
    host = endpoint.address.rpartition(":")[0]
    return Endpoint(endpoint.scheme, f"{host}:{port}", endpoint.options)


class _Flag:
    """An eventfd kept readable exactly while a condition holds (``update``), for poll(2)."""

    def __init__(self) -> None:
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._set = False

    def update(self, ready: bool) -> None:
        if ready and not self._set:
            os.eventfd_write(self.efd, 1)
            self._set = True
        elif not ready and self._set:
            try:
                os.eventfd_read(self.efd)
            except BlockingIOError:
                pass
            self._set = False

    def close(self) -> None:
        os.close(self.efd)


class _Readiness(_Flag):
    """The epoll descriptor behind fileno() (see the module docstring): ZeroMQ's FD, the monitor's FD
    and an eventfd kept set while ZMQ_EVENTS says POLLIN."""

    def __init__(self, *socks: zmq.Socket[Any]) -> None:
        super().__init__()
        self._ep = select.epoll()
        try:
            self._ep.register(self.efd, select.EPOLLIN)
            for s in socks:
                self._ep.register(int(s.getsockopt(zmq.FD)), select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self._ep.fileno()

    def close(self) -> None:
        self._ep.close()
        super().close()


class ZmqTransport(Transport):
    """One ZeroMQ socket as an ipcraft message transport (PAIR, PUSH, PULL, PUB or SUB)."""

    kind = "message"
    #: ipcraft.aio: fileno() never signals room to send; retry sends on a timer instead.
    fd_writable = False

    def __init__(self, sock: zmq.Socket[Any], endpoint: Endpoint, ctx: _Context, *,
                 pair: bool = False, topic: bytes | None = None, peer: Peer | None = None,
                 connected: bool = False) -> None:
        self._sock: zmq.Socket[Any] | None = sock
        self._endpoint = endpoint
        self._ctx = ctx.acquire()
        self._pair = pair
        self._topic = topic
        self._pid = os.getpid()
        self._peers = 1 if connected else 0
        self._had_peer = connected
        self._vanished = False
        self._eof = False
        self._big_rx = False  # the last message received was large: take the next as a ZeroMQ frame
        self._sent = 0  # messages sent by the fast paths: a pair's monitor is read every _CHECK_EVERY
        self._ipc_file: tuple[str, int] | None = None
        self.last_meta: dict[str, Any] = {}
        self.authenticated = sock.mechanism == zmq.CURVE
        self.peer = peer or Peer()
        kind = sock.type
        self._can_send = kind in (zmq.PAIR, zmq.PUSH, zmq.PUB)
        self._can_recv = kind in (zmq.PAIR, zmq.PULL, zmq.SUB)
        self._mon: zmq.Socket[Any] | None = sock.get_monitor_socket(_MONITOR_EVENTS)
        try:
            self._ready = _Readiness(sock, self._mon)
        except BaseException:
            self._mon.close(0)
            raise
        # A ZeroMQ socket must not be used by two threads at once; a channel may send in one thread
        # and receive in another, so every socket call holds this lock, and waits happen outside it.
        # The C fast path (when pyzmq's libzmq is found) is that lock too, and keeps the fast path's
        # state: _f.state (_OPEN, _VANISHED or _ENDED), _f.track (every operation reads ZMQ_EVENTS
        # afterwards: fileno() was handed out, or a thread waits), _f.cold (the last receive waited).
        try:
            self._fast = _native_fast(sock, self._send_limit(), pair, self)
        except BaseException:
            self._ready.close()
            self._mon.close(0)
            raise
        self._lock: Any = threading.Lock() if self._fast is None else self._fast
        self._f: Any = _Flags() if self._fast is None else self._fast
        self._waiters = 0  # threads waiting for a message: whoever touches the socket keeps the eventfd exact
        self._exposed = False  # fileno() was handed out: the same
        self._senders = 0  # threads waiting for room to send: whoever touches the socket keeps _room exact
        # A sender waits on ZeroMQ's FD, the monitor's and _room, an eventfd kept set while ZMQ_EVENTS
        # says POLLOUT and a sender waits: another thread's receive may consume the FD's signal that
        # room came (ZeroMQ's FD is edge-triggered), and a sender that slept on it alone would then
        # sleep its whole slice, 100 ms per high-water mark of messages.
        try:
            self._room = _Flag()
        except BaseException:
            self._ready.close()
            self._mon.close(0)
            raise
        self._outbox = select.poll()
        self._outbox.register(self._room.efd, select.POLLIN)
        self._inbox = select.poll()  # a receiver on the same three as fileno(), told apart
        self._mon_fd = int(self._mon.getsockopt(zmq.FD))
        self._zmq_fd = int(sock.getsockopt(zmq.FD))
        for fd in (self._ready.efd, int(sock.getsockopt(zmq.FD)), self._mon_fd):
            self._inbox.register(fd, select.POLLIN)
        self._outbox.register(int(sock.getsockopt(zmq.FD)), select.POLLIN)
        self._outbox.register(int(self._mon.getsockopt(zmq.FD)), select.POLLIN)
        self._next_check = 0.0

    # -- facts ------------------------------------------------------------------------------------------

    def fileno(self) -> int:
        with self._lock:
            self._live()
            self._exposed = True
            self._update_track()
            self._refresh()
            return self._ready.fileno()

    def extra(self) -> dict[str, Any]:
        with self._lock:
            sock = self._live()
            self._drain_monitor()
        return {"zmq_socket": sock, "zmq_type": zmq.SocketType(int(sock.type)).name, "peers": self._peers,
                "last_endpoint": _last_endpoint(sock)}

    def _live(self) -> zmq.Socket[Any]:
        if self._sock is None:
            raise HandleClosed(f"{self._endpoint} is closed")
        return self._sock

    # -- events -----------------------------------------------------------------------------------------

    def _drain_monitor(self) -> None:
        mon = self._mon
        assert mon is not None
        while _events(mon) & _IN:  # cheaper than a receive that fails (a pyzmq exception)
            e = recv_monitor_message(mon, zmq.NOBLOCK)["event"]
            if e == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._peers += 1
                self._had_peer = True
                self._vanished = False
            elif e == zmq.EVENT_DISCONNECTED and self._had_peer:
                self._peers = max(0, self._peers - 1)
                if self._peers == 0:
                    self._vanished = True
        self._update_state()

    def _update_state(self) -> None:
        """Fold the socket, the end of stream and a pair's vanished peer into ``_f.state``."""
        if self._sock is None or self._eof:
            self._f.state = _ENDED
        else:
            self._f.state = _VANISHED if self._pair and self._vanished else _OPEN

    def _end(self, sock: zmq.Socket[Any]) -> None:
        """The peer's end-of-stream frame arrived (lock held): answer it, and end the stream here."""
        self._eof = True
        self._f.state = _ENDED
        self._answer_bye(sock)

    def _end_fast(self) -> None:
        """_native.ZmqFast's try_recv took the peer's end-of-stream frame (lock held)."""
        sock = self._sock
        assert sock is not None
        self._end(sock)

    def _count_waiter(self, n: int) -> None:
        self._waiters += n
        self._update_track()

    def _count_sender(self, n: int) -> None:
        self._senders += n
        self._update_track()

    def _update_track(self) -> None:
        """Every operation keeps the eventfd exact (``_f.track``) while fileno() is out or a thread waits."""
        self._f.track = self._exposed or self._waiters > 0 or self._senders > 0

    def _refresh(self) -> None:
        """After an operation (lock held): the eventfd says whether a message is ready, for select()
        users and waiting threads (ZeroMQ's own FD is edge-triggered: an operation may consume its
        signal while a message stays queued)."""
        sock = self._sock
        if sock is not None:
            self._flag(_events(sock))

    def _flag(self, ev: int) -> None:
        """Set the eventfds from ZMQ_EVENTS just read (lock held)."""
        self._ready.update(bool(ev & _IN) or self._eof)
        if self._senders:
            self._room.update(bool(ev & _OUT))

    def _events(self, sock: zmq.Socket[Any]) -> int:
        """ZMQ_EVENTS (lock held).  Reading it may consume the signal of ZeroMQ's FD that another
        thread sleeps on, so while one does, the eventfds it also sleeps on are set from it."""
        ev = _events(sock)
        if self._f.track:
            self._flag(ev)
        return ev

    def _after(self) -> None:
        if self._f.track:
            self._refresh()

    def _sleep(self, poller: Any, deadline: float | None) -> list[tuple[int, int]]:
        """Wait outside the lock, at most one slice, for something to change; what woke it.  A poll
        object serves one thread at a time: while another thread of this handle sleeps on it (close()
        saying goodbye while a receive waits), this one naps briefly instead and looks again."""
        left = remaining(deadline)
        ms = _SLICE_MS if left is None else min(_SLICE_MS, max(1, int(left * 1000)))
        try:
            return poller.poll(ms)  # type: ignore[no-any-return]
        except RuntimeError:  # "concurrent poll() invocation"
            time.sleep(min(ms, _BUSY_NAP_MS) / 1000)
            return []

    def _wait_message(self, deadline: float | None) -> bool:
        """Whether a message (or the end, or a pair's vanished peer) is ready, waiting until
        ``deadline``.  The monitor is read at most every _CHECK_S: between, a waiter whose monitor FD
        stays readable may wake early, never late."""
        while True:
            with self._lock:
                sock = self._live()
                ready = self._eof or bool(self._events(sock) & _IN)
                self._ready.update(ready)
                if ready or (self._peer_gone() and self._pair):
                    return True
                if remaining(deadline) == 0:
                    return False
                self._count_waiter(1)
            self._nap(deadline)

    def fast_path(self) -> tuple[Any, Any]:
        """``(try_send, try_recv)`` for Channel's fast path: one ZeroMQ call each that never blocks and
        gives up (False / None, nothing sent or taken) when the socket would block, the peer is gone or
        the stream ended, so that the general path waits and reports.

        Where pyzmq's libzmq was found they are _native.ZmqFast's (libzmq called from C, see zmqfast.c);
        otherwise they call pyzmq's compiled send and recv directly and read one state int
        (``_f.state``); a pair's sends read the monitor (a vanished peer) once every _CHECK_EVERY sends,
        and ZMQ_EVENTS is read only when the descriptor of fileno() must stay exact (``_f.track``) or when
        the last receive found nothing.  A message from _ZERO_COPY_FROM bytes on is received as a ZeroMQ
        frame (copied once, into the bytes returned, in C and in Python alike)."""
        if self._topic is not None:
            return None, None
        fast = self._fast
        if fast is not None:
            return (fast.try_send if self._can_send else None), (fast.try_recv if self._can_recv else None)
        f = self._f
        sock = self._live()
        send, recv = _SEND.__get__(sock), _RECV.__get__(sock)
        events = self._events
        noblock, limit, big, pack, magic = _NOBLOCK, self._send_limit(), _ZERO_COPY_FROM, _pack_header, _MAGIC
        # lock.acquire()/release() around try/finally, not ``with lock``: half the price per call
        acquire, release, pair, mask, zmq_error = self._lock.acquire, self._lock.release, self._pair, \
            _CHECK_EVERY - 1, zmq.ZMQError
        unpack, size = _unpack_header, HEADER_SIZE
        # The header of the last message sent, by its size and serializer id (a stream of messages of
        # one size packs it once); the sends since the monitor was last read.
        head_n = head_sid = -1
        head = b""
        sent = 0

        def try_send(data: Any, sid: int = 0) -> bool:
            nonlocal head_n, head_sid, head, sent
            n = len(data) if data.__class__ is bytes else memoryview(data).nbytes
            if n > limit:
                return False
            if n != head_n or sid != head_sid:
                head, head_n, head_sid = pack(magic, sid, 0, n), n, sid
            acquire()
            try:
                if f.state:
                    return False
                try:
                    if n < big:
                        send(head + data, noblock)
                    else:  # one copy to put the header in front, none into ZeroMQ
                        send(b"".join((head, data)), noblock, False)
                except zmq_error:
                    return False
                if pair:
                    sent += 1
                    if not sent & mask:
                        self._drain_monitor()
                if f.track:
                    self._refresh()
            finally:
                release()
            return True

        # The last try found a message: try the next one directly (a failed receive costs a pyzmq
        # exception, several times a ZMQ_EVENTS read); else ask ZMQ_EVENTS first, unless the general
        # path's last receive had to wait (a ping-pong): then it reads ZMQ_EVENTS itself, so do not.
        hot = False

        def try_recv() -> bytes | None:
            nonlocal hot
            acquire()
            try:
                if f.state == _ENDED:
                    return None
                if not hot:
                    if f.cold or not events(sock) & _IN:
                        return None
                    hot = True
                try:
                    data = recv(noblock, not self._big_rx)
                except zmq_error:
                    hot = False
                    return None
                if f.track:
                    self._refresh()
                n = len(data)
                if not n and pair:
                    self._end(sock)  # the peer's close: let the general path say so
                    return None
            finally:
                release()
            if n < big and data.__class__ is bytes and n >= size:  # the common case, inline
                m, _sid, flags, length = unpack(data)
                if m == magic and not flags and length == n - size:
                    return data[size:]
            return self._payload(data)

        return (try_send if self._can_send else None), (try_recv if self._can_recv else None)

    def fast_batches(self) -> tuple[Any, Any]:
        """``(try_send_many, None)`` for Channel.send_many() (and the relay): the messages that go out
        without blocking, under one hold of the lock, with one monitor and ZMQ_EVENTS check per batch.
        No batch receive: ZeroMQ cannot put back a message of another serializer."""
        if self._topic is not None or not self._can_send:
            return None, None
        send = _SEND.__get__(self._live())
        noblock, limit, big, pack, magic = _NOBLOCK, self._send_limit(), _ZERO_COPY_FROM, _pack_header, _MAGIC
        lock, pair, mask, zmq_error = self._lock, self._pair, _CHECK_EVERY - 1, zmq.ZMQError

        def try_send_many(payloads: Any, sid: int = 0) -> int:
            sent = 0
            with lock:
                if self._f.state:
                    return 0
                for data in payloads:
                    n = len(data) if data.__class__ is bytes else memoryview(data).nbytes
                    if n > limit:
                        break
                    try:
                        if n < big:
                            send(pack(magic, sid, 0, n) + data, noblock)
                        else:
                            send(b"".join((pack(magic, sid, 0, n), data)), noblock, False)
                    except zmq_error:
                        break
                    sent += 1
                if pair and sent:
                    k = self._sent
                    self._sent = k + sent
                    if (k & ~mask) != (self._sent & ~mask):  # passed a multiple of _CHECK_EVERY
                        self._drain_monitor()
                if self._f.track:
                    self._refresh()
            return sent

        return try_send_many, None

    def _payload(self, data: Any) -> bytes:
        """The payload of one received message (bytes, or a ZeroMQ frame) as bytes; ProtocolError for a
        malformed one.  Switches the next receive to a frame (or back) by this message's size."""
        if data.__class__ is bytes:
            n = len(data)
            if n >= _ZERO_COPY_FROM:
                self._big_rx = True
            if n >= HEADER_SIZE:
                m, _sid, flags, length = _unpack_header(data)
                if m == _MAGIC and not flags and length == n - HEADER_SIZE:
                    return data[HEADER_SIZE:]
            return unframe(data).payload.tobytes()  # raises the ProtocolError that says what is wrong
        buf = data.buffer
        if len(buf) < _ZERO_COPY_FROM:
            self._big_rx = False
        return unframe(buf).payload.tobytes()

    def _send_limit(self) -> int:
        return int(self._endpoint.options.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE))

    def _peer_gone(self) -> bool:
        """A pair's peer vanished, from the monitor read at most every _CHECK_S (lock held)."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + _CHECK_S
            self._drain_monitor()
        return self._vanished

    def wait_readable(self, deadline: float | None) -> bool:
        if not self._can_recv:
            raise self._unsupported("receive")
        return self._wait_message(deadline)

    # -- data -------------------------------------------------------------------------------------------

    def send_message(self, sid: int, payload: memoryview, deadline: float | None, *,
                     topic: str | bytes | None = None) -> None:
        """Send one message (one frame: ipcraft's header and the payload; a publisher's topic frame
        first), waiting for room until ``deadline``; Timeout with nothing sent."""
        if topic is not None and self._topic is None:
            raise TypeError(f"{self._endpoint}: topic= is for publishers only")
        head = self._topic if topic is None else (topic.encode() if isinstance(topic, str) else bytes(topic))
        self._send_raw(b"".join(framed(sid, payload)), head, deadline)

    def _send_raw(self, data: bytes, head: bytes | None, deadline: float | None) -> None:
        if not self._can_send:
            raise self._unsupported("send")
        copy = len(data) < _ZERO_COPY_FROM
        while True:
            with self._lock:
                sock = self._live()
                if self._pair and self._eof:
                    raise ChannelClosed(f"sending to {self._endpoint}: the peer closed")
                if self._pair and self._peer_gone():
                    raise self._gone("sending to")
                try:
                    if head is not None:
                        sock.send_multipart((head, data), _NOBLOCK, copy=copy)
                    else:
                        sock.send(data, _NOBLOCK, copy=copy)
                    self._after()
                    return
                except zmq.Again:
                    pass
                except zmq.ZMQError as exc:
                    raise os_error(exc.errno or errno.EIO, f"sending to {self._endpoint}") from exc
                self._drain_monitor()
                if self._ended(zmq.POLLOUT):
                    raise self._gone("sending to")
                if remaining(deadline) == 0:
                    raise Timeout(f"sending to {self._endpoint}: no room (the peer's high-water mark, or no "
                                  "peer connected) before the timeout; nothing was sent")
                self._count_sender(1)
                self._refresh()  # _room now says whether room came since the send failed
            self._nap(deadline, sending=True)

    def recv_message(self, deadline: float | None) -> Message:
        """Receive one message (ChannelClosed at a pair's end of stream, PeerVanished when the peer
        dropped); a frame without ipcraft's header is a ProtocolError, and the port stays usable.

        One thread's blocking receive of a small message goes through _native.ZmqFast.wait_recv (a
        message now, or one slice of sleep in C and the message that woke it) when nothing needs the
        general path: a topic, a large message last (a ZeroMQ frame then saves a copy), the monitor
        due (_peer_gone), a timeout already over; whatever it leaves (None) the general path does."""
        fast = self._fast
        if fast is not None and self._topic is None and not self._big_rx and self._can_recv:
            now = time.monotonic()
            if now < self._next_check:
                if deadline is None:
                    ms = _SLICE_MS
                else:
                    left = deadline - now
                    ms = min(_SLICE_MS, int(left * 1000) + 1) if left > 0 else -1
                if ms >= 0:
                    got = fast.wait_recv(ms, self._zmq_fd, self._ready.efd, self._mon_fd)
                    if got.__class__ is tuple:
                        sid, payload = got
                        self._big_rx = len(payload) >= _ZERO_COPY_FROM
                        return Message(sid, memoryview(payload), self.last_meta)
                    if got is not None:
                        return unframe(got, self.last_meta)  # a malformed frame: its ProtocolError
        return unframe(self._recv_raw(deadline), self.last_meta)

    def _recv_raw(self, deadline: float | None) -> bytes | memoryview:
        """The next message whole: bytes, or (after a large one) the buffer of a ZeroMQ frame."""
        if not self._can_recv:
            raise self._unsupported("receive")
        napped = direct = False
        while True:
            with self._lock:
                sock = self._live()
                if self._eof:
                    raise ChannelClosed(f"the peer closed {self._endpoint}")
                # Woken by ZeroMQ's FD alone, a message has most likely come: receive it at once (the
                # receive processes ZeroMQ's commands as a ZMQ_EVENTS read would, at a round trip's
                # cost of several microseconds); otherwise take one only when ZMQ_EVENTS says it is there.
                if direct or self._events(sock) & _IN:
                    data: bytes | memoryview | None
                    try:
                        if self._topic is not None:
                            topic, data = sock.recv_multipart(zmq.NOBLOCK)[-2:]
                            self.last_meta = {"topic": topic}
                        elif self._big_rx:
                            data = sock.recv(_NOBLOCK, copy=False).buffer
                            self._big_rx = len(data) >= _ZERO_COPY_FROM
                        else:
                            data = sock.recv(_NOBLOCK)
                            self._big_rx = len(data) >= _ZERO_COPY_FROM
                    except zmq.Again:
                        data = None  # (only when direct) nothing after all: ZeroMQ's FD is valid again
                    except zmq.ZMQError as exc:
                        raise os_error(exc.errno or errno.EIO, f"receiving from {self._endpoint}") from exc
                    finally:
                        self._after()
                    if data is not None:
                        if not len(data) and self._pair:
                            self._end(sock)
                            raise ChannelClosed(f"the peer closed {self._endpoint}")
                        self._f.cold = napped
                        return data
                self._ready.update(False)  # nothing is ready: clear a stale signal before sleeping on it
                if self._peer_gone() and self._pair:  # reads the monitor (every kind must drain it)
                    raise self._gone("receiving from")
                if remaining(deadline) == 0:
                    raise Timeout(f"receiving from {self._endpoint}: nothing arrived before the timeout")
                self._count_waiter(1)
            direct = self._nap(deadline) and self._topic is None
            napped = True

    def _nap(self, deadline: float | None, sending: bool = False) -> bool:
        """Sleep (the caller counted itself in _waiters, or in _senders when ``sending``) until
        something may have changed; whether ZeroMQ's FD alone woke it."""
        poller, count = (self._outbox, self._count_sender) if sending else (self._inbox, self._count_waiter)
        try:
            woke = self._sleep(poller, deadline)
        finally:
            with self._lock:
                count(-1)
        if len(woke) == 1 and woke[0][0] == self._zmq_fd:
            return True
        if any(fd == self._mon_fd for fd, _ in woke):
            self._next_check = 0.0  # the monitor has news: read it now
        return False

    @staticmethod
    def _answer_bye(sock: zmq.Socket[Any]) -> None:
        try:
            sock.send(_BYE, zmq.NOBLOCK)  # the peer's close() waits for this answer
        except zmq.ZMQError:
            pass

    def _ended(self, event: int) -> bool:
        """Whether waiting for ``event`` is pointless: a pair's peer is gone, or every receiver of a
        sending socket left (a receiving queue has no end: a sender may come later)."""
        return self._vanished and (self._pair or event == zmq.POLLOUT)

    def _gone(self, doing: str) -> PeerVanished:
        return PeerVanished(f"{doing} {self._endpoint}: the peer's connection dropped without closing "
                            "(it died, or missed its heartbeats)")

    def _unsupported(self, verb: str) -> Exception:
        import io

        role = "sends" if self._can_send else "receives"
        return io.UnsupportedOperation(f"cannot {verb} on this handle of {self._endpoint}: it only {role}")

    # -- end ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket (a pair first says goodbye, see _goodbye); a thread waiting on it gets
        HandleClosed.  In a forked child, only this process's descriptors are closed."""
        if self._sock is None:
            return
        if os.getpid() != self._pid:
            self._sock = self._mon = None
            self._f.state = _ENDED
            self._ready.close()
            self._room.close()
            return  # a forked child's copy: the parent's context and sockets are not ours to touch
        linger = _CLOSE_LINGER_MS if self._can_send else 0  # deliver what is queued, up to a second
        # (no goodbye from a pair that never had a peer: a listener's for a client that went away
        # would wait ``linger=`` seconds for an answer before accept() serves the next client)
        if self._pair and self._had_peer and not self._eof and not self._vanished and self._goodbye():
            linger = 0  # the peer received everything
        with self._lock:
            sock, self._sock = self._sock, None
            self._f.state = _ENDED
            if sock is None:
                return
            mon, self._mon = self._mon, None
            self._ready.close()
            self._room.close()
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            if mon is not None:
                mon.close(0)
            sock.close(linger)
        _remove_ipc_file(self._ipc_file)
        self._ctx.release()

    def _goodbye(self) -> bool:
        """Send the end-of-stream frame and wait (up to ``linger=`` seconds) for the peer's, which it
        sends when it reads ours, or sends first when it closes too: then the peer has received every
        message sent before, even if this process exits at once.  Messages still arriving are discarded."""
        deadline = deadline_after(self._endpoint.options.get("linger", _DEFAULT_LINGER))
        try:
            self._send_raw(_BYE, None, deadline)
            while True:
                self._recv_raw(deadline)
        except ChannelClosed as exc:
            return not isinstance(exc, PeerVanished)
        except (Timeout, OSError):
            return False


def _await_handshake(t: ZmqTransport, deadline: float | None, what: str) -> None:
    """Wait for ZeroMQ's handshake on ``t``'s connection: AuthenticationError if the peer refused."""
    run(_handshake_steps(t, deadline, what))


def _handshake_steps(t: ZmqTransport, deadline: float | None, what: str) -> Steps[None]:
    """:func:`_await_handshake` as resumable steps: the events the monitor has, then a wait on its FD
    (edge-triggered, so it is waited on only after ZMQ_EVENTS said nothing is left)."""
    mon = t._mon
    assert mon is not None
    while True:
        while _events(mon) & _IN:
            e = recv_monitor_message(mon, zmq.NOBLOCK)["event"]
            if e == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                t._peers += 1
                t._had_peer = True
                return
            if e & _AUTH_FAILED:
                raise AuthenticationError(f"{what}: the peer refused the CURVE handshake (wrong keys, or "
                                          "this key is not among those it admits)")
        if not (yield (t._mon_fd, POLLIN, deadline)) and not _events(mon) & _IN:
            raise Timeout(f"{what}: no ZeroMQ handshake before the timeout (nobody listening, or a "
                          "firewall)")


def _handshake_deadline(endpoint: Endpoint, deadline: float | None) -> float | None:
    hs = deadline_after(endpoint.options.get("handshake_timeout", _DEFAULT_HANDSHAKE_TIMEOUT))
    return hs if deadline is None else min(deadline, hs) if hs is not None else deadline


def _open(kind: int, endpoint: Endpoint, bind: bool, ctx: _Context | None = None, **kw: Any) -> ZmqTransport:
    """A transport over a new ``kind`` socket bound to or connected to ``endpoint``, in ``ctx`` or a
    context of its own (the monitor is attached first, so no handshake event is missed)."""
    security = _Security(endpoint, server=bind)
    own = ctx is None
    ctx = _context_for(security) if ctx is None else ctx
    try:
        sock = _new_socket(kind, endpoint, security, ctx)
        try:
            if kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, kw["topic"])
            t = ZmqTransport(sock, endpoint, ctx, **kw)
        except BaseException:
            sock.close(0)
            raise
    except BaseException:
        if own:
            ctx.acquire().release()  # terminates it
        raise
    try:
        if bind:
            bound = _bind(sock, _zmq_url(endpoint), endpoint)
            t._ipc_file = _ipc_file(bound)
            t.endpoint = _endpoint_of(endpoint, bound)  # type: ignore[attr-defined]
        else:
            if kind == zmq.PUSH:  # deal only to completed connections, never to a receiver that left
                sock.immediate = True  # (not on PAIR: a dropped connection would lose what it received)
            try:
                sock.connect(_zmq_url(endpoint))
            except zmq.ZMQError as exc:
                raise os_error(exc.errno or errno.EIO, f"connecting to {endpoint}", endpoint.address) from exc
    except BaseException:
        t.close()
        raise
    return t


# -- the facade's entry points -----------------------------------------------------------------------------

def open_queue(endpoint: Endpoint, create: bool | str) -> Transport:
    """A PUSH or PULL socket: the creator binds (PULL unless role=push), openers connect."""
    bind = create is not False
    role = endpoint.options.get("role") or ("pull" if bind else "push")
    return _open(zmq.PULL if role == "pull" else zmq.PUSH, endpoint, bind)


def open_publisher(endpoint: Endpoint, bind: bool = True) -> ZmqTransport:
    """A PUB socket; each message carries the topic (``topic=``, default empty) in a first frame."""
    return _open(zmq.PUB, endpoint, bind, topic=_topic(endpoint))


def open_subscriber(endpoint: Endpoint, bind: bool = False) -> ZmqTransport:
    """A SUB socket subscribed to the topics that start with ``topic=`` (default: every topic)."""
    return _open(zmq.SUB, endpoint, bind, topic=_topic(endpoint))


def _topic(endpoint: Endpoint) -> bytes:
    return str(endpoint.options.get("topic", "")).encode()


class ZmqPublisherPort:
    """The port behind ``ipcraft.publish("zmq+tcp://...")``: a PUB socket, bound unless create=False.

    ZeroMQ drops a message for a subscriber whose queue is at its high-water mark (``hwm=``) and for
    one that has not finished subscribing yet; nothing counts those losses.  No zero copy.
    """

    def __init__(self, endpoint: Endpoint, create: bool | str = True) -> None:
        self._t = open_publisher(endpoint, create is not False)
        self.endpoint: Endpoint = getattr(self._t, "endpoint", endpoint)
        self.authenticated = self._t.authenticated
        self.max_payload = endpoint.options.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE) + HEADER_SIZE
        self.limit_source = "this publisher's max_message_size"

    #: Per-message options Publisher.send passes through: the topic frame in front of the message.
    send_options = frozenset({"topic"})

    def send(self, sid: int, payload: Any, deadline: float | None, **extra: Any) -> None:
        self._t.send_message(sid, memoryview(payload).cast("B"), deadline, **extra)

    def reserve(self, n: int, deadline: float | None) -> memoryview:
        raise NotImplementedError(f"{self.endpoint}: ZeroMQ cannot lend its buffers; use send_bytes")

    def commit(self) -> None:
        raise NotImplementedError(f"{self.endpoint}: ZeroMQ cannot lend its buffers")

    def abort(self) -> None:
        raise NotImplementedError(f"{self.endpoint}: ZeroMQ cannot lend its buffers")

    def extra(self) -> dict[str, Any]:
        return self._t.extra()

    def close(self) -> None:
        self._t.close()


class ZmqSubscriberPort:
    """The port behind ``ipcraft.subscribe("zmq+tcp://...?topic=prefix")``: a SUB socket, connected
    unless create is true.  ZeroMQ has no end of stream here (a publisher may come back), so recv
    waits until a message or its timeout; ``missed`` stays 0 because ZeroMQ does not report drops."""

    missed = 0

    def __init__(self, endpoint: Endpoint, create: bool | str = False) -> None:
        self._t = open_subscriber(endpoint, create is not False)
        self.endpoint: Endpoint = getattr(self._t, "endpoint", endpoint)
        self.authenticated = self._t.authenticated

    @property
    def last_meta(self) -> dict[str, Any]:
        return self._t.last_meta

    def recv(self, deadline: float | None) -> memoryview:
        return memoryview(self._t._recv_raw(deadline))

    def peek(self, deadline: float | None) -> tuple[memoryview, int]:
        raise NotImplementedError(f"{self.endpoint}: ZeroMQ cannot lend its buffers; use recv_bytes_into")

    def consume(self) -> None:
        raise NotImplementedError(f"{self.endpoint}: ZeroMQ cannot lend its buffers")

    def latest(self, deadline: float | None) -> memoryview:
        raise NotImplementedError(f"{self.endpoint}: ZeroMQ keeps no last message; use recv")

    def wait_readable(self, deadline: float | None) -> bool:
        return self._t.wait_readable(deadline)

    def fileno(self) -> int:
        return self._t.fileno()

    def extra(self) -> dict[str, Any]:
        return self._t.extra()

    def close(self) -> None:
        self._t.close()


def connect(endpoint: Endpoint, deadline: float | None) -> Transport:
    """Ask the listener for a PAIR socket of our own, connect to it, and wait for the handshake."""
    return run(connect_steps(endpoint, deadline))


def connect_steps(endpoint: Endpoint, deadline: float | None) -> Steps[Transport]:
    """:func:`connect` in the resumable-steps form the facade drives (see _transports._sockets): every
    ZeroMQ call is non-blocking, and each wait is yielded (the monitor's FD for a handshake, the
    DEALER's for the listener's answer), so ipcraft.aio connects without a thread or a blocked loop."""
    what = f"connecting to {endpoint}"
    hs = _handshake_deadline(endpoint, deadline)
    ctx = _context_for(_Security(endpoint, server=False)).acquire()  # one for the question and the pair
    try:
        return (yield from _connect(endpoint, ctx, hs, what))
    finally:
        ctx.release()


def _connect(endpoint: Endpoint, ctx: _Context, hs: float | None, what: str) -> Steps[Transport]:
    ask = _open(zmq.DEALER, endpoint, False, ctx)
    try:
        yield from _handshake_steps(ask, hs, what)
        sock = ask._live()
        sock.send(HELLO, zmq.NOBLOCK)  # cannot block: the connection is up and its queue empty
        fd = int(sock.getsockopt(zmq.FD))
        while not _events(sock) & _IN:
            if not (yield (fd, POLLIN, hs)) and not _events(sock) & _IN:
                raise Timeout(f"{what}: the listener did not answer before the timeout")
        reply = sock.recv_multipart(zmq.NOBLOCK)
    finally:
        ask.close()
    if len(reply) != 2 or reply[0] != b"ok":
        raise AuthenticationError(f"{what}: the listener refused ({reply[:1]!r})")
    where = reply[1].decode()
    if endpoint.scheme == "zmq+ipc":
        target = Endpoint(endpoint.scheme, where, endpoint.options)
    else:
        target = Endpoint(endpoint.scheme, f"{endpoint.address.rpartition(':')[0]}:{int(where)}",
                          endpoint.options)
    t = _open(zmq.PAIR, target, False, ctx, pair=True, peer=Peer(address=endpoint.address))
    try:
        yield from _handshake_steps(t, hs, what)
    except BaseException:
        t.close()
        raise
    t._endpoint = endpoint
    return t


class ZmqListener:
    """A ROUTER that hands each client its own PAIR socket (see the module docstring).

    ``refused`` counts clients the CURVE check turned away.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self._security = _Security(endpoint, server=True)
        self._ctx = _context_for(self._security).acquire()  # shared with the accepted channels
        try:
            sock = _new_socket(zmq.ROUTER, endpoint, self._security, self._ctx)
            try:
                self._bound = _bind(sock, _zmq_url(endpoint), endpoint)
                self._ipc_file = _ipc_file(self._bound)
                self._ready = _Readiness(sock)
            except BaseException:
                sock.close(0)
                raise
        except BaseException:
            self._ctx.release()
            raise
        self._sock: zmq.Socket[Any] | None = sock
        self._pid = os.getpid()
        self._n = 0
        self.endpoint = _endpoint_of(endpoint, self._bound)

    @property
    def refused(self) -> int:
        return self._ctx.refused

    def next_deadline(self) -> float | None:
        """No handshake of ours is pending between accepts (ZeroMQ runs its own), so nothing expires."""
        return None

    def fileno(self) -> int:
        return self._ready.fileno()

    def accept(self, deadline: float | None) -> Transport:
        """The next client, once its PAIR connection completed ZeroMQ's handshake."""
        sock = self._sock
        if sock is None:
            raise HandleClosed(f"{self.endpoint} is closed")
        while True:
            left = remaining(deadline)
            ready = sock.poll(None if left is None else int(left * 1000))
            self._ready.update(bool(_events(sock) & _IN))
            if not ready:
                raise Timeout(f"accepting on {self.endpoint}: no client before the timeout")
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            self._ready.update(bool(_events(sock) & _IN))
            if len(frames) != 2 or frames[1].bytes != HELLO:
                continue  # not an ipcraft client: ignore it
            rid = frames[0].bytes
            try:
                address = frames[1].get("Peer-Address")
            except zmq.ZMQError:
                address = None
            t = self._serve(rid, address, deadline)
            if t is not None:
                return t

    def _serve(self, rid: bytes, address: Any, deadline: float | None) -> Transport | None:
        ep = self.endpoint
        if ep.scheme == "zmq+ipc":
            self._n += 1
            per_peer = Endpoint(ep.scheme, f"{ep.address}.{self._n}", ep.options)
        else:
            per_peer = Endpoint(ep.scheme, f"{ep.address.rpartition(':')[0]}:0", ep.options)
        t = _open(zmq.PAIR, per_peer, True, self._ctx, pair=True, peer=Peer(address=address))
        try:
            bound = _last_endpoint(t._live())
            where = bound[len("ipc://"):] if ep.scheme == "zmq+ipc" else bound.rpartition(":")[2]
            assert self._sock is not None
            self._sock.send_multipart((rid, b"ok", where.encode()))
            _await_handshake(t, _handshake_deadline(ep, None), f"accepting on {ep}")
        except (Timeout, AuthenticationError):
            t.close()
            return None  # the client went away between asking and connecting: serve the next one
        except BaseException:
            t.close()
            raise
        t._endpoint = ep
        return t

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._ready.close()
        if os.getpid() == self._pid:
            sock.close(0)
            _remove_ipc_file(self._ipc_file)
            self._ctx.release()


def listen(endpoint: Endpoint) -> ZmqListener:
    return ZmqListener(endpoint)

