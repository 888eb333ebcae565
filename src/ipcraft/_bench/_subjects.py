"""ipcraft's own subjects: every scheme of the endpoint table through the public API, and ipcraft.pipe().

A scheme joins the bench by existing: connection schemes run as ``listen`` in B and ``connect`` in A;
queue schemes run as two queues, each process creating (and owning) the one it receives on and opening
the other's, which suits every queue family including those where the creator is the receiver
(fifo://, unix+dgram://, udp://).  A scheme whose transport module is missing, or whose transport
raises NotImplementedError, is reported as not available.  Schemes with a ``wait`` option run once per
wait mode, and once more with the zero-copy API (``send_view``/``recv_view``) when the channel has it.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from .._endpoint import SCHEMES
from .._transports import module_for
from ._harness import Ctl, Env, Link, Subject, Unavailable

_SETUP_TIMEOUT = 30.0


class _ChannelLink(Link):
    """send_bytes / recv_bytes: what the issues' targets are quoted for."""

    may_refuse = True

    def __init__(self, tx: Any, rx: Any, handles: list[Any]) -> None:
        self._handles = handles
        send, recv = tx.send_bytes, rx.recv_bytes
        self.send = send  # type: ignore[method-assign]
        self.recv = recv  # type: ignore[method-assign]

        def echo() -> None:
            send(recv())

        self.echo = echo  # type: ignore[method-assign]
        self._recv = recv

    def recv_timeout(self, timeout: float) -> Any:
        return self._recv(timeout=timeout)

    def close(self) -> None:
        for h in self._handles:
            h.close()


class _IntoLink(_ChannelLink):
    """send_bytes / recv_bytes_into one reused buffer: the same work as the bare loops' receive (no
    allocation per message), beside the allocating recv_bytes cell, which stays."""

    def __init__(self, tx: Any, rx: Any, handles: list[Any], max_size: int) -> None:
        super().__init__(tx, rx, handles)
        buf = memoryview(bytearray(max_size))
        send, recv_into = tx.send_bytes, rx.recv_bytes_into

        def recv() -> memoryview:
            return buf[:recv_into(buf)]

        def echo() -> None:
            send(buf[:recv_into(buf)])

        def recv_timeout(timeout: float) -> memoryview:
            return buf[:recv_into(buf, timeout=timeout)]

        self.recv, self.echo = recv, echo  # type: ignore[method-assign]
        self.recv_timeout = recv_timeout  # type: ignore[method-assign]


