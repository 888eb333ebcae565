"""Baselines (bare Python loops over the kernel) and peers (the libraries a user would otherwise pick).

Each is written as its best plain use, as in the reference measurements:

* bare loops frame with a 4-byte little-endian length, send header and payload in one gathered write,
  and read exactly 4 bytes then exactly N bytes into a preallocated buffer (``os.readv`` on pipes,
  ``recv_into`` with MSG_WAITALL on sockets), so the receiver allocates nothing;
* the bare pipe has the same 1 MiB capacity ipcraft.pipe(duplex=False) sets (the same kind of fd);
* the bare posix_ipc / sysv_ipc loops use the largest message size the kernel allows unprivileged
  (msgsize_max, msgmax) and refuse larger sizes up front, naming the knob;
* iceoryx2 busy-polls ``receive()`` and copies the payload out to ``bytes`` with ``ctypes.string_at``
  after writing it with ``ctypes.memmove`` into ``loan_slice_uninit`` (its Python binding has no
  blocking receive without a WaitSet).
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from ._harness import Ctl, Env, Link, Subject, Unavailable

_LEN = struct.Struct("<I")
_SETUP_TIMEOUT = 30.0


def _proc_int(path: str, default: int) -> int:
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


class _Optional(Subject):
    """A subject that needs an importable module; without it, it is listed as not available."""

    module = ""
    hint = "pip install 'ipcraft[bench]'"

    def unavailable(self) -> str | None:
        import importlib

        try:
            importlib.import_module(self.module)
        except ImportError:
            return f"{self.module} is not installed ({self.hint})"
        return None


class _KernelQueue(_Optional):
    """A bare loop over a kernel message queue: sizes above the kernel's message limit are refused."""

    group = "baseline"
    hint = "a runtime dependency of ipcraft"
    knob = ""

    def __init__(self) -> None:
        self._limit = _proc_int(self.knob, 8192)
        self._made: list[Any] = []

    def skip_reason(self, size: int) -> str | None:
        return f"{os.path.basename(self.knob)} {self._limit}" if size > self._limit else None


class _FuncLink(Link):
    """A link made of plain callables."""

    def __init__(self, send: Any, recv: Any, close: Any = None) -> None:
        self.send, self.recv = send, recv  # type: ignore[method-assign]

        def echo() -> None:
            send(recv())

        self.echo = echo  # type: ignore[method-assign]
        self._close = close

    def close(self) -> None:
        if self._close is not None:
            self._close()


def _framed_fd_link(rfd: int, wfd: int, max_size: int) -> _FuncLink:
    """os.writev / os.readv with a 4-byte length prefix into a reused buffer."""
    buf = memoryview(bytearray(max_size))
    hdr = bytearray(4)
    hv = memoryview(hdr)
    pack, unpack_from, readv, writev, write = _LEN.pack, _LEN.unpack_from, os.readv, os.writev, os.write

    def read_exact(mv: memoryview) -> None:
        got = readv(rfd, [mv])
        while got < len(mv):
            n = readv(rfd, [mv[got:]])
            if not n:
                raise EOFError("the pipe closed")
            got += n

    def send(data: Any) -> None:
        n = len(data)
        sent = writev(wfd, [pack(n), data])
        if sent < n + 4:  # a partial write (a signal): finish it
            rest = memoryview(pack(n) + bytes(data))[sent:]
            while rest:
                rest = rest[write(wfd, rest):]

    def recv() -> memoryview:
        read_exact(hv)
        mv = buf[:unpack_from(hdr)[0]]
        read_exact(mv)
        return mv

    return _FuncLink(send, recv)


