"""zmq+tcp:// and zmq+ipc://: real processes over 127.0.0.1 (and a socket file), real CURVE keys.

Each child makes its own ZeroMQ sockets after the fork (a ZeroMQ socket cannot cross fork()), which is
also why the conformance checks that fork an open channel are run here as multi-process tests of
their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

zmq = pytest.importorskip("zmq", reason="pyzmq (the ipcraft[zmq] extra) is not installed")

import ipcraft  # noqa: E402
import ipcraft.aio  # noqa: E402
from ipcraft._transports.zeromq import generate_keypair  # noqa: E402
from ipcraft.errors import (  # noqa: E402
    AuthenticationError,
    ChannelClosed,
    HandleClosed,
    InvalidEndpoint,
    PeerVanished,
    Timeout,
)
from ipcraft.testing import Child, check_channel  # noqa: E402

LOCAL = "zmq+tcp://127.0.0.1:0"
INSECURE = {"insecure": True}
needs_curve = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq has no CURVE (libsodium)")


@pytest.fixture(autouse=True, params=["native", "python"])
def fast_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs over the C fast path (_native.ZmqFast, libzmq called through the copy pyzmq
    loaded) and over the Python one that serves where that copy cannot be found."""
    from ipcraft._transports import zeromq

    monkeypatch.setattr(zeromq, "_USE_NATIVE", request.param == "native")
    return str(request.param)


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Any]:
    """A server pair, an admitted client pair (its public key in clients/) and an outsider's pair."""
    out: dict[str, Any] = {}
    for name in ("server", "client", "outsider"):
        out[name] = generate_keypair(tmp_path, name)
    (tmp_path / "clients").mkdir()
    shutil.copy(out["client"][0], tmp_path / "clients")
    out["clients"] = str(tmp_path / "clients")
    return out


def _server_opts(keys: dict[str, Any]) -> dict[str, Any]:
    return {"curve_keys": str(keys["server"][1]), "curve_clients": keys["clients"]}


def _client_opts(keys: dict[str, Any], who: str = "client") -> dict[str, Any]:
    return {"curve_keys": str(keys[who][1]), "curve_server": str(keys["server"][0])}


def _plain_url(endpoint: ipcraft.Endpoint) -> str:
    return f"{endpoint.scheme}://{endpoint.address}"


# -- pairs -----------------------------------------------------------------------------------------------

def _echo_client(url: str, n: int, opts: dict[str, Any]) -> tuple[list[Any], bool]:
    got = []
    with ipcraft.connect(url, timeout=10, **opts) as ch:
        for i in range(n):
            ch.send({"i": i, "blob": bytes([i % 256]) * (i * 997 % 70000)})
            got.append(ch.recv(timeout=10))
        ch.send_bytes(b"raw")
        got.append(ch.recv(timeout=10))
        return got, ch.authenticated


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", ["tcp", "ipc"])
def test_pair_in_two_processes_both_ways_then_end_of_stream(scheme: str, tmp_ipc_dir: str) -> None:
    """A child connects, sends 50 objects of many sizes and gets each echoed; bytes stay bytes; the
    listener's channel reports the peer's address; the child's close ends the stream (ChannelClosed)."""
    url = LOCAL if scheme == "tcp" else f"zmq+ipc://{tmp_ipc_dir}/pair.sock"
    with ipcraft.listen(url, **INSECURE) as listener:
        child = Child(_echo_client, _plain_url(listener.endpoint), 50, INSECURE)
        with listener.accept(timeout=10) as ch:
            if scheme == "tcp":
                assert ch.peer.address in ("127.0.0.1", "::ffff:127.0.0.1")
            for _ in range(50):
                msg = ch.recv(timeout=10)
                ch.send({"echo": msg["i"], "n": len(msg["blob"])})
            assert ch.recv(timeout=10) == b"raw"
            ch.send_bytes(b"back")
            with pytest.raises(ChannelClosed):
                ch.recv(timeout=10)
            got, authenticated = child.result(30)
    assert got[:50] == [{"echo": i, "n": i * 997 % 70000} for i in range(50)]
    assert got[50] == b"back" and authenticated is False
    if scheme == "ipc":
        assert os.listdir(tmp_ipc_dir) == []  # the listener's and the per-peer socket files are gone


def _serve_n(url: str, n: int, opts: dict[str, Any]) -> list[int]:
    served = []
    with ipcraft.listen(url, **opts) as listener:
        for _ in range(n):
            with listener.accept(timeout=10) as ch:
                served.append(ch.recv(timeout=10))
                ch.send(served[-1] * 2)
    return served


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
def test_each_client_is_its_own_channel() -> None:
    """Three clients, one after another in this process, each get their own answer from a child
    listener (one PAIR socket per accepted peer)."""
    port = _free_port()
    url = f"zmq+tcp://127.0.0.1:{port}"
    child = Child(_serve_n, url, 3, INSECURE)
    answers = []
    for i in range(3):
        deadline = time.monotonic() + 10
        while True:
            try:
                with ipcraft.connect(url, timeout=2, **INSECURE) as ch:
                    ch.send(i + 10)
                    answers.append(ch.recv(timeout=10))
                break
            except Timeout:
                assert time.monotonic() < deadline
    assert child.result(30) == [10, 11, 12] and answers == [20, 22, 24]


