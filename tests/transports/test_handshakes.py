"""Handshakes under adversity, on every listener: bounded by their deadlines on both sides, run
concurrently (a silent client never delays a good one), refusals typed and explained, and asyncio
connects and accepts on the loop without a thread pool they could exhaust.

The hostile peers are plain sockets (they do not import ipcraft); the "other user" is a child that
drops to nobody.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import select
import socket
import struct
import threading
import time
from typing import Any

import pytest

import ipcraft
import ipcraft.aio
from ipcraft.errors import InvalidEndpoint, ProtocolError, Timeout
from ipcraft.testing import Child, unique_name

from ._peers import SCHEMES, client_url, listen, listen_args, raw_connect

_SHM_HELLO = struct.Struct("<8sIQ")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_silent_clients_do_not_delay_a_good_one(scheme: str) -> None:
    """Five connections that never speak are pending in the listener; a good client arriving after
    them is still served at once, not after five handshake timeouts (25 s before this was fixed)."""
    with listen(scheme, handshake_timeout=5) as listener:
        silent = [raw_connect(listener) for _ in range(5)]
        drained = []
        start = time.monotonic()
        while True:  # take the silent ones in: their handshakes are pending (unix://'s need nothing of them)
            try:
                drained.append(listener.accept(timeout=0.2))
            except Timeout:
                break
        assert time.monotonic() - start < 2, "accept(timeout=0.2) sat in the silent clients' handshakes"
        assert len(drained) == (5 if scheme.startswith("unix") else 0)
        url, opts = client_url(listener)
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(ipcraft.connect(url, timeout=10, **opts)))
        start = time.monotonic()
        t.start()
        server = listener.accept(timeout=10)
        served = time.monotonic() - start
        t.join(10)
        print(f"\n{scheme}: good client served {served * 1000:.1f} ms after it started, behind 5 silent ones")
        with box[0] as client, server:
            client.send("ping")
            assert server.recv(timeout=10) == "ping"
        assert served < 1.0, f"the good client waited {served:.2f} s behind silent ones"
        for s in silent:
            s.close()
        for ch in drained:
            ch.close()


@pytest.mark.timeout(30)
def test_shm_accept_is_bounded_when_a_client_stays_silent() -> None:
    """A client that takes the credential verdict and then says nothing is dropped after
    handshake_timeout; accept(timeout=2) returns Timeout on time (it hung forever before)."""
    with listen("shm", handshake_timeout=1) as listener:
        raw = raw_connect(listener)
        start = time.monotonic()
        with pytest.raises(Timeout):
            listener.accept(timeout=2)
        assert time.monotonic() - start < 4
        assert listener._impl.refused == 1 and "Timeout" in listener._impl.last_refusal
        raw.settimeout(5)
        assert raw.recv(16) == b"\x01"  # the verdict
        assert raw.recv(16) == b""  # then the listener closed it
        raw.close()


def _fake_rendezvous(name: str, ready: threading.Event, done: threading.Event, hang_up: bool) -> None:
    """An shm:// rendezvous (plain sockets) that sends its OK verdict and then stalls, or with
    ``hang_up`` reads the client's request and closes the connection."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conns = []
    try:
        srv.bind(b"\0ipcraft-shm." + name.encode())
        srv.listen(4)
        ready.set()
        srv.settimeout(10)
        while not done.is_set():
            try:
                conn, _ = srv.accept()
                conn.settimeout(10)
                conn.send(b"\x01")
                if hang_up:
                    conn.recv(_SHM_HELLO.size, socket.MSG_WAITALL)
                    conn.close()
                    return
            except OSError:
                break  # the accept timed out, or the test's wake-up connection is already gone
            conns.append(conn)
    finally:
        for conn in conns:
            conn.close()
        srv.close()


def _with_fake_rendezvous(hang_up: bool, run: Any) -> None:
    name = unique_name("fake")
    ready, done = threading.Event(), threading.Event()
    t = threading.Thread(target=_fake_rendezvous, args=(name, ready, done, hang_up))
    t.start()
    try:
        assert ready.wait(10)
        run(f"shm://{name}")
    finally:
        done.set()
        with socket.socket(socket.AF_UNIX) as wake:
            wake.connect_ex(b"\0ipcraft-shm." + name.encode())  # wake the server's accept
        t.join(15)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", [{"timeout": 1}, {"handshake_timeout": 1}])