def _framed_socket_link(sock: socket.socket, max_size: int) -> _FuncLink:
    """sendmsg([header, payload]) / recv_into(..., MSG_WAITALL) into a reused buffer."""
    buf = memoryview(bytearray(max_size))
    hdr = bytearray(4)
    pack, unpack_from = _LEN.pack, _LEN.unpack_from
    sendmsg, recv_into, sendall = sock.sendmsg, sock.recv_into, sock.sendall
    waitall = socket.MSG_WAITALL

    def send(data: Any) -> None:
        n = len(data)
        sent = sendmsg([pack(n), data])
        if sent < n + 4:
            sendall(memoryview(pack(n) + bytes(data))[sent:])

    def recv() -> memoryview:
        if recv_into(hdr, 4, waitall) < 4:
            raise EOFError("the socket closed")
        n = unpack_from(hdr)[0]
        got = recv_into(buf, n, waitall)
        while got < n:
            k = recv_into(buf[got:], n - got, waitall)
            if not k:
                raise EOFError("the socket closed")
            got += k
        return buf[:n]

    return _FuncLink(send, recv)


class BarePipe(Subject):
    name = "bare os.pipe loop"
    group = "baseline"
    facts = {"kernel": "pipe", "pipe_size": 1 << 20}

    def prepare(self, env: Env) -> None:
        from .._transports.pipe import PIPE_SIZE, set_pipe_size

        self._fds = [*os.pipe2(os.O_CLOEXEC), *os.pipe2(os.O_CLOEXEC)]  # r_ab, w_ab, r_ba, w_ba
        set_pipe_size(self._fds[1], PIPE_SIZE)
        set_pipe_size(self._fds[3], PIPE_SIZE)
        self._max = env.max_size

    def open(self, side: str, ctl: Ctl) -> Link:
        r_ab, w_ab, r_ba, w_ba = self._fds
        return _framed_fd_link(r_ba, w_ab, self._max) if side == "a" else _framed_fd_link(r_ab, w_ba, self._max)

    def cleanup(self) -> None:
        for fd in getattr(self, "_fds", []):
            os.close(fd)
        self._fds = []


class _Pair(Subject):
    """A subject over a connected pair made before the fork: each child keeps its end."""

    _pair: tuple[Any, ...] = ()

    def _mine(self, side: str) -> Any:
        mine, other = self._pair if side == "a" else self._pair[::-1]
        other.close()
        return mine

    def cleanup(self) -> None:
        for end in self._pair:
            end.close()
        self._pair = ()


class BareUnix(_Pair):
    name = "bare AF_UNIX loop"
    group = "baseline"
    facts = {"kernel": "AF_UNIX SOCK_STREAM socketpair"}

    def prepare(self, env: Env) -> None:
        self._pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._max = env.max_size

    def open(self, side: str, ctl: Ctl) -> Link:
        return _framed_socket_link(self._mine(side), self._max)


class BareSeqpacket(_Pair):
    name = "bare AF_UNIX seqpacket loop"
    group = "baseline"
    facts = {"kernel": "AF_UNIX SOCK_SEQPACKET socketpair, SO_SNDBUF raised to wmem_max"}

    def __init__(self) -> None:
        self._wmem_max = _proc_int("/proc/sys/net/core/wmem_max", 212992)

    def skip_reason(self, size: int) -> str | None:
        # A record must fit the send buffer (the kernel doubles SO_SNDBUF; keep ipcraft's margin).
        return f"wmem_max {self._wmem_max}" if size > self._wmem_max - 32768 else None

    def prepare(self, env: Env) -> None:
        self._pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in self._pair:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._wmem_max)
        self._max = env.max_size

    def open(self, side: str, ctl: Ctl) -> Link:
        sock = self._mine(side)
        buf = memoryview(bytearray(self._max))
        recv_into = sock.recv_into

        def recv() -> memoryview:
            return buf[:recv_into(buf)]

        return _FuncLink(sock.send, recv)


