"""shm://name: two shared-memory rings per connection, handed over a Unix-socket rendezvous.

Decisions:

* **memfd + a rendezvous, not named segments.**  ``listen("shm://name")`` binds the abstract Unix
  socket ``@ipcraft-shm.<name>`` (through unix.py, so peer credentials are checked both ways).  For
  each client it creates one anonymous memfd holding two rings (client->server, server->client) and
  four eventfds (data and room for each ring), and passes them with SCM_RIGHTS.  Nothing is ever
  named in /dev/shm or on the file system, and an abstract name vanishes with its socket, so nothing
  is left behind even after kill -9 of either side: the memory is freed when the last mapping goes.
* **The memfd is sealed** (no shrink, no grow, no new seals) before it is passed, and the client
  checks the seals, so neither side can truncate the mapping under the other (a SIGBUS).
* **Liveness, with the semantics of a socket.**  The rendezvous socket stays open for the life of the
  channel and is the rings' *watch* descriptor (see _rings/spsc.py): it hangs up when the last copy of the
  peer's socket closes, whichever process held it, so a waiting side notices a dead peer within about
  a millisecond and raises PeerVanished.  A clean close() sets the rings' closed flags, so the peer
  gets ChannelClosed instead, after the messages still in the ring.  A sender whose peer died
  succeeds while the ring has room (as a socket's send buffer would) and raises PeerVanished once it
  would have to wait.  No pidfd: a forked child may legitimately carry on with an end its parent
  created, as with any file descriptor.
* **fork() copies an end, so close() counts.**  Closing a copy must not end the channel for the
  other copies (the usual pattern: create a pair, fork, each process closes the end it does not
  use).  Each end keeps a count of the processes holding it in its outgoing ring's header
  (``OFF_HANDLES``), raised by an os.register_at_fork hook before each fork; only the close() that takes
  it to zero sets the closed flags.  A copy that is never closed (a child that ends with os._exit)
  keeps the count up, and the peer then sees PeerVanished (a ChannelClosed) instead of a plain
  ChannelClosed when the last socket copy goes.
* **Capacity** is the client's ``capacity=`` if given, else the listener's, else 4 MiB per direction,
  rounded up to a power of two.  A message may use half a ring; a larger one is MessageTooLarge
  naming the capacity (see _rings/spsc.py for why not streaming).  ``wait=`` is each side's own choice.

* **One shared region for large replies** (handshake version 2).  After the two rings the memfd holds
  a region of half a ring, which either side may claim for one message at a time: a large reply goes
  there, so a request and its reply land in the same memory (see _rings/spsc.py).  A client of
  version 1 (such as an older C peer) gets the memfd without it; the server answers in the client's
  version.

Handshake on the rendezvous socket, after unix.py's credential verdict::

    client -> server   REQUEST  <8sIQ   b"IPCSHM\\x00\\x01", version 2 (or 1), requested capacity (0:
                                        the server's)
    server -> client   OFFER    <8sIQ   same magic, the client's version, capacity; SCM_RIGHTS: memfd,
                                        then the eventfds c2s-data, c2s-room, s2c-data, s2c-room
    client -> server   ACK      1 byte  0x01 once it has mapped and validated both rings (and the region)
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import socket
import stat
import struct
import weakref
from collections.abc import Sequence
from typing import Any

from .. import _framing, _native
from .._endpoint import Endpoint
from .._errors import os_error
from .._rings.spsc import (
    OFF_HANDLES,
    REC_HEADER,
    SpscPort,
    check_ring,
    check_shared,
    format_ring,
    format_shared,
    max_payload,
    ring_size,
    round_capacity,
    shared_size,
)
from ..errors import HandleClosed, InvalidEndpoint, ProtocolError
from . import unix
from ._contract import Message, NativeLend, Transport, TryRecv, TryRecvInto, TryRecvMany, TrySend, TrySendMany
from ._sockets import SocketListener, Steps, close_fds, handshake_deadline, recv_exact, run, send_all

DEFAULT_CAPACITY = 4 * 1024 * 1024
_HELLO = struct.Struct("<8sIQ")
_MAGIC = b"IPCSHM\x00\x01"
_VERSION = 2  # 2: the memfd ends with a shared region for large replies; 1 (still served): without
_VERSIONS = (1, 2)
_ACK = b"\x01"
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def _rendezvous(endpoint: Endpoint) -> Endpoint:
    keep = {k: v for k, v in endpoint.options.items()
            if k in ("allowed_uids", "backlog", "handshake_timeout")}
    return Endpoint("unix", f"@ipcraft-shm.{endpoint.address}", keep)


class ShmTransport(Transport):
    """One end of an shm:// connection: a producer port on one ring, a consumer port on the other."""

    def __init__(self, sock: socket.socket, mm: mmap.mmap, capacity: int, server: bool,
                 efds: Sequence[int], endpoint: Endpoint, peer: Any, version: int = _VERSION) -> None:
        self._sock: socket.socket | None = sock
        self._mm: mmap.mmap | None = mm
        self._fds = list(efds)
        self.memfd = -1  # the server's memfd until the handshake has passed it
        self._what = f"{endpoint} ({'server' if server else 'client'} side)"
        self.peer = peer
        self.authenticated = True  # the kernel vouched for the peer's uid and the policy accepted it
        self.capacity = capacity
        self.spin = endpoint.options.get("wait", "block") == "spin"
        watch = (sock.fileno(),)
        c2s_data, c2s_room, s2c_data, s2c_room = efds
        c2s, s2c = 0, ring_size(capacity)
        tx_off, rx_off = (s2c, c2s) if server else (c2s, s2c)
        tx_data, tx_room, rx_data, rx_room = ((s2c_data, s2c_room, c2s_data, c2s_room) if server
                                              else (c2s_data, c2s_room, s2c_data, s2c_room))
        max_message = endpoint.options.get("max_message_size", _framing.DEFAULT_MAX_MESSAGE_SIZE)
        self.max_payload = max_payload(capacity) + REC_HEADER
        self.limit_source = (f"half the {capacity}-byte shm:// ring, less its 8-byte header; pass "
                             "capacity= to connect() or listen() for larger messages")
        self.tx = SpscPort(mm, tx_off, producer=True, what=self._what, signal_fd=tx_data, wait_fd=tx_room,
                           watch_fds=watch, spin=self.spin, limit=min(max_message, max_payload(capacity)),
                           limit_source=self.limit_source)
        self.rx = SpscPort(mm, rx_off, producer=False, what=self._what, signal_fd=rx_room,
                           wait_fd=rx_data, watch_fds=watch, spin=self.spin, limit=max_message,
                           limit_source="this channel's max_message_size")
        self.tx.native.pair(self.rx.native)  # on a busy machine a large reply goes to the ring's front
        self.version = version
        if version >= 2:  # a large reply goes through the region the request has just left
            self.tx.native.share(2 * ring_size(capacity), 2 if server else 1)
            self.rx.native.share(2 * ring_size(capacity))
        self._handles = tx_off + OFF_HANDLES
        _native.atomic_add_u64(mm, self._handles, 1)
        _OPEN.add(self)

    # -- the channel's fast path and zero copy -----------------------------------------------------

    def fast_path(self) -> tuple[TrySend, TryRecv]:
        """``(try_send(data, sid=0) -> bool, try_recv() -> bytes | None)`` for Channel's fast path."""
        return self.tx.native.try_send, self.rx.native.try_recv

    def fast_batches(self) -> tuple[TrySendMany, TryRecvMany]:
        """``(try_send_many, try_recv_many)`` for Channel.send_many()/recv_many() (see _native.SpscPort)."""
        return self.tx.native.try_send_many, self.rx.native.try_recv_many

    def fast_recv_into(self) -> tuple[TryRecvInto, int]:
        """``(try_recv_into, limit)`` for Channel.recv_bytes_into(): one copy from the ring into the
        caller's buffer (see _native.SpscPort.try_recv_into)."""
        return self.rx.native.try_recv_into, self.rx.limit

    def peek(self, deadline: float | None) -> tuple[memoryview, int]:
        """Show the next record in place (Channel.recv_view): ``(read-only payload view, serializer id)``;
        it stays in the ring until :meth:`consume`."""
        self._check_open()
        return self.rx.peek(deadline)

    def consume(self) -> None:
        """The peeked record has been used: drop it from the ring."""
        self.rx.consume()

    def reserve(self, n: int, deadline: float | None) -> memoryview:
        """Reserve ``n`` bytes of the ring to fill in place (Channel.send_view), until :meth:`commit`
        or :meth:`abort`."""
        self._check_open()
        return self.tx.reserve(n, deadline)

    def commit(self) -> None:
        """Publish the reserved record as a RAW message."""
        self.tx.commit(0)

    def abort(self) -> None:
        """Drop the reserved record unpublished."""
        self.tx.abort()

    def send_parts(self, sid: int, parts: Sequence[Any], deadline: float | None) -> None:
        """One record from ``parts``, each copied once into the ring (reserve, fill, commit)."""
        self._check_open()
        views = [p if isinstance(p, memoryview) else memoryview(p) for p in parts]
        view = self.tx.reserve(sum(v.nbytes for v in views), deadline)
        try:
            pos = 0
            for v in views:
                view[pos:pos + v.nbytes] = v.cast("B") if v.format != "B" else v
                pos += v.nbytes
        except BaseException:
            view.release()
            self.tx.abort()
            raise
        view.release()
        self.tx.commit(sid)

    def native_lends(self) -> tuple[NativeLend, NativeLend]:
        """recv_view()/send_view() in C: the consumer port and the producer port (see _native.Lender)."""
        return self.rx.lend_parts(), self.tx.lend_parts()

    # -- the message transport contract ------------------------------------------------------------

    def send_message(self, sid: int, payload: memoryview, deadline: float | None) -> None:
        self._check_open()
        self.tx.send(payload, sid, deadline)  # the ring writes the frame header itself (see spsc.py)

    def recv_message(self, deadline: float | None) -> Message:
        self._check_open()
        payload, sid = self.rx.recv(deadline)
        return Message(sid, memoryview(payload))

    def wait_readable(self, deadline: float | None) -> bool:
        self._check_open()
        return self.rx.wait_readable(deadline)

    def fileno(self) -> int:
        """The eventfd that is readable exactly while a message is pending (level-triggered)."""
        self._check_open()
        self.rx.native.set_level(True)
        return self.rx.wait_fd

    def extra(self) -> dict[str, Any]:
        return {"ring_capacity": self.capacity, "max_message": self.tx.limit,
                "wait": "spin" if self.spin else "block", "peer_pid": self.peer.pid}

    def _check_open(self) -> None:
        if self._sock is None:
            raise HandleClosed(f"{self._what} is closed")

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        _OPEN.discard(self)
        mm, self._mm = self._mm, None
        assert mm is not None
        if _native.atomic_add_u64(mm, self._handles, -1) == 1:  # the last copy of this end
            for port in (self.tx, self.rx):
                port.shutdown()
        for port in (self.tx, self.rx):
            port.close()
        sock.close()
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        _unmap(mm)


