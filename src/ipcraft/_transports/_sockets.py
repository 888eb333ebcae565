"""What every socket transport shares: addresses, handshakes as resumable steps, and listeners.

Decisions:

* **A handshake is a generator of waits.**  Each connection handshake (the unix:// credential
  verdict, the tcp:// TLS and authkey exchange, the shm:// rendezvous) is written once, as a
  generator over a non-blocking socket that yields ``(fd, events, deadline)`` whenever it must wait
  and is sent back whether the fd became ready (True) or the deadline passed (False, after which it
  raises Timeout).  Three drivers run the same steps: :func:`run` sleeps in poll(2) (a blocking
  connect), :func:`run_async` waits in the event loop's ``add_reader``/``add_writer`` without any
  thread (``ipcraft.aio.connect``), and :class:`SocketListener` multiplexes the handshakes of every
  pending client in one epoll set.  Closing a suspended generator (a cancelled task, a listener
  closed, an expired client) releases what it holds.
* **Listeners run their handshakes concurrently.**  ``accept()`` takes every waiting connection off
  the kernel's queue, starts its handshake at once, and advances whichever is ready, so a silent or
  slow client never delays a good one: it sits in the epoll set until its own ``handshake_timeout``
  passes, then is closed and counted in ``refused`` (``last_refusal`` says why).  At most ``backlog``
  handshakes are pending; beyond that new clients wait in the kernel's backlog.  The listener's
  ``fileno()`` is the epoll descriptor: readable when a client is waiting or a handshake can move.
* **Prefork works.**  Processes forked after ``listen()`` may all accept on the one socket: each
  process makes its own epoll set on first use (a forked copy would share the parent's) and leaves
  the handshakes the parent had pending to the parent.
* **Deadlines**: a client's handshake is bounded by ``handshake_timeout`` and by the caller's
  deadline, whichever comes first; a listener gives each client its full ``handshake_timeout`` from
  the moment it was taken off the queue, independently of the ``accept(timeout)`` in progress.
* **Exact receives never read past the handshake**: what follows belongs to the channel.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

from .._endpoint import Endpoint
from .._errors import os_error
from .._names import validate_unix_path
from .._wait import POLLIN as POLLIN
from .._wait import POLLOUT as POLLOUT
from .._wait import deadline_after, remaining
from .._wait import wait_fd as wait_fd
from ..errors import HandleClosed, IPCError, PeerVanished
from ..primitives._sockio import bind_path as bind_path
from ..primitives._sockio import connect_unix as connect_unix
from ..primitives._sockio import resolve_inet as resolve_inet
from ._contract import Transport
from ._io import timed_out as timed_out

T = TypeVar("T")

#: What a handshake step waits for: ``(fd, POLLIN or POLLOUT, absolute deadline or None)``; an fd of -1
#: is a pause until the deadline (the step is then sent False).
Wait = tuple[int, int, "float | None"]
#: A handshake: yields Waits, is sent whether the fd became ready, returns its result.
Steps = Generator[Wait, bool, T]

DEFAULT_HANDSHAKE_TIMEOUT = 10.0


# -- addresses ---------------------------------------------------------------------------------------

def sockaddr(endpoint: Endpoint) -> bytes:
    """The AF_UNIX address of a unix-family endpoint (``@name`` is an abstract name)."""
    return validate_unix_path(endpoint.address[1:] if endpoint.abstract else endpoint.address,
                              abstract=endpoint.abstract)


def bind_abstract(sock: socket.socket, addr: bytes, endpoint: Endpoint) -> None:
    """Bind ``sock`` to an abstract address; the kernel's error typed and naming the endpoint."""
    try:
        sock.bind(addr)
    except OSError as exc:
        raise os_error(exc.errno or errno.EIO, f"binding {endpoint}", endpoint.address) from exc


def bound_endpoint(endpoint: Endpoint, sock: socket.socket) -> Endpoint:
    """``endpoint`` with the port the kernel actually bound (port 0 resolved)."""
    host = endpoint.address.rpartition(":")[0]  # keeps IPv6 brackets
    return Endpoint(endpoint.scheme, f"{host}:{sock.getsockname()[1]}", endpoint.options)


# -- deadlines and drivers ---------------------------------------------------------------------------