class BareSeqpacketFresh(BareSeqpacket):
    """The bare seqpacket loop receiving as ``recv_bytes`` does: into its buffer, then a fresh ``bytes``
    of the message's size per message (one allocation and one copy more than the bare loop)."""

    name = "bare AF_UNIX seqpacket loop, fresh bytes"
    facts = {**BareSeqpacket.facts, "api": "recv_into a reused buffer, then bytes() of it per message"}

    def open(self, side: str, ctl: Ctl) -> Link:
        sock = self._mine(side)
        buf = memoryview(bytearray(self._max))
        recv_into = sock.recv_into

        def recv() -> bytes:
            return buf[:recv_into(buf)].tobytes()

        return _FuncLink(sock.send, recv)


class MpPipe(_Pair):
    name = "mp.Pipe"
    group = "peer"
    facts = {"api": "send_bytes/recv_bytes"}

    def prepare(self, env: Env) -> None:
        import multiprocessing

        self._pair = multiprocessing.get_context("fork").Pipe()

    def open(self, side: str, ctl: Ctl) -> Link:
        mine = self._mine(side)
        return _FuncLink(mine.send_bytes, mine.recv_bytes, mine.close)


class MpQueue(Subject):
    name = "mp.Queue"
    group = "peer"
    facts = {"api": "put/get"}

    def prepare(self, env: Env) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self._qs = (ctx.Queue(), ctx.Queue())

    def open(self, side: str, ctl: Ctl) -> Link:
        ab, ba = self._qs
        tx, rx = (ab, ba) if side == "a" else (ba, ab)

        def close() -> None:
            for q in (tx, rx):
                q.cancel_join_thread()
                q.close()

        return _FuncLink(tx.put, rx.get, close)

    def cleanup(self) -> None:
        for q in getattr(self, "_qs", ()):
            q.close()


def _queue_link(ab: Any, ba: Any, side: str, close: Any = None) -> _FuncLink:
    """posix_ipc / sysv_ipc queues: send(data), receive() -> (data, priority or type)."""
    tx, rx = (ab, ba) if side == "a" else (ba, ab)
    receive = rx.receive

    def recv() -> bytes:
        return receive()[0]  # type: ignore[no-any-return]

    return _FuncLink(tx.send, recv, close)


class PosixIpcBare(_KernelQueue):
    name = "bare posix_ipc loop"
    facts = {"kernel": "POSIX mq"}
    module = "posix_ipc"
    knob = "/proc/sys/fs/mqueue/msgsize_max"

    def prepare(self, env: Env) -> None:
        import posix_ipc

        self._names = ["/" + env.name(), "/" + env.name()]
        self._made = [posix_ipc.MessageQueue(n, posix_ipc.O_CREX, mode=0o600, max_messages=_proc_int(
            "/proc/sys/fs/mqueue/msg_max", 10), max_message_size=self._limit) for n in self._names]

    def open(self, side: str, ctl: Ctl) -> Link:
        import posix_ipc

        ab, ba = (posix_ipc.MessageQueue(n) for n in self._names)
        return _queue_link(ab, ba, side, lambda: (ab.close(), ba.close()))

    def cleanup(self) -> None:
        for q in self._made:
            q.close()
            q.unlink()
        self._made = []


class SysvIpcBare(_KernelQueue):
    name = "bare sysv_ipc loop"
    facts = {"kernel": "System V msg"}
    module = "sysv_ipc"
    knob = "/proc/sys/kernel/msgmax"

    def prepare(self, env: Env) -> None:
        import sysv_ipc

        self._keys = [env.key(), env.key()]
        self._made = [sysv_ipc.MessageQueue(k, sysv_ipc.IPC_CREX, mode=0o600, max_message_size=self._limit)
                      for k in self._keys]

    def open(self, side: str, ctl: Ctl) -> Link:
        import sysv_ipc

        ab, ba = (sysv_ipc.MessageQueue(k, max_message_size=self._limit) for k in self._keys)
        return _queue_link(ab, ba, side)

    def cleanup(self) -> None:
        for q in self._made:
            try:
                q.remove()
            except Exception:  # noqa: BLE001 - already removed (the sweep also checks)
                pass
        self._made = []