def _echo_all(url: str) -> int:
    n = 0
    with ipcraft.connect(url, timeout=10, **INSECURE) as ch:
        for msg in ch:
            ch.send_bytes(msg)
            n += 1
    return n


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hwm", [1000, 2])
def test_one_channel_sends_in_one_thread_while_another_receives(hwm: int) -> None:
    """ZeroMQ sockets are not thread-safe; a channel is: one thread sends 20,000 messages while another
    receives their echoes from a child process, concurrently on the same channel, all in order.  With
    a high-water mark of 2 the sender waits for room every few messages while the receiving thread
    consumes ZeroMQ's edge-triggered signals: a sender that slept on ZeroMQ's FD alone would miss the
    room and sleep 100 ms each time (a quarter of an hour here)."""
    n = 20_000
    with ipcraft.listen(LOCAL, hwm=hwm, **INSECURE) as listener:
        child = Child(_echo_all, _plain_url(listener.endpoint))
        with listener.accept(timeout=10) as ch:
            sender = threading.Thread(target=lambda: [ch.send_bytes(i.to_bytes(4, "little")) for i in range(n)])
            sender.start()
            got = [int.from_bytes(ch.recv_bytes(timeout=20), "little") for _ in range(n)]
            sender.join(20)
        assert got == list(range(n))
        assert child.result(30) == n


def _count_all(url: str) -> int:
    n = 0
    with ipcraft.connect(url, timeout=10, **INSECURE) as ch:
        for _ in ch:
            n += 1
    return n


@pytest.mark.timeout(60)
def test_a_sender_waiting_for_room_wakes_while_another_thread_waits_for_nothing() -> None:
    """One thread waits to receive (nothing comes: the peer only drains) while another sends 20,000
    messages through a high-water mark of 2, as in a relay's two directions: the receiver's reads of
    ZMQ_EVENTS consume the signals of ZeroMQ's FD, and a sender that was not told would sleep 100 ms
    at every full queue (minutes here)."""
    n = 20_000
    with ipcraft.listen(LOCAL, hwm=2, **INSECURE) as listener:
        child = Child(_count_all, _plain_url(listener.endpoint))
        with listener.accept(timeout=10) as ch:
            stop = threading.Event()

            def idle_receiver() -> None:
                while not stop.is_set():
                    with contextlib.suppress(Timeout):
                        ch.recv_bytes(timeout=0.2)

            receiver = threading.Thread(target=idle_receiver)
            receiver.start()
            try:
                for i in range(n):
                    ch.send_bytes(i.to_bytes(4, "little"))
            finally:
                stop.set()
                receiver.join(10)
        assert child.result(30) == n


def _local_pair() -> tuple[Any, Any]:
    """A connected zmq+tcp:// pair, both ends in this process (linger=0.2: close() waits that long for
    the peer's answer)."""
    with ipcraft.listen(LOCAL, linger=0.2, **INSECURE) as listener:
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(listener.accept(timeout=10)))
        t.start()
        try:
            a = ipcraft.connect(_plain_url(listener.endpoint), timeout=10, linger=0.2, **INSECURE)
        finally:
            t.join()
    return a, box[0]


@pytest.mark.timeout(60)
def test_small_and_large_messages_through_both_receive_paths_and_malformed_frames() -> None:
    """Messages under and over the zero-copy size (a large one is received as a ZeroMQ frame, the
    next small one as bytes again) arrive intact through recv_bytes without a timeout (the fast path)
    and with one (the general path); a malformed frame of either size, written on the raw socket, is
    a ProtocolError and the channel goes on."""
    from ipcraft.errors import ProtocolError

    a, b = _local_pair()
    with a, b:
        raw = a.extra("zmq_socket")
        sizes = [0, 64, 65535, 65536, 1 << 20, 64, 1 << 20, 200_000, 10, 70_000]
        for fast in (True, False):
            for i, n in enumerate(sizes):
                msg = bytes([i + 1]) * n
                a.send_bytes(msg)
                got = b.recv_bytes() if fast else b.recv_bytes(timeout=10)
                assert got == msg
            a.send({"obj": b"x" * 100_000})  # a serializer's frame, decoded from the frame's buffer
            assert b.recv(timeout=10) == {"obj": b"x" * 100_000}
        for bad in (b"\x00" * 100_000, b"\x00" * 20, b"\xa1\x00\x00\x00\x09\x00\x00\x00short"):
            for fast in (True, False):
                a.send_bytes(b"y" * 100_000)  # the next receive takes a frame
                assert (b.recv_bytes() if fast else b.recv_bytes(timeout=10)) == b"y" * 100_000
                raw.send(bad)
                with pytest.raises(ProtocolError):
                    b.recv_bytes() if fast else b.recv_bytes(timeout=10)
                a.send_bytes(b"after")
                assert (b.recv_bytes() if fast else b.recv_bytes(timeout=10)) == b"after"


def test_the_c_fast_path_reaches_pyzmqs_own_libzmq(fast_path: str) -> None:
    """With pyzmq's libzmq loaded the channel's fast path is _native.ZmqFast (it is the socket's lock
    too), found through pyzmq's own extension, no second copy of libzmq; turned off, it is Python's."""
    from ipcraft import _native
    from ipcraft._transports import zeromq

    maps_before = Path("/proc/self/maps").read_text().count("libzmq")
    a, b = _local_pair()
    with a, b:
        t = a._transport
        if fast_path == "native":
            assert isinstance(t._fast, _native.ZmqFast) and t._lock is t._fast and t._f is t._fast
            assert zeromq._zmq_lib and Path(zeromq._zmq_lib).exists()
            assert a._fast_send == t._fast.try_send and b._fast_recv == b._transport._fast.try_recv
        else:
            assert t._fast is None and not isinstance(t._lock, _native.ZmqFast)
        a.send_bytes(b"x" * 64)
        a.send_bytes(memoryview(b"..y..")[2:3])
        a.send({"sid": "msgpack"})
        assert b.recv_bytes(timeout=10) == b"x" * 64
        assert b.recv_bytes() == b"y"  # (if it has not arrived yet, the general path waits for it)
        assert b.recv() == {"sid": "msgpack"}
    assert Path("/proc/self/maps").read_text().count("libzmq") == maps_before


