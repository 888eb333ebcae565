"""The load suite (``-m load``; also part of the default run): many concurrent clients against one
listener, silent connections beside good ones, and clients that send garbage and vanish.

Loopback only, bounded in count and time; the figures go to the run's summary ("figures" section).
"""

from __future__ import annotations

import asyncio
import os
import random
import selectors
import socket
import struct
import threading
import time
from typing import Any

import pytest

import ipcraft
import ipcraft.aio
from ipcraft.errors import ChannelClosed, IPCError, Timeout
from ipcraft.testing import Child, unique_name

from ._peers import client_url, listen, raw_connect

pytestmark = pytest.mark.load

CLIENTS = 500
ROUNDS = 10
PROCESSES = 4  # client processes for the sync test, each holding CLIENTS / PROCESSES connections


def _client_batch(url: str, n: int, rounds: int, go: int) -> int:
    """Open ``n`` connections, wait for the word on pipe ``go`` (every client of every process is
    connected), then do ``rounds`` round trips on each, all connections at once."""
    chans = [ipcraft.connect(url, timeout=30) for _ in range(n)]
    assert os.read(go, 1) == b"g"
    pid = os.getpid()
    for r in range(rounds):
        for i, ch in enumerate(chans):
            ch.send([pid, i, r])
        for i, ch in enumerate(chans):
            got = ch.recv(timeout=30)
            assert got == [pid, i, r], (got, [pid, i, r])
    for ch in chans:
        ch.close()
    return n * rounds