#: Open ends in this process, so that a fork() can count its copies.
_OPEN: weakref.WeakSet[ShmTransport] = weakref.WeakSet()


def _count_fork_copies() -> None:
    for t in list(_OPEN):
        if t._mm is not None:
            _native.atomic_add_u64(t._mm, t._handles, 1)


# Counted in the parent before the fork, so that neither process can close its copy first and take
# the count to zero while the other still holds one.  (If fork() fails the count stays one too
# high: the peer would see PeerVanished instead of ChannelClosed at the end.)
os.register_at_fork(before=_count_fork_copies)


def _unmap(mm: mmap.mmap | None) -> None:
    try:
        if mm is not None:
            mm.close()
    except BufferError:
        pass  # a view (an escaped recv_view, a half-built port) still exports it: unmapped when it goes


def _hello(capacity: int, version: int = _VERSION) -> bytes:
    return _HELLO.pack(_MAGIC, version, capacity)


def _parse_hello(data: bytes, what: str, versions: Sequence[int] = (_VERSION,)) -> tuple[int, int]:
    """(version, capacity) of a REQUEST or OFFER, whose version must be one of ``versions``."""
    magic, version, capacity = _HELLO.unpack(data)
    if magic != _MAGIC or version not in versions:
        raise ProtocolError(f"{what}: the other side does not speak the shm:// handshake version "
                            f"{' or '.join(map(str, versions))} (got {magic!r} version {version})")
    return int(version), int(capacity)