@pytest.mark.timeout(60)
def test_a_thread_asleep_in_a_blocking_receive_and_others_using_the_channel(fast_path: str) -> None:
    """A receive without a timeout sleeps (over the C path: in _native.ZmqFast.wait_recv, one slice at a
    time); meanwhile the descriptors are kept exact (``track``) for the other threads' operations on
    the same socket, and the message that comes wakes it."""
    a, b = _local_pair()
    got: list[Any] = []

    def receive() -> None:
        got.append(b.recv_bytes())

    with a, b:
        th = threading.Thread(target=receive)
        th.start()
        deadline = time.monotonic() + 10
        while not b._transport._f.track and time.monotonic() < deadline:
            time.sleep(0.001)
        assert b._transport._f.track  # the sleeper is counted: every other operation keeps the eventfd exact
        b.send_bytes(b"from another thread")
        time.sleep(0.05)
        a.send_bytes(b"hello")
        th.join(10)
        assert got == [b"hello"] and a.recv_bytes(timeout=10) == b"from another thread"
        assert not b._transport._f.track


@pytest.mark.timeout(60)
def test_close_from_another_thread_ends_a_blocked_receive_with_handle_closed() -> None:
    """close() says goodbye (it waits for the peer's answer, up to linger=) while another thread of
    the channel sleeps in a receive: both share the socket's poll object no more than one at a time,
    and the sleeper ends with HandleClosed."""
    a, b = _local_pair()
    got: list[Any] = []

    def receive() -> None:
        try:
            got.append(b.recv_bytes())
        except HandleClosed as exc:
            got.append(exc)

    with a:
        th = threading.Thread(target=receive)
        th.start()
        time.sleep(0.3)  # past the first slice: the Python wait loop's poll, on either path
        b.close()
        th.join(10)
        assert not th.is_alive() and len(got) == 1 and isinstance(got[0], HandleClosed)