class _ViewLink(Link):
    """Zero copy on both sides: the sender reserves room and fills it in place, the receiver peeks at the
    record in place."""

    may_refuse = True

    def __init__(self, tx: Any, rx: Any, handles: list[Any]) -> None:
        self._handles = handles
        if not (hasattr(tx, "send_view") and hasattr(rx, "recv_view")):
            self.close()
            raise Unavailable("this channel has no send_view()/recv_view() (zero-copy API)")
        send_view, recv_view = tx.send_view, rx.recv_view

        def send(data: Any) -> None:
            with send_view(len(data)) as buf:
                buf[:] = data

        def recv() -> int:
            with recv_view() as v:
                return len(v)

        def echo() -> None:
            with recv_view() as v:
                with send_view(len(v)) as buf:
                    buf[:] = v

        self.send, self.recv, self.echo = send, recv, echo  # type: ignore[method-assign]
        self._recv_view = recv_view

    def recv_timeout(self, timeout: float) -> Any:
        with self._recv_view(timeout=timeout) as v:
            return bytes(v)

    def close(self) -> None:
        for h in self._handles:
            h.close()


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SchemeSubject(Subject):
    """One ipcraft URL scheme (in one wait mode, with one API)."""

    #: What each API adds to the subject's name (``bytes``, send_bytes/recv_bytes, adds nothing).
    _API_LABEL = {"bytes": "", "view": " zero-copy", "into": " recv_bytes_into"}

    def __init__(self, scheme: str, wait: str | None = None, api: str = "bytes") -> None:
        self.scheme, self.wait, self.api = scheme, wait, api
        self.info = SCHEMES[scheme]
        self.name = f"{scheme}://" + (f" {wait}" if wait else "") + self._API_LABEL[api]
        self.spins = wait == "spin"
        self.idle_ok = wait != "spin"
        self.facts = {"scheme": scheme, "family": self.info.family, "wait": wait, "api": api}
        self._urls: dict[str, str] = {}
        self._authkey = b""

    def unavailable(self) -> str | None:
        try:
            module_for(self.scheme)
        except (NotImplementedError, ImportError) as exc:  # ImportError: an optional extra is missing
            return str(exc)
        return None

    def _options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.wait:
            opts["wait"] = self.wait
        if "authkey" in self.info.options:
            opts["authkey"] = self._authkey
        elif "insecure" in self.info.options:
            opts["insecure"] = True
        return opts

    def _url(self, env: Env) -> str:
        kind = self.info.address
        if kind in ("unix", "path"):
            return f"{self.scheme}://{env.path('.' + self.scheme.replace('+', '-'))}"
        if kind == "name":
            return f"{self.scheme}://{env.name()}"
        if kind == "key":
            return f"{self.scheme}://{env.key()}"
        if kind == "host_port":
            udp = self.info.family == "queue"
            return f"{self.scheme}://127.0.0.1:{_free_port(socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)}"
        raise AssertionError(kind)

    def prepare(self, env: Env) -> None:
        self._authkey = os.urandom(16)
        self._urls = {"a": self._url(env), "b": self._url(env)}
        self._max_size = env.max_size

    def open(self, side: str, ctl: Ctl) -> Link:
        import ipcraft

        opts = self._options()
        handles: list[Any]
        tx: Any
        rx: Any
        if self.info.family == "connection":
            if side == "b":
                listener = ipcraft.listen(self._urls["b"], **opts)
                try:
                    ctl.put({"url": str(listener.endpoint)})
                    ch = listener.accept(timeout=_SETUP_TIMEOUT)
                finally:
                    listener.close()
            else:
                ch = ipcraft.connect(ctl.get(_SETUP_TIMEOUT)["url"], timeout=_SETUP_TIMEOUT, **opts)
            tx = rx = ch
            handles = [ch]
        else:
            rx = ipcraft.queue(self._urls[side], create=True, **opts)
            handles = [rx]
            try:
                ctl.put({"url": str(rx.endpoint)})
                tx = ipcraft.queue(ctl.get(_SETUP_TIMEOUT)["url"], create=False, **opts)
            except BaseException:
                rx.close()
                raise
            handles.append(tx)
        if self.api == "into":
            return _IntoLink(tx, rx, handles, self._max_size)
        return (_ViewLink if self.api == "view" else _ChannelLink)(tx, rx, handles)

    def cleanup(self) -> None:
        """Remove the queues a killed child could not (the sweep covers what this misses)."""
        if self.info.family != "queue":
            return
        import ipcraft

        for url in self._urls.values():
            try:
                q = ipcraft.queue(url, create=False, **self._options())
            except Exception:  # noqa: BLE001 - gone already (the usual case) or never made
                continue
            try:
                q.unlink()
            except Exception:  # noqa: BLE001
                pass
            finally:
                q.close()