def _memfd_size(capacity: int, version: int) -> int:
    """The memfd of a connection: two rings, then (version 2) the shared region's header page and data."""
    return 2 * ring_size(capacity) + (shared_size(capacity) if version >= 2 else 0)


def _format_memfd(mm: mmap.mmap, capacity: int, version: int) -> None:
    """Format a zeroed memfd of _memfd_size(): the two rings, then (version 2) the region's header."""
    for off in (0, ring_size(capacity)):
        format_ring(mm, off, capacity)
    if version >= 2:
        format_shared(mm, 2 * ring_size(capacity), capacity)


def connect(endpoint: Endpoint, deadline: float | None) -> Transport:
    """Connect to an shm:// listener, receive the rings and map them."""
    return run(connect_steps(endpoint, deadline))


def connect_steps(endpoint: Endpoint, deadline: float | None) -> Steps[Transport]:
    """:func:`connect` as resumable steps (see _sockets), each wait bounded by the handshake deadline."""
    what = f"connecting to {endpoint}"
    want = endpoint.options.get("capacity", 0)
    try:
        asked = round_capacity(want) if want else 0
    except ValueError as exc:
        raise InvalidEndpoint(f"{endpoint}: {exc}") from exc

    def refused(message: str) -> ProtocolError:
        return ProtocolError(f"{message} (the server drops a client whose request it cannot serve: "
                             f"this one asked for capacity={asked or 'the server default'})")

    try:
        sock, peer = yield from unix.client_steps(_rendezvous(endpoint), deadline)
    except (ConnectionRefusedError, FileNotFoundError) as exc:
        raise os_error(exc.errno or errno.ECONNREFUSED, f"connecting to {endpoint}: no listener (its "
                       f"rendezvous is the abstract socket @ipcraft-shm.{endpoint.address})") from exc
    hs = handshake_deadline(endpoint, deadline)
    fds: list[int] = []
    mm = None
    try:
        yield from send_all(sock, _hello(asked), hs, what)
        data, fds = yield from recv_exact(sock, _HELLO.size, hs, what, refused, maxfds=5)
        _, capacity = _parse_hello(data, what)
        if len(fds) != 5:
            raise ProtocolError(f"{what}: the server passed {len(fds)} descriptors, expected 5")
        mm = _map_offer(fds[0], capacity, what)
        _check_eventfds(fds[1:], what)
        transport = ShmTransport(sock, mm, capacity, False, fds[1:], endpoint, peer)
        os.close(fds[0])
        fds = []
        try:
            yield from send_all(sock, _ACK, hs, what)
        except BaseException:
            transport.close()
            raise
        return transport
    except BaseException:
        close_fds(fds)
        _unmap(mm)
        sock.close()
        raise