def test_shm_connect_is_bounded_when_the_server_stalls_after_its_verdict(how: dict[str, Any]) -> None:
    """connect() to an shm:// server that sends its verdict and never its offer raises Timeout
    within the caller's timeout or the handshake_timeout (it hung forever before)."""
    def run(url: str) -> None:
        start = time.monotonic()
        with pytest.raises(Timeout, match="handshake"):
            ipcraft.connect(url, **how)
        assert time.monotonic() - start < 3

    _with_fake_rendezvous(False, run)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("capacity", [1 << 31, 1 << 63, (1 << 64) - 1])
def test_shm_listener_keeps_serving_after_an_absurd_capacity_request(capacity: int) -> None:
    """A client asking for a ring larger than ipcraft allows is dropped (a ProtocolError counted in
    refused, its connection closed); the listener then serves the next client (a bare ValueError
    escaped accept() before)."""
    with listen("shm") as listener:
        raw = raw_connect(listener)
        raw.sendall(_SHM_HELLO.pack(b"IPCSHM\x00\x01", 1, capacity))
        with pytest.raises(Timeout):
            listener.accept(timeout=0.5)
        assert listener._impl.refused == 1
        assert listener._impl.last_refusal.startswith("ProtocolError"), listener._impl.last_refusal
        raw.settimeout(5)
        assert raw.recv(16) == b"\x01" and raw.recv(16) == b""
        raw.close()
        url, _ = client_url(listener)
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(listener.accept(timeout=10)))
        t.start()
        with ipcraft.connect(url, timeout=10) as client:
            t.join(10)
            with box[0] as server:
                client.send(capacity)
                assert server.recv(timeout=10) == capacity


def test_shm_client_asking_an_absurd_capacity_gets_a_typed_error_before_any_socket() -> None:
    """An ipcraft client refuses a capacity beyond the maximum itself: InvalidEndpoint naming it."""
    with listen("shm") as listener:
        url, _ = client_url(listener)
        with pytest.raises(InvalidEndpoint, match="capacity"):
            ipcraft.connect(url, timeout=5, capacity=1 << 40)


@pytest.mark.timeout(30)
def test_shm_client_is_told_why_the_server_dropped_it() -> None:
    """When the server drops the handshake, the client's ProtocolError says what it had asked for."""
    def run(url: str) -> None:
        with pytest.raises(ProtocolError, match="asked for capacity=8192"):
            ipcraft.connect(url, timeout=5, capacity=5000)

    _with_fake_rendezvous(True, run)