class Zmq(_Optional):
    """Bare pyzmq PAIR sockets, the same socket type ipcraft's zmq+tcp:// and zmq+ipc:// channels use."""

    group = "peer"
    module = "zmq"

    def __init__(self, transport: str = "ipc") -> None:
        self.transport = transport
        self.name = f"pyzmq PAIR {transport}://"

    def prepare(self, env: Env) -> None:
        if self.transport == "ipc":
            self._url = "ipc://" + env.path(".zmq")
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self._url = f"tcp://127.0.0.1:{s.getsockname()[1]}"

    def open(self, side: str, ctl: Ctl) -> Link:
        import zmq

        ctx = zmq.Context()
        sock = ctx.socket(zmq.PAIR)
        if side == "b":
            sock.bind(self._url)
            ctl.put({"bound": 1})
        else:
            ctl.get(_SETUP_TIMEOUT)
            sock.connect(self._url)

        def close() -> None:
            sock.close(linger=0)
            ctx.term()

        return _FuncLink(sock.send, sock.recv, close)


class FasterFifo(_Optional):
    name = "faster-fifo Queue"
    group = "peer"
    module = "faster_fifo"

    def prepare(self, env: Env) -> None:
        from faster_fifo import Queue

        size = max(1 << 20, 8 * env.max_size)  # room for several messages of the largest size
        self._qs: tuple[Any, ...] = (Queue(max_size_bytes=size), Queue(max_size_bytes=size))

    def open(self, side: str, ctl: Ctl) -> Link:
        ab, ba = self._qs
        tx, rx = (ab, ba) if side == "a" else (ba, ab)
        return _FuncLink(tx.put, rx.get)

    def cleanup(self) -> None:
        self._qs = ()


class Iceoryx2(_Optional):
    name = "iceoryx2 pub/sub (poll)"
    group = "peer"
    spins = True
    module = "iceoryx2"

    def prepare(self, env: Env) -> None:
        base = env.name()
        self._services = (f"{base}/ab", f"{base}/ba")
        self._max = env.max_size

    def open(self, side: str, ctl: Ctl) -> Link:
        import ctypes

        import iceoryx2 as iox2

        iox2.set_log_level(iox2.LogLevel.Fatal)
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)

        def service(name: str) -> Any:
            return (node.service_builder(iox2.ServiceName.new(name))
                    .publish_subscribe(iox2.Slice[ctypes.c_uint8])
                    .enable_safe_overflow(False).subscriber_max_buffer_size(16).history_size(0)
                    .open_or_create())

        ab, ba = self._services
        rx_name, tx_name = (ba, ab) if side == "a" else (ab, ba)
        sub = service(rx_name).subscriber_builder().buffer_size(16).create()
        pub = (service(tx_name).publisher_builder().initial_max_slice_len(self._max)
               .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered).create())
        ctl.put({"ready": 1})
        ctl.get(_SETUP_TIMEOUT)
        pub.update_connections()
        memmove, string_at, receive, loan = ctypes.memmove, ctypes.string_at, sub.receive, pub.loan_slice_uninit

        def send(data: Any) -> None:
            n = len(data)
            s = loan(n)
            memmove(s.payload_ptr, bytes(data) if isinstance(data, memoryview) else data, n)
            s.assume_init().send()

        def recv() -> bytes:
            while True:
                s = receive()
                if s is not None:
                    data = string_at(s.payload_ptr, s.payload().len())
                    s.delete()
                    return data

        def close() -> None:
            pub.delete()
            sub.delete()

        return _FuncLink(send, recv, close)


def peer_subjects() -> list[Subject]:
    """The baselines, then the peers, in table order."""
    return [BarePipe(), BareUnix(), BareSeqpacket(), BareSeqpacketFresh(), PosixIpcBare(), SysvIpcBare(), MpPipe(),
            MpQueue(), Zmq(), Zmq("tcp"), FasterFifo(), Iceoryx2()]


__all__ = ("peer_subjects", "Unavailable")