def handshake_deadline(endpoint: Endpoint, deadline: float | None) -> float | None:
    """The earlier of ``deadline`` and ``handshake_timeout`` seconds from now."""
    hs = deadline_after(endpoint.options.get("handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT))
    if deadline is None:
        return hs
    return deadline if hs is None else min(deadline, hs)


def run(steps: Steps[T]) -> T:
    """Drive a handshake to its end in this thread, sleeping in poll(2) at each wait."""
    try:
        fd, events, deadline = next(steps)
        while True:
            if fd < 0:  # a pause
                time.sleep(remaining(deadline) or 0.0)
                fd, events, deadline = steps.send(False)
            else:
                fd, events, deadline = steps.send(wait_fd(fd, events, deadline))
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        steps.close()


async def run_async(steps: Steps[T]) -> T:
    """Drive a handshake on the running event loop (add_reader/add_writer), with no thread.

    A cancelled task closes the handshake, which releases its socket.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    try:
        fd, events, deadline = next(steps)
        while True:
            fd, events, deadline = steps.send(await _ready(loop, fd, events, deadline))
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        steps.close()


async def _ready(loop: Any, fd: int, events: int, deadline: float | None) -> bool:
    left = remaining(deadline)
    if fd < 0:  # a pause
        import asyncio

        await asyncio.sleep(left or 0.0)
        return False
    if left == 0:
        return wait_fd(fd, events, 0.0)
    fut = loop.create_future()

    def wake(value: bool) -> None:
        if not fut.done():
            fut.set_result(value)

    write = bool(events & POLLOUT)
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    add(fd, wake, True)
    timer = loop.call_later(left, wake, False) if left is not None else None
    try:
        return bool(await fut)
    finally:
        remove(fd)
        if timer is not None:
            timer.cancel()


# -- steps -------------------------------------------------------------------------------------------

_WANT_READ = (BlockingIOError, ssl.SSLWantReadError)
_WANT_WRITE = (ssl.SSLWantWriteError,)


def connect_socket(sock: socket.socket, addr: Any, deadline: float | None, what: str,
                   address: str) -> Steps[None]:
    """Connect a non-blocking ``sock`` to ``addr``.

    TCP answers EINPROGRESS and completes on its own (POLLOUT says when).  A Unix socket answers
    EAGAIN while the listener's backlog is full; poll(2) has nothing to report on such a socket (it
    is "ready" at once), so the connect is retried after a pause that grows from 1 ms to 50 ms.
    """
    pause = 0.0005
    while True:
        err = sock.connect_ex(addr)
        if err in (0, errno.EISCONN):
            return
        if err == errno.EINTR:
            continue
        if err == errno.EAGAIN:
            if deadline is not None and time.monotonic() >= deadline:
                raise timed_out(what)
            pause = min(pause * 2, 0.05)
            wake = time.monotonic() + pause
            yield (-1, 0, wake if deadline is None else min(wake, deadline))  # a pause, not a wait on an fd
            continue
        if err not in (errno.EINPROGRESS, errno.EALREADY):
            raise os_error(err, what, address)
        if not (yield (sock.fileno(), POLLOUT, deadline)):
            raise timed_out(what)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise os_error(err, what, address)
        return


def connect_unix_steps(sock: socket.socket, addr: bytes, deadline: float | None, what: str,
                       address: str) -> Steps[None]:
    """Connect a non-blocking AF_UNIX ``sock`` as :func:`connect_socket` does, also meeting an abstract
    name that a C program bound padded with NULs to sizeof(struct sockaddr_un)."""
    try:
        addr, connected = connect_unix(sock, addr)
    except OSError as exc:
        raise os_error(exc.errno or errno.EIO, what, address) from exc
    if not connected:  # a full backlog: wait for room at the address that answered
        yield from connect_socket(sock, addr, deadline, what, address)


def recv_exact(sock: socket.socket, n: int, deadline: float | None, what: str,
               eof: Callable[[str], IPCError] = PeerVanished, maxfds: int = 0) -> Steps[tuple[bytes, list[int]]]:
    """Exactly ``n`` bytes (never more) and, with ``maxfds``, the descriptors passed along with them.

    ``eof(message)`` is raised when the peer closes first.  Descriptors received are closed on failure.
    """
    data = bytearray()
    fds: list[int] = []
    try:
        while len(data) < n:
            try:
                if maxfds:
                    chunk, got, _, _ = socket.recv_fds(sock, n - len(data), maxfds - len(fds),
                                                       socket.MSG_CMSG_CLOEXEC)
                    fds += got
                else:
                    chunk = sock.recv(n - len(data))
            except _WANT_READ:
                if not (yield (sock.fileno(), POLLIN, deadline)):
                    raise timed_out(f"{what} (the handshake: {len(data)} of {n} bytes came)") from None
                continue
            except _WANT_WRITE:  # TLS renegotiation
                if not (yield (sock.fileno(), POLLOUT, deadline)):
                    raise timed_out(f"{what} (the handshake)") from None
                continue
            except OSError as exc:
                raise os_error(exc.errno or errno.ECONNRESET, f"{what} ({exc})") from exc
            if not chunk:
                raise eof(f"{what}: the other side closed the connection during the handshake")
            data += chunk
    except BaseException:
        close_fds(fds)
        raise
    return bytes(data), fds


def recv_some(sock: socket.socket, n: int, deadline: float | None, what: str) -> Steps[bytes]:
    """One receive of at most ``n`` bytes (one whole record on a seqpacket socket); b"" at EOF."""
    while True:
        try:
            return sock.recv(n)
        except BlockingIOError:
            if not (yield (sock.fileno(), POLLIN, deadline)):
                raise timed_out(f"{what} (the handshake)") from None
        except OSError as exc:
            raise os_error(exc.errno or errno.ECONNRESET, what) from exc


def send_all(sock: socket.socket, data: bytes, deadline: float | None, what: str,
             fds: Sequence[int] = ()) -> Steps[None]:
    """Send all of ``data`` (with ``fds`` attached to its first byte) on a non-blocking socket."""
    view = memoryview(data)
    tls = isinstance(sock, ssl.SSLSocket)
    while view:
        try:
            if fds:
                n = socket.send_fds(sock, [view], list(fds), socket.MSG_NOSIGNAL)
                fds = ()
            elif tls:
                n = sock.send(view)
            else:
                n = sock.send(view, socket.MSG_NOSIGNAL)
        except (BlockingIOError, ssl.SSLWantWriteError):
            if not (yield (sock.fileno(), POLLOUT, deadline)):
                raise timed_out(f"{what} (the handshake)") from None
            continue
        except ssl.SSLWantReadError:
            if not (yield (sock.fileno(), POLLIN, deadline)):
                raise timed_out(f"{what} (the handshake)") from None
            continue
        except OSError as exc:
            raise os_error(exc.errno or errno.EPIPE, f"{what} ({exc})") from exc
        view = view[n:]


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


# -- listeners ---------------------------------------------------------------------------------------

class _Pending:
    __slots__ = ("sock", "steps", "fd", "deadline")

    def __init__(self, sock: socket.socket, steps: Steps[Transport]) -> None:
        self.sock = sock
        self.steps = steps
        self.fd = -1
        self.deadline: float | None = None


class SocketListener:
    """A listening socket whose clients' handshakes run side by side (see the module docstring).

    Subclasses bind the socket and write ``_handshake(sock)``, the server's steps for one accepted,
    non-blocking client socket, returning its transport.  ``refused`` counts clients dropped because
    their handshake failed or timed out; ``last_refusal`` says why the latest one was.
    """

    endpoint: Endpoint

    def __init__(self, endpoint: Endpoint, sock: socket.socket, bound_path: tuple[str, int] | None = None) -> None:
        """Take over ``sock``, bound and listening; ``bound_path`` is a socket file to remove on close."""
        self.endpoint = endpoint
        self.refused = 0
        self.last_refusal = ""
        self._bound_path = bound_path
        self._pending: dict[int, _Pending] = {}
        self._max_pending = max(1, int(endpoint.options.get("backlog", 128)))
        try:
            sock.setblocking(False)
            self._poller = select.epoll()
        except BaseException:
            sock.close()
            self._remove_bound_file()
            raise
        self._poller.register(sock.fileno(), select.EPOLLIN)  # cannot fail on a fresh epoll set
        self._sock: socket.socket | None = sock
        self._listen_fd = sock.fileno()
        self._taking = True
        self._pid = os.getpid()

    def _handshake(self, sock: socket.socket) -> Steps[Transport]:
        raise NotImplementedError

    def fileno(self) -> int:
        """The epoll descriptor: readable when a client is waiting or a handshake can move on."""
        self._check_open()
        self._own()
        return self._poller.fileno()

    def _own(self) -> None:
        """After a fork, give this process its own epoll set (a forked copy shares the parent's, and
        its registrations name the parent's descriptors).  The parent's pending handshakes are the
        parent's: the child closes its copies, which leaves the parent's connections alone."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        inherited, self._poller = self._poller, select.epoll()
        inherited.close()
        pending, self._pending = list(self._pending.values()), {}
        for p in pending:
            p.steps.close()
            p.sock.close()
        if self._sock is not None:
            self._poller.register(self._listen_fd, select.EPOLLIN)
            self._taking = True

    def next_deadline(self) -> float | None:
        """When the earliest pending handshake expires (None if none is pending)."""
        self._own()
        deadlines = [p.deadline for p in self._pending.values() if p.deadline is not None]
        return min(deadlines) if deadlines else None

    def accept(self, deadline: float | None) -> Transport:
        """The next client whose handshake succeeds; others make progress meanwhile."""
        while True:
            self._check_open()
            self._own()
            wake = self.next_deadline()
            if deadline is not None and (wake is None or deadline < wake):
                wake = deadline
            left = remaining(wake)
            try:
                events = self._poller.poll(-1 if left is None else left)
            except (OSError, ValueError) as exc:  # closed by another thread meanwhile
                self._check_open()
                raise os_error(getattr(exc, "errno", None) or errno.EBADF, f"accepting on {self.endpoint}") from exc
            transport = self._advance(events)
            if transport is not None:
                return transport
            if deadline is not None and time.monotonic() >= deadline:
                raise timed_out(f"accepting on {self.endpoint}")

    def _check_open(self) -> None:
        if self._sock is None:
            raise HandleClosed(f"the listener on {self.endpoint} is closed")

    def _advance(self, events: list[tuple[int, int]]) -> Transport | None:
        """Move ready handshakes on; the first one to finish is returned (the rest stay ready)."""
        for fd, _ in events:
            if fd == self._listen_fd:
                transport = self._take_new()
            else:
                pending = self._pending.get(fd)
                transport = self._step(pending, True) if pending is not None else None
            if transport is not None:
                return transport
        now = time.monotonic()
        for pending in list(self._pending.values()):
            if pending.deadline is not None and now >= pending.deadline:
                self._step(pending, False)
        return None

    def _take_new(self) -> Transport | None:
        assert self._sock is not None
        while len(self._pending) < self._max_pending:
            try:
                sock, _ = self._sock.accept()
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EINTR, errno.EPROTO):
                    continue
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return None  # out of descriptors or memory: the client stays queued in the kernel
                raise os_error(exc.errno or errno.EIO, f"accepting on {self.endpoint}") from exc
            pending = _Pending(sock, self._start(sock))
            transport = self._step(pending, None)
            if transport is not None:
                return transport
        self._set_taking(False)  # full: leave new clients in the kernel's backlog for now
        return None

    def _start(self, sock: socket.socket) -> Steps[Transport]:
        try:
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return self._handshake(sock)

    def _step(self, pending: _Pending, ready: bool | None) -> Transport | None:
        """Resume one handshake (``ready`` None: start it); record a failure as a refusal."""
        try:
            want = next(pending.steps) if ready is None else pending.steps.send(ready)
        except StopIteration as stop:
            self._forget(pending, close=False)
            transport: Transport = stop.value
            return transport
        except (OSError, IPCError) as exc:  # anything else is a bug: it escapes accept()
            self._forget(pending)
            self.refused += 1
            self.last_refusal = f"{type(exc).__name__}: {exc}"
            return None
        except BaseException:
            self._forget(pending)
            raise
        fd, events, deadline = want
        pending.deadline = deadline
        flags = select.EPOLLIN if events & POLLIN else select.EPOLLOUT
        if fd != pending.fd:
            if pending.fd >= 0:
                self._unregister(pending.fd)
            self._poller.register(fd, flags)
            self._pending[fd] = pending
            pending.fd = fd
        else:
            self._poller.modify(fd, flags)
        return None

    def _forget(self, pending: _Pending, close: bool = True) -> None:
        if pending.fd >= 0:
            self._unregister(pending.fd)
            pending.fd = -1
        if close:
            pending.steps.close()  # runs the handshake's own cleanup (mappings, descriptors, TLS)
            pending.sock.close()
        if not self._taking and self._sock is not None and len(self._pending) < self._max_pending:
            self._set_taking(True)

    def _unregister(self, fd: int) -> None:
        self._pending.pop(fd, None)
        try:
            self._poller.unregister(fd)
        except (OSError, ValueError):
            pass  # the handshake already closed that descriptor, which left the epoll set with it

    def _set_taking(self, on: bool) -> None:
        self._taking = on
        self._poller.modify(self._listen_fd, select.EPOLLIN if on else 0)

    def close(self) -> None:
        """Stop listening: pending handshakes are dropped and a bound socket file is removed."""
        if self._sock is None:
            return
        self._own()
        sock, self._sock = self._sock, None
        for pending in list(self._pending.values()):
            self._forget(pending)
        self._poller.close()
        sock.close()
        self._remove_bound_file()

    def _remove_bound_file(self) -> None:
        """Unlink the socket file this listener bound, if it is still that one."""
        if self._bound_path is not None:
            path, ino = self._bound_path
            try:
                if os.stat(path).st_ino == ino:
                    os.unlink(path)
            except OSError:
                pass