class PipeSubject(Subject):
    """ipcraft.pipe(): a socketpair (duplex), or two one-way pipes of 1 MiB capacity."""

    def __init__(self, duplex: bool) -> None:
        self.duplex = duplex
        self.name = "ipcraft.pipe()" if duplex else "ipcraft.pipe(duplex=False)"
        self.idle_ok = True
        self.facts = {"scheme": "pipe", "family": "pipe", "duplex": duplex, "api": "bytes"}
        self._made: list[Any] = []

    def prepare(self, env: Env) -> None:
        import ipcraft

        if self.duplex:
            self._made = list(ipcraft.pipe())
        else:
            self._made = [*ipcraft.pipe(duplex=False), *ipcraft.pipe(duplex=False)]  # (r_ab, w_ab, r_ba, w_ba)

    def open(self, side: str, ctl: Ctl) -> Link:
        m = self._made
        if self.duplex:
            mine, other = (m[0], m[1]) if side == "a" else (m[1], m[0])
            other.close()
            return _ChannelLink(mine, mine, [mine])
        r_ab, w_ab, r_ba, w_ba = m
        tx, rx, unused = (w_ab, r_ba, (r_ab, w_ba)) if side == "a" else (w_ba, r_ab, (r_ba, w_ab))
        for ch in unused:
            ch.close()
        return _ChannelLink(tx, rx, [tx, rx])

    def cleanup(self) -> None:
        for ch in self._made:
            ch.close()
        self._made = []


class RelaySubject(Subject):
    """The relay's overhead: A talks shm:// to an ``ipcraft relay`` process, which talks zmq+tcp:// to B
    (one-way: A -> relay -> B; round trip: and back).  Compare with zmq+tcp:// alone."""

    name = "shm:// -> relay -> zmq+tcp://"
    idle_ok = False
    facts = {"scheme": "shm+relay+zmq+tcp", "family": "relay", "api": "bytes"}

    def __init__(self) -> None:
        self._proc: Any = None

    def unavailable(self) -> str | None:
        try:
            module_for("zmq+tcp")
        except (NotImplementedError, ImportError) as exc:
            return str(exc)
        return None

    def prepare(self, env: Env) -> None:
        import subprocess
        import sys

        self._shm = f"shm://{env.name()}"
        self._zmq = f"zmq+tcp://127.0.0.1:{_free_port(socket.SOCK_STREAM)}"
        self._proc = subprocess.Popen([sys.executable, "-m", "ipcraft", "relay", "--timeout", str(_SETUP_TIMEOUT),
                                       f"listen:{self._shm}", f"listen:{self._zmq}?insecure=true"])

    def open(self, side: str, ctl: Ctl) -> Link:
        import time

        import ipcraft

        deadline = time.monotonic() + _SETUP_TIMEOUT
        while True:
            try:
                ch = (ipcraft.connect(self._shm, timeout=_SETUP_TIMEOUT) if side == "a"
                      else ipcraft.connect(self._zmq, timeout=_SETUP_TIMEOUT, insecure=True))
                return _ChannelLink(ch, ch, [ch])
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def cleanup(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(5)  # it ends by itself when either side closes
            except Exception:  # noqa: BLE001 - stuck: stop it
                proc.kill()
                proc.wait()


#: Table order: connection schemes first, then queues, as the endpoint table lists them.
def ipcraft_subjects(waits: tuple[str, ...], schemes: set[str] | None = None) -> list[Subject]:
    """Every ipcraft subject, optionally only those of ``schemes`` (``pipe`` names ipcraft.pipe())."""
    out: list[Subject] = []
    ordered = sorted(SCHEMES.values(), key=lambda s: s.family != "connection")
    for info in ordered:
        if (schemes is not None and info.name not in schemes) or info.family == "pubsub":
            continue  # one-to-many schemes have their own subjects (_bench/_fanout.py)
        if "wait" in info.options:
            for wait in waits:
                out.append(SchemeSubject(info.name, wait))
            for wait in waits:
                out.append(SchemeSubject(info.name, wait, api="view"))
            for wait in waits:
                out.append(SchemeSubject(info.name, wait, api="into"))
        else:
            out.append(SchemeSubject(info.name))
    if schemes is None or "pipe" in schemes:
        out += [PipeSubject(True), PipeSubject(False)]
    if schemes is None or "relay" in schemes:
        out.append(RelaySubject())
    return out