@pytest.mark.timeout(60)
def test_both_ends_send_and_receive_in_four_threads_at_once() -> None:
    """The fast path only tries the socket's lock and leaves a contended call to the general path,
    which waits for it: both ends of a pair in this process, each sending 10,000 messages in one thread
    while another thread receives on the same channel, lose, duplicate and reorder nothing."""
    n = 10_000
    a, b = _local_pair()
    got: dict[str, list[int]] = {"a": [], "b": []}

    def send(ch: Any) -> None:
        for i in range(n):
            ch.send_bytes(i.to_bytes(4, "little"))

    def recv(ch: Any, name: str) -> None:
        for k in range(n):  # the fast path and the general one, alternately in runs
            m = ch.recv_bytes() if k % 5 else ch.recv_bytes(timeout=20)
            got[name].append(int.from_bytes(m, "little"))

    with a, b:
        threads = [threading.Thread(target=send, args=(a,)), threading.Thread(target=send, args=(b,)),
                   threading.Thread(target=recv, args=(a, "a")), threading.Thread(target=recv, args=(b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        assert not any(t.is_alive() for t in threads)
    assert got == {"a": list(range(n)), "b": list(range(n))}


# -- work queue ------------------------------------------------------------------------------------------

def _consumer(url: str) -> dict[int, int]:
    got: dict[int, int] = {}
    with ipcraft.queue(url, role="pull", **INSECURE) as q:
        while True:
            msg = q.recv(timeout=30)
            if msg == "stop":
                return got
            assert msg["seq"] not in got
            assert zlib.crc32(msg["data"]) == msg["crc"]
            got[msg["seq"]] = msg["crc"]


@pytest.mark.timeout(90)
def test_work_queue_one_producer_three_consumers_each_message_exactly_once() -> None:
    """A bound PUSH (role=push) deals 3000 checksummed messages to 3 consumer processes: every
    message arrives exactly once, intact, and each consumer got a share."""
    n = 3000
    with ipcraft.queue(LOCAL, create=True, role="push", **INSECURE) as q:
        url = _plain_url(q.endpoint)
        children = [Child(_consumer, url) for _ in range(3)]
        deadline = time.monotonic() + 20
        while q.extra("peers") < 3:
            assert time.monotonic() < deadline, "the consumers did not connect"
            time.sleep(0.02)
        expected = {}
        for seq in range(n):
            data = os.urandom(seq % 500)
            expected[seq] = zlib.crc32(data)
            q.send({"seq": seq, "data": data, "crc": expected[seq]}, timeout=10)
        pending = list(children)
        while pending:  # one "stop" per consumer; stops to a consumer that already left are lost
            q.send("stop", timeout=10)
            time.sleep(0.05)
            pending = [c for c in pending if os.waitid(os.P_PID, c.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None]
    results = [c.result(30) for c in children]
    merged: dict[int, int] = {}
    for r in results:
        assert r, "a consumer got no share"
        assert not merged.keys() & r.keys()
        merged.update(r)
    assert merged == expected


def test_queue_handle_only_does_its_role() -> None:
    """A PULL handle cannot send and a PUSH handle cannot receive: io.UnsupportedOperation."""
    import io

    with ipcraft.queue(LOCAL, create=True, **INSECURE) as pull:
        with ipcraft.queue(_plain_url(pull.endpoint), **INSECURE) as push:
            with pytest.raises(io.UnsupportedOperation):
                pull.send(1)
            with pytest.raises(io.UnsupportedOperation):
                push.recv(timeout=0)
            push.send(7)
            assert pull.recv(timeout=10) == 7


def test_non_forking_conformance_checks_over_a_queue_and_a_pair() -> None:
    """check_channel's checks that keep both ends in this process, over a PUSH/PULL queue and a pair."""
    def make_queue() -> tuple[Any, Any]:
        pull = ipcraft.queue(LOCAL, create=True, **INSECURE)
        push = ipcraft.queue(_plain_url(pull.endpoint), **INSECURE)
        return push, pull

    check_channel(make_queue, eof=False, duplex=False,
                  checks=["objects", "bytes_api", "timeouts", "own_close", "queue_has_no_end", "busy"])
    # _local_pair's linger: here the reader reads only after the sender's close()
    check_channel(_local_pair, checks=["objects", "bytes_api", "timeouts", "own_close", "peer_close", "busy"])


# -- readiness: fileno() with ZeroMQ's edge-triggered FD, poll(), asyncio ----------------------------------

def _send_burst(url: str, n: int) -> None:
    with ipcraft.queue(url, **INSECURE) as q:
        for i in range(n):
            q.send(i, timeout=10)


@pytest.mark.timeout(60)
def test_fileno_stays_readable_while_a_message_waits() -> None:
    """A burst of 20 messages from another process: after each recv, select() on fileno() says
    readable again as long as a message is left (the edge-triggered FD would not), and poll(0) agrees."""
    with ipcraft.queue(LOCAL, create=True, **INSECURE) as q:
        Child(_send_burst, _plain_url(q.endpoint), 20).result(30)
        got = []
        for _ in range(20):
            r, _, _ = select.select([q.fileno()], [], [], 10)
            assert r, "fileno() not readable though a message waits"
            assert q.poll(0)
            got.append(q.recv(timeout=0))
        assert got == list(range(20))
        assert not q.poll(0)


def _late_sender(url: str, delay: float) -> None:
    with ipcraft.connect(url, timeout=10, **INSECURE) as ch:
        time.sleep(delay)
        ch.send("late")
        ch.recv(timeout=10)


@pytest.mark.timeout(60)
def test_aio_receive_wakes_when_a_message_arrives_and_send_waits_for_a_peer() -> None:
    """ipcraft.aio over a zmq pair: a pending recv wakes when another process sends; a send to a PUSH
    with no peer times out (nothing sent) instead of hanging."""
    async def main() -> None:
        listener = await ipcraft.aio.listen(LOCAL, **INSECURE)
        async with listener:
            child = Child(_late_sender, _plain_url(listener.endpoint), 0.3)
            async with await listener.accept(timeout=10) as ch:
                assert await ch.recv(timeout=10) == "late"
                await ch.send("ok")
            child.result(30)
        q = await ipcraft.aio.queue(LOCAL, create=True, role="push", **INSECURE)
        async with q:
            t0 = time.monotonic()
            with pytest.raises(Timeout):
                await q.send(1, timeout=0.3)
            assert time.monotonic() - t0 < 2

    asyncio.run(main())


def _slow_listener(url: str, ready: int, delay: float) -> Any:
    with ipcraft.listen(url, handshake_timeout=1, **INSECURE) as listener:
        os.write(ready, b"1")
        os.close(ready)
        time.sleep(delay)  # a client's question waits in the ROUTER until accept() answers it
        with listener.accept(timeout=20) as ch:
            msg = ch.recv(timeout=10)
            ch.send(msg)
            return msg


@pytest.mark.timeout(60)
def test_aio_connect_runs_as_steps_on_the_loop_and_can_be_cancelled(tmp_ipc_dir: str) -> None:
    """ipcraft.aio.connect to a listener that answers late: the loop keeps running meanwhile (no
    thread, no blocking call), a connect cancelled by wait_for releases its sockets, and the next one
    completes and carries messages."""
    url = f"zmq+ipc://{tmp_ipc_dir}/slow.zmq"
    r, w = os.pipe()
    child = Child(_slow_listener, url, w, 0.5)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)

    async def main() -> int:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ipcraft.aio.connect(url, timeout=10, **INSECURE), 0.1)
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.get_running_loop().create_task(ticker())
        try:
            async with await ipcraft.aio.connect(url, timeout=10, **INSECURE) as ch:
                await ch.send("hi")
                assert await ch.recv(timeout=10) == "hi"
        finally:
            done = True
            await t
        return ticks

    ticks = asyncio.run(main())
    assert ticks >= 10, "the loop did not run while connect() waited for the listener"
    assert child.result(30) == "hi"


# -- publish/subscribe ------------------------------------------------------------------------------------

def _subscriber(url: str, topic: str, ready: int) -> list[Any]:
    got = []
    with ipcraft.subscribe(url, topic=topic, **INSECURE) as sub:
        while True:
            msg = sub.recv(timeout=30)
            if msg == "probe":  # the publisher probes until every subscription has reached it
                if ready >= 0:
                    os.write(ready, b"1")
                    os.close(ready)
                    ready = -1
                continue
            if msg == "end":
                return got
            assert sub.last_meta["topic"].decode().startswith(topic)
            got.append(msg)


@pytest.mark.timeout(30)
def test_aio_publish_and_subscribe_with_topics() -> None:
    """ipcraft.aio.publish/subscribe over zmq+tcp://: a subscriber to prefix "t." gets the messages
    published on t.x (with the topic in last_meta) and never those on u.x."""

    async def main() -> tuple[list[Any], list[bytes]]:
        with await ipcraft.aio.publish(LOCAL, **INSECURE) as pub:
            url = _plain_url(pub.endpoint)
            with await ipcraft.aio.subscribe(url, topic="t.", **INSECURE) as sub:
                assert sub.authenticated is False  # insecure: pickle stays refused
                deadline = time.monotonic() + 10
                while True:  # until the subscription has reached the publisher
                    await pub.send("probe", topic="t.probe")
                    try:
                        await sub.recv(timeout=0.05)
                        break
                    except Timeout:
                        assert time.monotonic() < deadline, "the subscription never arrived"
                for i in range(20):
                    await pub.send({"i": i}, topic="u.x" if i % 2 else "t.x")
                got, topics = [], []
                while len(got) < 10:
                    msg = await sub.recv(timeout=5)
                    if msg != "probe":
                        got.append(msg)
                        topics.append(sub.last_meta["topic"])
                return got, topics

    got, topics = asyncio.run(main())
    assert got == [{"i": i} for i in range(0, 20, 2)]
    assert set(topics) == {b"t.x"}


@pytest.mark.timeout(60)
def test_publish_subscribe_three_subscribers_with_a_topic_filter() -> None:
    """Two subscriber processes take topic prefix "a." and one "b."; 600 messages on a.x, b.y and c.z
    reach exactly the matching subscribers, each in order and intact; c.z reaches nobody."""
    with ipcraft.publish(LOCAL, **INSECURE) as pub:
        url = _plain_url(pub.endpoint)
        pipes = [os.pipe() for _ in range(3)]
        subs = [Child(_subscriber, url, topic, w) for topic, (_, w) in zip(["a.", "a.", "b."], pipes, strict=True)]
        pending = []
        for r, w in pipes:
            os.close(w)
            pending.append(r)
        deadline = time.monotonic() + 20
        while pending:
            assert time.monotonic() < deadline, "the subscriptions never reached the publisher"
            for topic in ("a.probe", "b.probe"):
                pub.send("probe", topic=topic)
            for r in select.select(pending, [], [], 0.05)[0]:
                assert os.read(r, 1) == b"1"
                os.close(r)
                pending.remove(r)
        sent: dict[str, list[Any]] = {"a.x": [], "b.y": [], "c.z": []}
        for i in range(600):
            topic = ("a.x", "b.y", "c.z")[i % 3]
            msg = {"i": i, "crc": zlib.crc32(str(i).encode())}
            sent[topic].append(msg)
            pub.send(msg, topic=topic, timeout=10)
        for topic in ("a.end", "b.end"):
            pub.send("end", topic=topic)
        got = [c.result(30) for c in subs]
    assert got[0] == got[1] == sent["a.x"]
    assert got[2] == sent["b.y"]


def test_publisher_and_subscriber_refuse_the_other_direction_and_other_schemes() -> None:
    """A subscriber has no send side nor a publisher a receive side (the generic Publisher and
    Subscriber); a per-message option the scheme does not know is TypeError; publish() of a scheme
    without publish/subscribe is InvalidEndpoint."""
    with ipcraft.publish(LOCAL, **INSECURE) as pub, \
            ipcraft.subscribe(_plain_url(pub.endpoint), **INSECURE) as sub:
        assert not hasattr(sub, "send") and not hasattr(sub, "send_bytes")
        assert not hasattr(pub, "recv") and not hasattr(pub, "recv_bytes")
        with pytest.raises(TypeError, match="priority"):
            pub.send(1, priority=3)
        with pytest.raises(Timeout):
            sub.recv(timeout=0.05)
    with pytest.raises(InvalidEndpoint, match="publish"):
        ipcraft.publish("mq://nothing")


def test_ports_for_the_generic_publisher_and_subscriber() -> None:
    """The PUB/SUB ports (the interface a generic Publisher/Subscriber drives) carry framed
    messages with their serializer id between real sockets, filtered by topic."""
    from ipcraft._framing import check_message_header
    from ipcraft._transports.zeromq import ZmqPublisherPort, ZmqSubscriberPort

    pub = ZmqPublisherPort(ipcraft.Endpoint.parse(LOCAL, topic="t.1", **INSECURE))
    url = _plain_url(pub.endpoint)
    sub = ZmqSubscriberPort(ipcraft.Endpoint.parse(url, topic="t", **INSECURE))
    other = ZmqSubscriberPort(ipcraft.Endpoint.parse(url, topic="u", **INSECURE))
    try:
        deadline = time.monotonic() + 10
        while not sub.wait_readable(time.monotonic() + 0.05):
            assert time.monotonic() < deadline
            pub.send(0, b"warm", None)
        while sub.wait_readable(time.monotonic()):
            sub.recv(None)
        pub.send(3, memoryview(b"payload"), None)
        sid, payload = check_message_header(sub.recv(time.monotonic() + 10), 1 << 20)
        assert (sid, payload.tobytes(), sub.last_meta) == (3, b"payload", {"topic": b"t.1"})
        assert not other.wait_readable(time.monotonic() + 0.2)
        assert sub.missed == 0 and not pub.authenticated
    finally:
        for port in (pub, sub, other):
            port.close()


# -- security ---------------------------------------------------------------------------------------------

def _curve_client(url: str, opts: dict[str, Any]) -> tuple[str, Any]:
    try:
        with ipcraft.connect(url, timeout=10, serializer="pickle", **opts) as ch:
            ch.send({"who": "client"})
            return "ok", ch.recv(timeout=10)
    except AuthenticationError as exc:
        return "refused", str(exc)


@needs_curve
@pytest.mark.timeout(60)
def test_curve_wrong_key_refused_and_the_listener_keeps_serving(keys: dict[str, Any]) -> None:
    """An outsider's key (not admitted) and a client with the wrong server key are refused with
    AuthenticationError; the listener counts the refusal and then serves the admitted client, over
    CURVE, with pickle allowed (both sides authenticated)."""
    with ipcraft.listen(LOCAL, serializer="pickle", **_server_opts(keys)) as listener:
        url = _plain_url(listener.endpoint)
        assert Child(_curve_client, url, _client_opts(keys, "outsider")).result(30)[0] == "refused"
        wrong_server = {"curve_keys": str(keys["client"][1]), "curve_server": str(keys["outsider"][0])}
        assert Child(_curve_client, url, wrong_server).result(30)[0] == "refused"
        assert listener._impl.refused >= 1
        good = Child(_curve_client, url, _client_opts(keys))
        with listener.accept(timeout=10) as ch:
            assert ch.authenticated
            assert ch.recv(timeout=10) == {"who": "client"}
            ch.send(("pickled", {1, 2}))
        assert good.result(30) == ("ok", ("pickled", {1, 2}))


@needs_curve
def test_secure_by_default_and_bad_keys_are_typed_errors(keys: dict[str, Any], tmp_path: Path) -> None:
    """No keys and no insecure=True: AuthenticationError naming curve_keys= and `ipcraft keygen`; keys
    together with insecure=True, a junk key file or a malformed key: InvalidEndpoint; nothing is bound
    (the port stays free)."""
    port = _free_port()
    url = f"zmq+tcp://127.0.0.1:{port}"
    with pytest.raises(AuthenticationError, match="curve_keys=.*ipcraft keygen"):
        ipcraft.listen(url)
    with pytest.raises(AuthenticationError, match="curve_clients="):
        ipcraft.listen(url, curve_keys=str(keys["server"][1]))
    with pytest.raises(AuthenticationError, match="curve_server="):
        ipcraft.connect(url, curve_keys=str(keys["client"][1]))
    with pytest.raises(InvalidEndpoint, match="contradicts"):
        ipcraft.listen(url, insecure=True, curve_keys=str(keys["server"][1]))
    junk = tmp_path / "junk.key_secret"
    junk.write_text("not a certificate\n")
    with pytest.raises(InvalidEndpoint, match="secret"):
        ipcraft.listen(url, curve_keys=str(junk), curve_clients=keys["clients"])
    with pytest.raises(InvalidEndpoint, match="40 Z85"):
        ipcraft.queue(url, curve_keys=("short", "keys"), curve_server=str(keys["server"][0]))
    with ipcraft.listen(url, **INSECURE) as listener:  # the port was never taken by the failed attempts
        assert listener.endpoint.host_port[1] == port


@pytest.mark.parametrize("verb", ["listen", "connect", "queue"])
def test_pickle_is_refused_on_an_insecure_endpoint(verb: str) -> None:
    """serializer=pickle with insecure=True raises AuthenticationError, and nothing stays bound."""
    port = _free_port()
    url = f"zmq+tcp://127.0.0.1:{port}"
    with pytest.raises(AuthenticationError, match="pickle"):
        if verb == "queue":
            ipcraft.queue(url, create=True, serializer="pickle", **INSECURE)
        else:
            getattr(ipcraft, verb)(url, serializer="pickle", **INSECURE)
    ipcraft.queue(url, create=True, **INSECURE).close()


# -- a peer that is plain pyzmq (no ipcraft) ---------------------------------------------------------------

PLAIN_PEER = textwrap.dedent('''
    import pickle, struct, sys, zmq
    assert "ipcraft" not in sys.modules
    HEADER = struct.Struct("<BBHI")          # magic 0xA1, serializer id, flags 0, payload length
    def frame(sid, payload):
        return HEADER.pack(0xA1, sid, 0, len(payload)) + payload
    ctx = zmq.Context()
    host, port, queue_port, marker = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    ask = ctx.socket(zmq.DEALER)
    ask.connect(f"tcp://{host}:{port}")
    ask.send(b"ipcraft-zmq/1")
    ok, where = ask.recv_multipart()
    assert ok == b"ok"
    pair = ctx.socket(zmq.PAIR)
    pair.connect(f"tcp://{host}:{int(where)}")
    pair.send(frame(0, b"hello from plain pyzmq"))
    reply = pair.recv()
    v, sid, _, n = HEADER.unpack_from(reply)
    assert (v, sid, n) == (0xA1, 0, len(reply) - 8), (v, sid, n)
    class Exploit:
        def __reduce__(self):
            return (open, (marker, "w"))
    pair.send(frame(1, pickle.dumps(Exploit())))   # serializer id 1: pickle
    pair.send(frame(0, b"still usable"))
    pair.send(b"")                                 # ipcraft's end of stream
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://{host}:{queue_port}")
    push.send(frame(0, reply[8:].upper()))
    pair.close(linger=1000); push.close(linger=1000); ask.close(0)
    ctx.term()
''')


@pytest.mark.timeout(60)
def test_plain_pyzmq_peer_following_the_documented_layout(tmp_ipc_dir: str) -> None:
    """A Python process that imports only pyzmq asks the listener for its PAIR, exchanges frames with
    an ipcraft channel, has its pickle frame refused undecoded (the file it would create never
    appears), ends the stream with an empty frame, and pushes into an ipcraft queue."""
    marker = os.path.join(tmp_ipc_dir, "pwned")
    with ipcraft.listen(LOCAL, **INSECURE) as listener, \
            ipcraft.queue(LOCAL, create=True, **INSECURE) as pull:
        host, port = listener.endpoint.host_port
        proc = subprocess.Popen([sys.executable, "-c", PLAIN_PEER, host, str(port),
                                 str(pull.endpoint.host_port[1]), marker])
        try:
            with listener.accept(timeout=20) as ch:
                assert ch.recv(timeout=10) == b"hello from plain pyzmq"
                ch.send_bytes(b"hello back")
                with pytest.raises(AuthenticationError, match="unauthenticated"):
                    ch.recv(timeout=10)
                assert ch.recv(timeout=10) == b"still usable"
                with pytest.raises(ChannelClosed):
                    ch.recv(timeout=10)
            assert pull.recv(timeout=10) == b"HELLO BACK"
            assert proc.wait(20) == 0
        finally:
            proc.kill()
            proc.wait()
    assert not os.path.exists(marker)


# -- a killed peer ----------------------------------------------------------------------------------------

def _connect_and_hang(url: str) -> None:
    ch = ipcraft.connect(url, timeout=10, **INSECURE)
    ch.send("up")
    time.sleep(60)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("op", ["recv", "send"])
def test_peer_killed_by_sigkill_never_hangs_the_survivor(op: str) -> None:
    """After the peer is SIGKILLed: a recv or send with a timeout returns within it (done, Timeout or
    PeerVanished), and the same call without a timeout raises PeerVanished within a few seconds."""
    with ipcraft.listen(LOCAL, **INSECURE) as listener:
        child = Child(_connect_and_hang, _plain_url(listener.endpoint))
        with listener.accept(timeout=10) as ch:
            assert ch.recv(timeout=10) == "up"
            child.kill(signal.SIGKILL)
            child.wait(10)
            t0 = time.monotonic()
            if op == "recv":
                with pytest.raises(PeerVanished):
                    ch.recv()
                assert time.monotonic() - t0 < 5
                t0 = time.monotonic()
                with pytest.raises(ChannelClosed):  # the end is remembered
                    ch.recv(timeout=0.5)
                assert time.monotonic() - t0 < 1.5
                return
            try:
                ch.send_bytes(b"x", timeout=0.5)
            except (Timeout, PeerVanished):
                pass
            assert time.monotonic() - t0 < 1.5
            with pytest.raises(PeerVanished):
                for _ in range(5000):  # sends made before the disconnect is known go to ZeroMQ's queue
                    ch.send_bytes(b"x" * 1000)
            assert time.monotonic() - t0 < 5


# -- relay: shm:// -> zmq+tcp:// -> ring:// ---------------------------------------------------------------

def _produce(url: str, n: int) -> None:
    with ipcraft.connect(url, timeout=10) as ch:
        for seq in range(n):
            data = seq.to_bytes(4, "little") * 3
            ch.send_bytes(data + zlib.crc32(data).to_bytes(4, "little"))


def _relay_shm_to_zmq(shm_url: str, zmq_url: str, ready: int) -> tuple[int, int]:
    with ipcraft.listen(shm_url) as listener:
        os.write(ready, b"1")
        with listener.accept(timeout=20) as src, ipcraft.connect(zmq_url, timeout=20, **INSECURE) as dst:
            return ipcraft.relay(src, dst, one_way=True)


def _relay_zmq_to_ring(listener_url: str, ring_url: str, port_w: int) -> tuple[int, int]:
    with ipcraft.listen(listener_url, **INSECURE) as listener:
        os.write(port_w, str(listener.endpoint.host_port[1]).encode())
        with listener.accept(timeout=20) as src, ipcraft.queue(ring_url) as dst:
            return ipcraft.relay(src, dst)


@pytest.mark.timeout(180)
def test_relay_shm_to_zmq_tcp_to_ring_100k_in_order() -> None:
    """100,000 checksummed messages go shm:// -> relay -> zmq+tcp:// -> relay -> ring:// through two
    relay processes and arrive complete and in order; when the producer closes, both relays end
    (the end of stream travels across the zmq hop) with exact counts."""
    n = 100_000
    name = ipcraft.testing.unique_name("zr")
    with ipcraft.queue(f"ring://{name}", create=True, capacity=1 << 16) as ring:
        r2, w2 = os.pipe()
        hop2 = Child(_relay_zmq_to_ring, LOCAL, f"ring://{name}", w2)
        os.close(w2)
        port = os.read(r2, 16)
        os.close(r2)
        if not port:
            hop2.result(10)  # it died: raise its error
        r1, w1 = os.pipe()
        hop1 = Child(_relay_shm_to_zmq, f"shm://{name}", f"zmq+tcp://127.0.0.1:{int(port)}", w1)
        os.close(w1)
        ready = os.read(r1, 1)
        os.close(r1)
        if not ready:
            hop1.result(10)
        producer = Child(_produce, f"shm://{name}", n)
        for seq in range(n):
            msg = ring.recv_bytes(timeout=30)
            data, crc = msg[:-4], int.from_bytes(msg[-4:], "little")
            assert zlib.crc32(data) == crc and int.from_bytes(data[:4], "little") == seq
        producer.result(60)
        assert hop1.result(60) == (n, 0)
        assert hop2.result(60) == (n, 0)
        assert not ring.poll(0.2)


# -- the extra ----------------------------------------------------------------------------------------------

def test_without_pyzmq_the_error_names_the_extra() -> None:
    """With pyzmq unimportable, using a zmq scheme raises ModuleNotFoundError naming ipcraft[zmq]."""
    code = ("import sys; sys.modules['zmq'] = None\n"
            "import ipcraft\n"
            "try:\n"
            "    ipcraft.connect('zmq+tcp://127.0.0.1:1', insecure=True)\n"
            "except ModuleNotFoundError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'ipcraft[zmq]'" in out.stdout, out.stderr



# -- relay: the other combinations, and the command --------------------------------------------------------

def _pull_n(url: str, n: int) -> list[int]:
    with ipcraft.queue(url, role="pull", **INSECURE) as q:
        return [q.recv(timeout=30) for _ in range(n)]


@pytest.mark.timeout(60)
def test_relay_a_local_queue_to_the_network_and_a_broadcast_into_a_local_ring() -> None:
    """ring:// -> relay -> a bound zmq PUSH -> a consumer process (the local queue exposed); then a zmq
    subscriber -> relay -> ring:// (a remote broadcast fed into a local ring), ended by ``stop``."""
    name = ipcraft.testing.unique_name("zq")
    with ipcraft.queue(f"ring://{name}", create=True) as ring, \
            ipcraft.queue(LOCAL, create=True, role="push", **INSECURE) as push:
        consumer = Child(_pull_n, _plain_url(push.endpoint), 500)
        for i in range(500):
            ring.send(i)
        stop = threading.Event()
        result: list[Any] = []
        relay = threading.Thread(target=lambda: result.append(ipcraft.relay(ring, push, stop=stop)))
        relay.start()
        assert consumer.result(30) == list(range(500))
        stop.set()
        relay.join(10)
        assert result == [(500, 0)]

        with ipcraft.publish(LOCAL, **INSECURE) as pub, \
                ipcraft.subscribe(_plain_url(pub.endpoint), **INSECURE) as sub:
            stop = threading.Event()
            relay = threading.Thread(target=lambda: result.append(ipcraft.relay(sub, ring, stop=stop)))
            relay.start()
            deadline = time.monotonic() + 10
            while not ring.poll(0.05):  # until the subscription has reached the publisher
                assert time.monotonic() < deadline
                pub.send("warm")
            while ring.poll(0):
                assert ring.recv(timeout=1) == "warm"
            for i in range(100):
                pub.send(i)
            assert [ring.recv(timeout=10) for _ in range(100)] == list(range(100))
            stop.set()
            relay.join(10)
            assert not relay.is_alive() and result[1][1] == 0


@pytest.mark.timeout(60)
def test_relay_batches_keep_order_across_serializers_and_sizes() -> None:
    """ring:// (msgpack) -> relay -> zmq PUSH (json): bytes, objects and messages over the zero-copy
    size, interleaved, arrive in order; each object re-encoded in json, the bytes untouched, though
    the relay takes them out of the ring in batches of one serializer each."""
    name = ipcraft.testing.unique_name("zb")
    sent: list[Any] = []
    with ipcraft.queue(f"ring://{name}", create=True, capacity=1 << 22) as ring, \
            ipcraft.queue(LOCAL, create=True, role="push", serializer="json", **INSECURE) as push, \
            ipcraft.queue(_plain_url(push.endpoint), role="pull", serializer="json", **INSECURE) as pull:
        for i in range(900):
            if i % 3 == 0:
                sent.append(b"%d" % i * (70_000 if i % 63 == 0 else 1))
                ring.send_bytes(sent[-1])
            else:
                sent.append({"i": i, "s": "x" * (70_000 if i % 101 == 1 else i % 5)})
                ring.send(sent[-1])
        ring.send_many([7, 8, 9])
        sent += [7, 8, 9]
        stop = threading.Event()
        result: list[Any] = []
        relay = threading.Thread(target=lambda: result.append(ipcraft.relay(ring, push, stop=stop)))
        relay.start()
        try:
            assert [pull.recv(timeout=10) for _ in sent] == sent
        finally:
            stop.set()
            relay.join(10)
        assert result == [(len(sent), 0)]


def test_relay_refuses_directions_that_cannot_exist() -> None:
    """Two publishers have no direction: ValueError before any thread starts."""
    with ipcraft.publish(LOCAL, **INSECURE) as p1, ipcraft.publish(LOCAL, **INSECURE) as p2:
        with pytest.raises(ValueError, match="cannot move"):
            ipcraft.relay(p1, p2)


@pytest.mark.timeout(60)
def test_relay_command_shm_to_zmq_and_keygen(tmp_path: Path) -> None:
    """`ipcraft relay listen:shm://... listen:zmq+tcp://...` carries messages from a shm:// client to a
    zmq client and ends when the shm side closes; `ipcraft keygen` writes a pair the scheme accepts."""
    name = ipcraft.testing.unique_name("zc")
    port = _free_port()
    zurl = f"zmq+tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "ipcraft", "relay", "--one-way", "--timeout", "30",
                             f"listen:shm://{name}", f"listen:{zurl}?insecure=true"])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                src = ipcraft.connect(f"shm://{name}", timeout=10)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with src, ipcraft.connect(zurl, timeout=20, **INSECURE) as dst:
            for i in range(1000):
                src.send({"i": i})
            assert [dst.recv(timeout=10)["i"] for _ in range(1000)] == list(range(1000))
            src.close()
            with pytest.raises(ChannelClosed):
                dst.recv(timeout=10)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait()
    out = subprocess.run([sys.executable, "-m", "ipcraft", "keygen", "node", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "node.key_secret").stat().st_mode & 0o077 == 0
    if zmq.has("curve"):
        with ipcraft.queue(LOCAL, create=True, curve_keys=str(tmp_path / "node.key_secret"),
                           curve_clients=str(tmp_path / "node.key")) as q:
            assert q.authenticated
    again = subprocess.run([sys.executable, "-m", "ipcraft", "keygen", "node", "--dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "not overwriting" in again.stderr


def test_ipc_socket_files_are_owner_only(tmp_ipc_dir: str) -> None:
    """A zmq+ipc:// listener's socket file, and a bound queue's, are created mode 0600 (mode= changes it)."""
    with ipcraft.listen(f"zmq+ipc://{tmp_ipc_dir}/l.sock", **INSECURE):
        assert os.stat(f"{tmp_ipc_dir}/l.sock").st_mode & 0o777 == 0o600
    with ipcraft.queue(f"zmq+ipc://{tmp_ipc_dir}/q.sock", create=True, mode=0o660, **INSECURE):
        assert os.stat(f"{tmp_ipc_dir}/q.sock").st_mode & 0o777 == 0o660
    assert os.listdir(tmp_ipc_dir) == []


@needs_curve
@pytest.mark.timeout(60)
def test_curve_publisher_serves_admitted_subscribers_only(keys: dict[str, Any]) -> None:
    """Over CURVE an admitted subscriber receives what is published; an outsider's subscription is
    refused by the publisher's ZAP check and it receives nothing."""
    with ipcraft.publish(LOCAL, **_server_opts(keys)) as pub:
        url = _plain_url(pub.endpoint)
        with ipcraft.subscribe(url, **_client_opts(keys)) as good, \
                ipcraft.subscribe(url, **_client_opts(keys, "outsider")) as bad:
            deadline = time.monotonic() + 10
            while not good.poll(0.05):
                assert time.monotonic() < deadline, "the admitted subscriber never got a message"
                pub.send("hello")
            assert good.recv(timeout=1) == "hello" and good.authenticated
            with pytest.raises(Timeout):
                bad.recv(timeout=0.5)