@pytest.mark.timeout(120)
def test_500_concurrent_unix_clients_against_one_listener(figures: Any) -> None:
    """500 unix:// clients in 4 processes, all connected at once to one listener served by one
    thread (selectors), each doing 10 round trips."""
    url = f"unix:@{unique_name('load')}"
    with ipcraft.listen(url) as listener:  # the default backlog (128): most clients find it full
        start = time.monotonic()
        go_r, go_w = os.pipe()
        kids = [Child(_client_batch, url, CLIENTS // PROCESSES, ROUNDS, go_r) for _ in range(PROCESSES)]
        os.close(go_r)
        sel = selectors.DefaultSelector()
        sel.register(listener.fileno(), selectors.EVENT_READ, None)
        echoed = finished = peak = 0
        open_now = 0
        try:
            while finished < CLIENTS:
                ready = sel.select(timeout=30)
                assert ready, f"no progress for 30 s ({finished} clients finished, {echoed} echoes)"
                for key, _ in ready:
                    if key.data is None:
                        try:
                            ch = listener.accept(timeout=0)
                        except Timeout:
                            continue
                        sel.register(ch.fileno(), selectors.EVENT_READ, ch)
                        open_now += 1
                        peak = max(peak, open_now)
                        if peak == CLIENTS and open_now == CLIENTS:
                            os.write(go_w, b"g" * PROCESSES)  # all connected: start the round trips
                        continue
                    ch = key.data
                    try:
                        msg = ch.recv(timeout=10)
                    except ChannelClosed:
                        sel.unregister(ch.fileno())
                        ch.close()
                        open_now -= 1
                        finished += 1
                        continue
                    ch.send(msg)
                    echoed += 1
            done = sum(k.result(60) for k in kids)
        finally:
            os.close(go_w)
            for key in list(sel.get_map().values()):
                if key.data is not None:
                    key.data.close()
            sel.close()
        elapsed = time.monotonic() - start
    figures(f"{CLIENTS} unix:// clients (sync, {PROCESSES} processes, up to {peak} connected at once), "
            f"{echoed} round trips in {elapsed:.2f} s ({echoed / elapsed:.0f}/s; "
            f"load average {os.getloadavg()[0]:.2f})")
    assert echoed == done == CLIENTS * ROUNDS
    assert peak == CLIENTS


@pytest.mark.timeout(120)
def test_500_aio_clients_and_an_aio_listener_in_one_loop(figures: Any) -> None:
    """500 ipcraft.aio clients and the aio listener serving them share one event loop; each client
    does 10 round trips; everything finishes within seconds."""
    url = f"unix:@{unique_name('aload')}"

    async def main() -> tuple[float, float, int]:
        listener = await ipcraft.aio.listen(url)  # the default backlog (128): most find it full
        served = 0
        connected = asyncio.Event()
        count = 0

        async def serve_one(ch: Any) -> None:
            nonlocal served
            with ch:
                for _ in range(ROUNDS):
                    await ch.send(await ch.recv(timeout=30))
                    served += 1

        async def server() -> None:
            tasks = []
            for _ in range(CLIENTS):
                tasks.append(asyncio.create_task(serve_one(await listener.accept(timeout=30))))
            await asyncio.gather(*tasks)

        async def client(i: int) -> None:
            nonlocal count
            ch = await ipcraft.aio.connect(url, timeout=30)
            count += 1
            if count == CLIENTS:
                connected.set()
            await connected.wait()  # every client connected before the first round trip
            with ch:
                for r in range(ROUNDS):
                    await ch.send([i, r])
                    assert await ch.recv(timeout=30) == [i, r]

        start = time.monotonic()
        srv = asyncio.create_task(server())
        clients = asyncio.gather(*(client(i) for i in range(CLIENTS)))
        await asyncio.wait_for(connected.wait(), 60)
        all_connected = time.monotonic() - start
        await asyncio.wait_for(clients, 60)
        await asyncio.wait_for(srv, 60)
        listener.close()
        return all_connected, time.monotonic() - start, served

    all_connected, elapsed, served = asyncio.run(main())
    figures(f"{CLIENTS} aio unix:// clients + aio listener in one loop: all connected in {all_connected:.2f} s, "
            f"{served} round trips done in {elapsed:.2f} s (load average {os.getloadavg()[0]:.2f})")
    assert served == CLIENTS * ROUNDS
    assert elapsed < 30, f"{CLIENTS} aio clients took {elapsed:.1f} s"


def _serve_until(listener: Any, stop: threading.Event, accepted: list[Any]) -> None:
    while not stop.is_set():
        try:
            accepted.append(listener.accept(timeout=0.05))
        except Timeout:
            pass


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheme", ["unix", "tcp", "shm"])
def test_50_silent_connections_never_delay_good_clients(scheme: str, figures: Any) -> None:
    """50 connections that never speak are pending while 20 good clients connect one after another;
    each good client is served within 100 ms."""
    with listen(scheme, handshake_timeout=60) as listener:
        silent = [raw_connect(listener) for _ in range(50)]
        stop = threading.Event()
        accepted: list[Any] = []
        server = threading.Thread(target=_serve_until, args=(listener, stop, accepted))
        server.start()
        url, opts = client_url(listener)
        waits = []
        try:
            time.sleep(0.2)  # the listener takes the silent ones in first
            for i in range(20):
                start = time.monotonic()
                with ipcraft.connect(url, timeout=10, **opts) as ch:
                    waits.append(time.monotonic() - start)
                    ch.send(i)
        finally:
            stop.set()
            server.join(10)
            for s in silent:
                s.close()
            for ch in accepted:
                ch.close()
        refused = listener._impl.refused
    figures(f"{scheme}: 20 good clients beside 50 silent connections served in max "
            f"{max(waits) * 1000:.1f} ms, median {sorted(waits)[10] * 1000:.1f} ms "
            f"(load average {os.getloadavg()[0]:.2f})")
    assert max(waits) < 0.1, [round(w * 1000, 1) for w in waits]
    assert refused == 0  # nobody timed out: the silent ones are still pending at 60 s


def _garbage(rng: random.Random, scheme: str) -> bytes:
    """Bytes a hostile client sends: random, or a truncated or corrupted start of the right hello."""
    hello = {"tcp": b"IPCRAFT\x01\x00" + bytes(32), "shm": struct.pack("<8sIQ", b"IPCSHM\x00\x01", 1, 0),
             "unix": b"IPCF" + bytes(12)}[scheme]
    kind = rng.randrange(3)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 1:
        return hello[:rng.randrange(1, len(hello))]
    data = bytearray(hello + rng.randbytes(rng.randrange(0, 64)))
    data[rng.randrange(len(hello))] ^= 1 << rng.randrange(8)
    return bytes(data)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheme", ["unix", "tcp", "shm"])
def test_listener_keeps_serving_while_clients_send_garbage_and_vanish(scheme: str, figures: Any) -> None:
    """200 clients send garbage (random, truncated or corrupted handshakes or frames) and vanish (TCP
    with a reset), interleaved with 50 good clients; every good one is served, and the server sees
    only typed errors."""
    rng = random.Random(1414)
    with listen(scheme, handshake_timeout=2) as listener:
        stop = threading.Event()
        accepted: list[Any] = []
        server = threading.Thread(target=_serve_until, args=(listener, stop, accepted))
        server.start()
        url, opts = client_url(listener)
        good = hostile = 0
        start = time.monotonic()
        try:
            for i in range(250):
                if i % 5 == 4:
                    with ipcraft.connect(url, timeout=10, **opts) as ch:
                        ch.send(i)
                    good += 1
                    continue
                s = raw_connect(listener)
                if scheme == "tcp":
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                try:
                    s.send(_garbage(rng, scheme))
                except OSError:
                    pass  # the listener already dropped it
                s.close()
                hostile += 1
            until = time.monotonic() + 10  # let the listener finish with the last ones
            while listener._impl.refused + len(accepted) < good + hostile and time.monotonic() < until:
                time.sleep(0.01)
        finally:
            stop.set()
            server.join(10)
        elapsed = time.monotonic() - start
        outcomes: dict[str, int] = {}
        for ch in accepted:  # unix:// clients pass the handshake: their garbage reaches the channel
            try:
                got = ch.recv(timeout=5)
                outcomes["message"] = outcomes.get("message", 0) + 1
                assert isinstance(got, int)
            except IPCError as exc:
                outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
            ch.close()
        refused = listener._impl.refused
    figures(f"{scheme}: {hostile} garbage clients and {good} good ones in {elapsed:.2f} s; listener refused "
            f"{refused}, accepted {len(accepted)}, outcomes on accepted channels {outcomes}")
    assert outcomes.get("message", 0) == good
    if scheme == "unix":  # the credential check is all unix:// asks: garbage reaches the channel, unless
        assert len(accepted) + refused == good + hostile  # the client was gone before its verdict
    else:  # the handshake catches every hostile client
        assert (len(accepted), refused) == (good, hostile)