def _map_offer(fd: int, capacity: int, what: str) -> mmap.mmap:
    size = _memfd_size(capacity, _VERSION)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        raise ProtocolError(f"{what}: the shared memory offered is not a {size}-byte memfd")
    if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _SEALS != _SEALS:
        raise ProtocolError(f"{what}: the shared memory offered is not sealed against resizing")
    mm = mmap.mmap(fd, size)
    try:
        for off in (0, ring_size(capacity)):
            if check_ring(mm, off, what) != capacity:
                raise ProtocolError(f"{what}: a ring's capacity differs from the one offered")
        if not check_shared(mm, 2 * ring_size(capacity), capacity):
            raise ProtocolError(f"{what}: the shared region's header is not one")
    except BaseException:
        _unmap(mm)
        raise
    return mm


def _check_eventfds(fds: Sequence[int], what: str) -> None:
    for fd in fds:
        try:
            kind = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # no /proc: trust the credential-checked server
        if kind != "anon_inode:[eventfd]" or not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
            raise ProtocolError(f"{what}: descriptor {kind} offered where a non-blocking eventfd belongs")


class ShmListener(SocketListener):
    """Accepts shm:// clients on the abstract rendezvous socket and gives each a pair of rings.

    A client whose handshake fails (silence, bytes that are not the handshake, a capacity this side
    cannot allocate) is dropped and counted in ``refused``; the listener serves the others meanwhile.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        capacity = round_capacity(endpoint.options.get("capacity", DEFAULT_CAPACITY))
        sock, _ = unix.bind_unix(_rendezvous(endpoint), "unix")
        super().__init__(endpoint, sock)
        self._capacity = capacity
        self._allowed = endpoint.options.get("allowed_uids")

    def _handshake(self, sock: socket.socket) -> Steps[Transport]:
        what = f"accepting on {self.endpoint}"
        peer = unix.serve_verdict(sock, self._allowed, self.endpoint)
        hs = handshake_deadline(self.endpoint, None)
        data, _ = yield from recv_exact(sock, _HELLO.size, hs, what, ProtocolError)
        version, asked = _parse_hello(data, what, _VERSIONS)
        try:
            capacity = round_capacity(asked) if asked else self._capacity
        except ValueError as exc:
            raise ProtocolError(f"{what}: the client asked for a {asked}-byte ring: {exc}") from exc
        transport = self._rings(sock, capacity, peer, version)
        try:
            memfd = transport.memfd
            try:
                yield from send_all(sock, _hello(capacity, version), hs, what, [memfd, *transport._fds])
            finally:
                os.close(memfd)
                transport.memfd = -1
            ack, _ = yield from recv_exact(sock, 1, hs, what, ProtocolError)
            if ack != _ACK:
                raise ProtocolError(f"{what}: the client refused the rings")
        except BaseException:
            transport.close()  # closes the socket, the eventfds and the mapping
            raise
        return transport

    def _rings(self, sock: socket.socket, capacity: int, peer: Any, version: int) -> ShmTransport:
        """A sealed memfd holding two formatted rings (and the shared region), and four eventfds, as
        the server's end."""
        size = _memfd_size(capacity, version)
        efds: list[int] = []
        mm: mmap.mmap | None = None
        memfd = os.memfd_create("ipcraft-shm", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(memfd, size)
            fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, _SEALS)
            mm = mmap.mmap(memfd, size)
            _format_memfd(mm, capacity, version)
            efds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(4)]
            transport = ShmTransport(sock, mm, capacity, True, efds, self.endpoint, peer, version)
        except BaseException:
            os.close(memfd)
            close_fds(efds)
            _unmap(mm)
            raise
        transport.memfd = memfd
        return transport


def listen(endpoint: Endpoint) -> ShmListener:
    return ShmListener(endpoint)
