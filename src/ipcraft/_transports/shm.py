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
* **Liveness.**  The rendezvous socket stays open for the life of the channel, and each side also
  holds a pidfd of the other process.  Both are *watch* descriptors of the rings (see _ring.py): the
  socket hangs up when the peer's last copy of it closes, the pidfd when the peer process exits even
  if a forked child kept the socket.  A waiting side notices within about a millisecond and raises
  PeerVanished; a clean close() sets the ring's closed flags first, so the peer gets ChannelClosed.
  A sender whose peer died succeeds while the ring has room (as a socket's send buffer would), and
  raises PeerVanished once it would have to wait.
* **Capacity** is the client's ``capacity=`` if given, else the listener's, else 4 MiB per direction,
  rounded up to a power of two.  A message may use half a ring; a larger one is MessageTooLarge
  naming the capacity (see _ring.py for why not streaming).  ``wait=`` is each side's own choice.

Handshake on the rendezvous socket, after unix.py's credential verdict::

    client -> server   REQUEST  <8sIQ   b"IPCSHM\\x00\\x01", version 1, requested capacity (0: server's)
    server -> client   OFFER    <8sIQ   same magic, version, capacity; SCM_RIGHTS: memfd, then the
                                        eventfds c2s-data, c2s-room, s2c-data, s2c-room
    client -> server   ACK      1 byte  0x01 once it has mapped and validated both rings
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import socket
import stat
import struct
import time
from collections.abc import Sequence
from typing import Any

from .. import _framing
from .._endpoint import Endpoint
from .._errors import os_error
from .._ring import REC_HEADER, RingPort, check_ring, format_ring, max_payload, ring_size, round_capacity
from ..errors import HandleClosed, ProtocolError, Timeout
from . import Transport, unix
from ._io import timed_out, wait_fd

DEFAULT_CAPACITY = 4 * 1024 * 1024
_HELLO = struct.Struct("<8sIQ")
_MAGIC = b"IPCSHM\x00\x01"
_VERSION = 1
_ACK = b"\x01"
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def _rendezvous(endpoint: Endpoint) -> Endpoint:
    keep = {k: v for k, v in endpoint.options.items()
            if k in ("allowed_uids", "backlog", "handshake_timeout")}
    return Endpoint("unix", f"@ipcraft-shm.{endpoint.address}", keep)


class ShmTransport(Transport):
    """One end of an shm:// connection: a producer port on one ring, a consumer port on the other."""

    kind = "message"

    def __init__(self, sock: socket.socket, mm: mmap.mmap, capacity: int, server: bool,
                 efds: Sequence[int], endpoint: Endpoint, peer: Any) -> None:
        self._sock: socket.socket | None = sock
        self._mm: mmap.mmap | None = mm
        self._fds = list(efds)
        self._what = f"{endpoint} ({'server' if server else 'client'} side)"
        self.peer = peer
        self.authenticated = True  # the kernel vouched for the peer's uid and the policy accepted it
        self.capacity = capacity
        self.spin = endpoint.options.get("wait", "block") == "spin"
        self._pidfd = _pidfd(peer.pid)
        watch = (sock.fileno(),) + ((self._pidfd,) if self._pidfd >= 0 else ())
        c2s_data, c2s_room, s2c_data, s2c_room = efds
        c2s, s2c = 0, ring_size(capacity)
        tx_off, rx_off = (s2c, c2s) if server else (c2s, s2c)
        tx_data, tx_room, rx_data, rx_room = ((s2c_data, s2c_room, c2s_data, c2s_room) if server
                                              else (c2s_data, c2s_room, s2c_data, s2c_room))
        max_message = endpoint.options.get("max_message_size", _framing.DEFAULT_MAX_MESSAGE_SIZE)
        self.max_payload = max_payload(capacity) + REC_HEADER
        self.limit_source = (f"half the {capacity}-byte shm:// ring, less its 8-byte header; pass "
                             "capacity= to connect() or listen() for larger messages")
        self.tx = RingPort(mm, tx_off, producer=True, what=self._what, signal_fd=tx_data, wait_fd=tx_room,
                           watch_fds=watch, spin=self.spin, limit=min(max_message, max_payload(capacity)),
                           limit_source=self.limit_source)
        self.rx = RingPort(mm, rx_off, producer=False, what=self._what, signal_fd=rx_room,
                           wait_fd=rx_data, watch_fds=watch, spin=self.spin, limit=max_message,
                           limit_source="this channel's max_message_size")

    # -- the channel's fast path and zero copy -----------------------------------------------------

    def fast_path(self) -> tuple[Any, Any]:
        """``(try_send(data, sid=0) -> bool, try_recv() -> bytes | None)`` for Channel's fast path."""
        return self.tx.end.try_send, self.rx.end.try_recv

    def borrow(self, deadline: float | None) -> tuple[memoryview, int]:
        """Lend the next record (Channel.recv_view): ``(read-only payload view, serializer id)``."""
        self._check_open()
        return self.rx.borrow(deadline)

    def end_borrow(self) -> None:
        """The borrowed record has been used: drop it from the ring."""
        self.rx.consume()

    def loan(self, n: int, deadline: float | None) -> memoryview:
        """Lend ``n`` bytes of the ring to fill in place (Channel.send_view)."""
        self._check_open()
        return self.tx.loan(n, deadline)

    def end_loan(self, publish: bool) -> None:
        """Publish the loaned record as a RAW message, or drop it."""
        if publish:
            self.tx.commit(0)
        else:
            self.tx.abort()

    # -- the message transport contract ------------------------------------------------------------

    def send_message(self, parts: Sequence[Any], deadline: float | None) -> None:
        self._check_open()
        head = parts[0]
        payload = parts[1] if len(parts) == 2 else b"".join(bytes(p) for p in parts[1:])
        self.tx.send(payload, head[1], deadline)

    def recv_message(self, deadline: float | None) -> bytes:
        self._check_open()
        return self.rx.recv(deadline)

    def wait_readable(self, deadline: float | None) -> bool:
        self._check_open()
        return self.rx.wait_readable(deadline)

    def fileno(self) -> int:
        """The eventfd that is readable exactly while a message is pending (level-triggered)."""
        self._check_open()
        self.rx.end.set_level(True)
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
        for port in (self.tx, self.rx):
            port.shutdown()
        for port in (self.tx, self.rx):
            port.close()
        sock.close()
        for fd in self._fds + ([self._pidfd] if self._pidfd >= 0 else []):
            os.close(fd)
        self._fds = []
        mm, self._mm = self._mm, None
        _unmap(mm)


def _unmap(mm: mmap.mmap | None) -> None:
    try:
        if mm is not None:
            mm.close()
    except BufferError:
        pass  # a view (an escaped recv_view, a half-built port) still exports it: unmapped when it goes


def _pidfd(pid: int | None) -> int:
    if not pid or not hasattr(os, "pidfd_open"):
        return -1
    try:
        return os.pidfd_open(pid)
    except OSError:  # the peer is in another pid namespace, or already gone (the socket will say)
        return -1


def _send_hello(sock: socket.socket, capacity: int, fds: Sequence[int] = ()) -> None:
    data = _HELLO.pack(_MAGIC, _VERSION, capacity)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None, what: str,
                maxfds: int = 0) -> tuple[bytes, list[int]]:
    data, fds = b"", []
    while len(data) < n:
        try:
            if maxfds:
                chunk, got, _, _ = socket.recv_fds(sock, n - len(data), maxfds, socket.MSG_CMSG_CLOEXEC)
                fds += got
            else:
                chunk = sock.recv(n - len(data))
        except BlockingIOError:
            if not wait_fd(sock.fileno(), 1, deadline):
                _close_all(fds)
                raise timed_out(f"{what} (the handshake)") from None
            continue
        except OSError as exc:
            _close_all(fds)
            raise os_error(exc.errno or errno.EIO, what) from exc
        if not chunk:
            _close_all(fds)
            raise ProtocolError(f"{what}: the other side closed during the shm:// handshake")
        data += chunk
    return data, fds


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


def _parse_hello(data: bytes, what: str) -> int:
    magic, version, capacity = _HELLO.unpack(data)
    if magic != _MAGIC or version != _VERSION:
        raise ProtocolError(f"{what}: the other side does not speak the shm:// handshake version "
                            f"{_VERSION} (got {magic!r} version {version})")
    return int(capacity)


def connect(endpoint: Endpoint, deadline: float | None) -> Transport:
    """Connect to an shm:// listener, receive the rings and map them."""
    rv = unix.connect(_rendezvous(endpoint), deadline)
    sock: socket.socket = rv.sock  # type: ignore[attr-defined]
    what = f"connecting to {endpoint}"
    hs_deadline = unix._handshake_deadline(endpoint, deadline)
    fds: list[int] = []
    mm = None
    try:
        want = endpoint.options.get("capacity", 0)
        _send_hello(sock, round_capacity(want) if want else 0)
        data, fds = _recv_exact(sock, _HELLO.size, hs_deadline, what, maxfds=5)
        capacity = _parse_hello(data, what)
        if len(fds) != 5:
            raise ProtocolError(f"{what}: the server passed {len(fds)} descriptors, expected 5")
        mm = _map_offer(fds[0], capacity, what)
        _check_eventfds(fds[1:], what)
        transport = ShmTransport(sock, mm, capacity, False, fds[1:], endpoint, rv.peer)
        os.close(fds[0])
        fds = []
        sock.sendall(_ACK)
        return transport
    except BaseException:
        _close_all(fds)
        _unmap(mm)
        sock.close()
        raise


def _map_offer(fd: int, capacity: int, what: str) -> mmap.mmap:
    size = 2 * ring_size(capacity)
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


class ShmListener:
    """Accepts shm:// clients on the abstract rendezvous socket and gives each a pair of rings."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._unix: unix.UnixListener | None = unix.UnixListener(_rendezvous(endpoint))
        self._capacity = round_capacity(endpoint.options.get("capacity", DEFAULT_CAPACITY))

    def fileno(self) -> int:
        if self._unix is None:
            raise HandleClosed(f"the listener on {self.endpoint} is closed")
        return self._unix.fileno()

    def accept(self, deadline: float | None) -> Transport:
        while True:
            if self._unix is None:
                raise HandleClosed(f"the listener on {self.endpoint} is closed")
            rv = self._unix.accept(deadline)
            try:
                return self._handshake(rv.sock, rv.peer, deadline)  # type: ignore[attr-defined]
            except (ProtocolError, Timeout, OSError):
                # A client that vanished or misbehaved during the handshake: serve the next one.
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                continue

    def _handshake(self, sock: socket.socket, peer: Any, deadline: float | None) -> Transport:
        what = f"accepting on {self.endpoint}"
        hs_deadline = unix._handshake_deadline(self.endpoint, deadline)
        efds: list[int] = []
        mm: mmap.mmap | None = None
        transport: ShmTransport | None = None
        try:
            data, _ = _recv_exact(sock, _HELLO.size, hs_deadline, what)
            asked = _parse_hello(data, what)
            capacity = round_capacity(asked) if asked else self._capacity
            size = 2 * ring_size(capacity)
            memfd = os.memfd_create("ipcraft-shm", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            try:
                os.ftruncate(memfd, size)
                fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, _SEALS)
                mm = mmap.mmap(memfd, size)
                for off in (0, ring_size(capacity)):
                    format_ring(mm, off, capacity)
                efds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(4)]
                transport = ShmTransport(sock, mm, capacity, True, efds, self.endpoint, peer)
                _send_hello(sock, capacity, [memfd, *efds])
            finally:
                os.close(memfd)
            ack, _ = _recv_exact(sock, 1, hs_deadline, what)
            if ack != _ACK:
                raise ProtocolError(f"{what}: the client refused the rings")
            return transport
        except BaseException:
            if transport is not None:
                transport.close()  # closes the socket, the eventfds and the mapping
            else:
                _close_all(efds)
                _unmap(mm)
                sock.close()
            raise

    def close(self) -> None:
        lst, self._unix = self._unix, None
        if lst is not None:
            lst.close()


def listen(endpoint: Endpoint) -> ShmListener:
    return ShmListener(endpoint)