class _CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, counting the jobs it was given."""

    submitted = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        type(self).submitted += 1
        return super().submit(*args, **kwargs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_aio_connects_and_accepts_do_not_starve_each_other(scheme: str) -> None:
    """20 concurrent aio connects and an aio listener in one loop (with a one-worker default pool)
    all complete at once, and none of their handshakes used the pool (7 clients took 10 s and 6
    failed before)."""
    n = 20

    async def main() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        pool = _CountingExecutor(max_workers=1)
        _CountingExecutor.submitted = 0
        loop.set_default_executor(pool)
        lurl, lopts = listen_args(scheme, handshake_timeout=5)
        listener = await ipcraft.aio.listen(lurl, **lopts)
        url, opts = client_url(listener)
        start = time.monotonic()
        servers: list[Any] = []

        async def serve() -> None:
            for _ in range(n):
                servers.append(await listener.accept(timeout=10))

        server_task = asyncio.create_task(serve())
        clients = await asyncio.gather(*(ipcraft.aio.connect(url, timeout=10, **opts) for _ in range(n)))
        await server_task
        elapsed = time.monotonic() - start
        used = _CountingExecutor.submitted
        for i, c in enumerate(clients):
            await c.send(i)
        got = {await s.recv(timeout=10) for s in servers}
        assert got == set(range(n))  # every client reached its own server end
        for ch in (*clients, *servers):
            ch.close()
        listener.close()
        return elapsed, used

    elapsed, used = asyncio.run(main())
    print(f"\n{scheme}: {n} aio clients connected and accepted in one loop in {elapsed * 1000:.0f} ms")
    assert used == 0, f"{used} handshake jobs went to the default executor"
    assert elapsed < 5


@pytest.mark.timeout(30)
def test_connect_to_a_full_unix_backlog_waits_without_spinning() -> None:
    """A Unix listener's full backlog makes connect() pause and retry (poll cannot wait for room on
    such a socket): it times out on time without burning a CPU, and gets in once there is room."""
    url = f"unix:@{unique_name('backlog')}"
    with ipcraft.listen(url, backlog=1) as listener:
        raw = [raw_connect(listener) for _ in range(2)]  # fill the backlog (the kernel allows backlog + 1)
        cpu, start = time.process_time(), time.monotonic()
        with pytest.raises(Timeout):
            ipcraft.connect(url, timeout=0.5)
        spent_cpu, waited = time.process_time() - cpu, time.monotonic() - start
        assert 0.45 < waited < 2
        assert spent_cpu < 0.25, f"connect() spun: {spent_cpu:.2f} s of CPU in {waited:.2f} s"
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(ipcraft.connect(url, timeout=10)))
        t.start()
        time.sleep(0.2)
        drained = [listener.accept(timeout=5) for _ in range(3)]  # the two raw ones, then the waiting client
        t.join(10)
        with box[0] as client:
            client.send("in")
            assert "in" in [_try_recv(ch) for ch in drained]
        for ch in drained:
            ch.close()
        for s in raw:
            s.close()


def _try_recv(ch: Any) -> Any:
    try:
        return ch.recv(timeout=2)
    except Timeout:
        return None


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_listener_fileno_is_readable_while_a_client_waits_and_quiet_otherwise(scheme: str) -> None:
    """Listener.fileno() (an epoll descriptor) works with select(): quiet with nobody there, readable
    when a client connects, and readable again when a pending handshake can move on."""
    with listen(scheme, handshake_timeout=10) as listener:
        fd = listener.fileno()
        assert select.select([fd], [], [], 0.05)[0] == []
        url, opts = client_url(listener)
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(ipcraft.connect(url, timeout=10, **opts)))
        t.start()
        server = None
        end = time.monotonic() + 10
        while server is None and time.monotonic() < end:
            if select.select([fd], [], [], 1)[0]:
                try:
                    server = listener.accept(timeout=0)  # each readiness moves the handshake on
                except Timeout:
                    pass
        t.join(10)
        assert server is not None
        with server, box[0] as client:
            client.send(1)
            assert server.recv(timeout=5) == 1
        assert select.select([fd], [], [], 0.05)[0] == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scheme", ["tcp", "shm"])
def test_aio_accept_drops_a_silent_client_when_its_handshake_timeout_passes(scheme: str) -> None:
    """An aio accept() waiting for clients wakes when a silent client's handshake_timeout passes and
    drops it then (its descriptor freed), not only when the accept itself ends."""

    async def main() -> int:
        url, opts = listen_args(scheme, handshake_timeout=0.3)
        listener = await ipcraft.aio.listen(url, **opts)
        silent = raw_connect(listener)
        task = asyncio.create_task(listener.accept(timeout=10))
        await asyncio.sleep(1.0)
        during = listener._sync._impl.refused
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        silent.close()
        listener.close()
        return during

    assert asyncio.run(main()) == 1


def _accept_one_and_echo(listener: Any) -> str:
    with listener.accept(timeout=15) as ch:
        msg = ch.recv(timeout=10)
        ch.send([msg, os.getpid()])
        return str(msg)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_prefork_children_accept_on_one_listener(scheme: str) -> None:
    """Two children forked after listen() (while the parent has a silent client's handshake pending)
    each accept a client on the shared socket; the parent's pending handshake stays the parent's."""
    with listen(scheme, handshake_timeout=20) as listener:
        silent = raw_connect(listener)
        with contextlib.suppress(Timeout):
            listener.accept(timeout=0.2)  # unix:// hands the silent one out; tcp:// and shm:// keep it pending
        pending_before = len(listener._impl._pending)
        kids = [Child(_accept_one_and_echo, listener) for _ in range(2)]
        url, opts = client_url(listener)
        pids = set()
        for i in range(2):
            with ipcraft.connect(url, timeout=15, **opts) as ch:
                ch.send(f"client {i}")
                echoed, pid = ch.recv(timeout=15)
                assert echoed == f"client {i}"
                pids.add(pid)
        assert sorted(k.result(20) for k in kids) == ["client 0", "client 1"]
        assert pids == {k.pid for k in kids}
        assert len(listener._impl._pending) == pending_before  # the parent still holds its own
        silent.close()
